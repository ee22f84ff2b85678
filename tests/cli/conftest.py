"""Fixtures and helpers for the CLI tests: run ``main`` in-process, build journals."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from retract import OperationState, SessionStatus, open_journal
from retract.cli import main

Op = tuple[str, dict[str, Any]]

HANDLERS = '''\
"""Undo handlers for the CLI tests."""
from retract import OperationRecord, OperationRegistry, UndoSkipped

registry = OperationRegistry()
not_a_registry = 42


@registry.handler("t.ok")
async def undo_ok(op: OperationRecord) -> None:
    pass


@registry.handler("t.fail")
async def undo_fail(op: OperationRecord) -> None:
    raise RuntimeError(f"cannot undo {op.payload.get('n')}")


@registry.handler("t.skip")
async def undo_skip(op: OperationRecord) -> None:
    raise UndoSkipped("nothing to do")


def make_registry() -> OperationRegistry:
    return registry


async def make_registry_async() -> OperationRegistry:
    return registry
'''


@dataclass(frozen=True)
class Result:
    """What one in-process run of ``retract`` returned and printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Result]


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No RETRACT_DB from the environment; sys.path and imported handler modules undone."""
    monkeypatch.delenv("RETRACT_DB", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("_retract_app_", "cli_handlers_")):
            del sys.modules[name]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``retract ARGS...`` in this process; returns the exit code and the output."""

    def run(*argv: str) -> Result:
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A journal path (the file is created by the first session written to it)."""
    return tmp_path / "journal.db"


@pytest.fixture
def handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A handler module importable by a unique name: (module name, file path)."""
    name = f"cli_handlers_{uuid.uuid4().hex}"
    directory = tmp_path / "app"
    directory.mkdir()
    path = directory / f"{name}.py"
    path.write_text(HANDLERS)
    monkeypatch.syspath_prepend(str(directory))
    return name, path


def add_session(
    db: Path,
    ops: Sequence[Op] = (),
    *,
    steps: bool = False,
    fail: bool = False,
    **context: Any,
) -> str:
    """Write one session with these operations through the public API; return its id."""

    async def write() -> str:
        async with open_journal(db) as journal:
            try:
                async with journal.start_session(**context) as session:
                    if steps:
                        for op_type, payload in ops:
                            async with session.step(op_type, payload):
                                pass
                    else:
                        await session.record_operations(ops)
                    if fail:
                        raise RuntimeError("the script failed")
            except RuntimeError:
                pass
            return session.session_id

    return asyncio.run(write())


def states(db: Path, session_id: str) -> tuple[SessionStatus, list[OperationState]]:
    """The session's status and its operations' states, in order."""

    async def read() -> tuple[SessionStatus, list[OperationState]]:
        async with open_journal(db) as journal:
            session = await journal.get_session(session_id)
            assert session is not None
            operations = await journal.get_operations(session_id)
            return session.status, [op.state for op in operations]

    return asyncio.run(read())
