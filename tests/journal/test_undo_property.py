"""Property: undoing a session restores the state it started from, whatever it did.

The model is a dict changed by journaled operations (set, delete, intent-first steps,
steps that fail half-way), undone by handlers that restore the recorded old values;
some handlers fail on the first try, and the undo is resumed until it completes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retract import (
    InMemoryStorage,
    Journal,
    OperationRecord,
    OperationRegistry,
    SessionStatus,
    SQLiteStorage,
    UndoFailedError,
)

_MISSING = "<missing>"
keys = st.sampled_from(["a", "b", "c", "d"])
actions = st.lists(
    st.tuples(
        st.sampled_from(["set", "delete", "step", "failing_step"]),
        keys,
        st.integers(0, 9),
    ),
    max_size=25,
)


class Boom(Exception):
    """A step body or handler failing on purpose."""


def make_registry(state: dict[str, int], fail_once: set[int]) -> OperationRegistry:
    registry = OperationRegistry()

    @registry.handler("kv.change")
    async def restore(op: OperationRecord) -> None:
        if op.sequence in fail_once:
            fail_once.discard(op.sequence)
            raise Boom(f"transient failure undoing #{op.sequence}")
        key, old = op.payload["key"], op.payload.get("old", _MISSING)
        if op.in_doubt and "new" in op.payload and state.get(key, _MISSING) != op.payload["new"]:
            return  # the change never landed (or is already reverted): nothing to undo
        if old == _MISSING:
            state.pop(key, None)
        else:
            state[key] = old

    return registry


async def run_and_undo(
    journal: Journal, state: dict[str, int], steps: list[tuple[str, str, int]]
) -> None:
    try:
        async with journal.start_session() as session:
            for action, key, value in steps:
                old: Any = state.get(key, _MISSING)
                if action == "set":
                    state[key] = value
                    await session.record_operation("kv.change", {"key": key, "old": old})
                elif action == "delete":
                    if key in state:
                        del state[key]
                        await session.record_operation("kv.change", {"key": key, "old": old})
                else:
                    async with session.step("kv.change", {"key": key, "old": old, "new": value}):
                        state[key] = value
                        if action == "failing_step":
                            raise Boom("the step failed after its effect")
    except Boom:
        pass
    for _ in range(50):
        try:
            report = await journal.undo_session(session.session_id)
        except UndoFailedError:
            continue
        assert report.status is SessionStatus.ROLLED_BACK
        return
    raise AssertionError("undo never completed")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.dictionaries(keys, st.integers(0, 9)),
    steps=actions,
    fail_once=st.sets(st.integers(1, 25), max_size=4),
)
def test_undo_restores_the_initial_state_in_memory(
    initial: dict[str, int], steps: list[tuple[str, str, int]], fail_once: set[int]
) -> None:
    """For any sequence of changes (and transient undo failures), undo gives back the start."""
    state = dict(initial)

    async def main() -> None:
        async with Journal(InMemoryStorage(), make_registry(state, set(fail_once))) as journal:
            await run_and_undo(journal, state, steps)

    asyncio.run(main())
    assert state == initial


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.dictionaries(keys, st.integers(0, 9)), steps=actions)
def test_undo_restores_the_initial_state_on_sqlite(
    initial: dict[str, int], steps: list[tuple[str, str, int]]
) -> None:
    """The same property holds on the durable SQLite journal."""
    state = dict(initial)

    async def main(path: Path) -> None:
        async with Journal(SQLiteStorage(path), make_registry(state, set())) as journal:
            await run_and_undo(journal, state, steps)

    with TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp) / "j.db"))
    assert state == initial
