"""@reversible: a session per call, undone when the body fails, for plain coroutines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from retract import Journal, Session, current_session, reversible
from retract.testing import assert_completed, assert_no_session_running, assert_rolled_back


class Declined(Exception):
    """The card was declined (on purpose)."""


async def test_a_body_that_succeeds_keeps_its_effects(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """The session completes and the file written in it stays."""
    async with retract_journal as journal:

        @reversible(journal, job="orders")
        async def place(session: Session, order: int) -> str:
            await session.fs.write_text(tmp_path / f"order-{order}.txt", "placed")
            return f"order {order}"

        assert await place(1) == "order 1"
        session = await assert_completed(journal)
        assert session.context == {"function": place.__qualname__, "job": "orders"}
    assert (tmp_path / "order-1.txt").read_text() == "placed"


async def test_a_body_that_raises_is_rolled_back_and_the_error_propagates(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """Everything the body did is undone; the caller sees the original exception."""
    async with retract_journal as journal:

        @reversible(journal)
        async def charge(session: Session) -> None:
            await session.fs.write_text(tmp_path / "receipt.txt", "paid")
            raise Declined("card declined")

        with pytest.raises(Declined, match="card declined"):
            await charge()
        await assert_rolled_back(journal)
    assert not (tmp_path / "receipt.txt").exists()


async def test_a_cancelled_call_is_rolled_back_too(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """Cancelling the caller mid-body still undoes what the body did (shielded)."""
    started = asyncio.Event()
    async with retract_journal as journal:

        @reversible(journal)
        async def slow(session: Session) -> None:
            await session.fs.write_text(tmp_path / "half.txt", "half")
            started.set()
            await asyncio.sleep(3600)

        task = asyncio.create_task(slow())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await assert_rolled_back(journal)
        await assert_no_session_running(journal)
    assert not (tmp_path / "half.txt").exists()


async def test_the_session_is_the_first_argument_and_the_current_one(
    retract_journal: Journal,
) -> None:
    """The body gets its session first; current_session() finds it; outside: LookupError."""
    async with retract_journal as journal:

        @reversible(journal)
        async def which(session: Session) -> tuple[str, str]:
            return session.session_id, current_session().session_id

        session_id, current = await which()
        assert current == session_id
        assert (await assert_completed(journal)).session_id == session_id
    with pytest.raises(LookupError, match="no retract session is open"):
        current_session()


async def test_the_journal_may_come_from_a_function(retract_journal: Journal) -> None:
    """A getter (sync or async) is called at each call: for a journal opened later."""
    holder: dict[str, Journal] = {}

    async def get() -> Journal:
        return holder["journal"]

    @reversible(get)
    async def work(session: Session) -> int:
        return 7

    async with retract_journal as journal:
        holder["journal"] = journal
        assert await work() == 7
        await assert_completed(journal)


async def test_mistakes_are_type_errors(retract_journal: Journal) -> None:
    """A sync function or a getter that gives no Journal are refused, saying so."""
    with pytest.raises(TypeError, match="needs an async def function"):
        reversible(retract_journal)(lambda session: None)  # type: ignore[arg-type,return-value]

    @reversible(lambda: "not a journal")  # type: ignore[arg-type,return-value]
    async def bad(session: Session) -> None:
        return None

    with pytest.raises(TypeError, match="returned 'not a journal', not a Journal"):
        await bad()
