"""Journal.prune: ended sessions past the cutoff go, with their operations and images."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from retract import (
    Journal,
    OperationRecord,
    OperationRegistry,
    SessionNotFoundError,
    SessionStatus,
    SQLiteStorage,
)
from retract.journal import _session, _undo
from retract.journal._owner import current_owner

S = SessionStatus
HOUR = 3600.0


class _Clock:
    """The ``time`` module, with ``time()`` shifted by ``offset`` seconds."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextmanager
def hours_ago(monkeypatch: pytest.MonkeyPatch, hours: float) -> Iterator[None]:
    """Make sessions and undos started and ended inside the block look ``hours`` old."""
    with monkeypatch.context() as patched:
        patched.setattr(_session, "time", _Clock(-hours * HOUR))
        patched.setattr(_undo, "time", _Clock(-hours * HOUR))
        yield


async def completed(journal: Journal, tmp_path: Path, name: str) -> str:
    """A COMPLETED session that deleted a file (so it has an operation and an image)."""
    victim = tmp_path / name
    victim.write_bytes(name.encode())
    async with journal.start_session(name=name) as session:
        await session.fs.delete(victim)
    return session.session_id


async def failed(journal: Journal) -> str:
    with pytest.raises(RuntimeError):
        async with journal.start_session() as session:
            await session.record_operation("t.op", {"i": 1})
            raise RuntimeError("boom")
    return session.session_id


def image_folder(journal: Journal, session_id: str) -> Path:
    return journal.images_dir / session_id


async def ids(journal: Journal) -> set[str]:
    return {s.session_id for s in await journal.list_sessions()}


async def test_old_sessions_go_recent_ones_stay(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions that ended before the cutoff are deleted with their operations."""
    with hours_ago(monkeypatch, 2):
        old = await completed(journal, tmp_path, "old")
    recent = await completed(journal, tmp_path, "recent")
    assert await journal.prune(HOUR) == [old]
    assert await journal.get_session(old) is None
    with pytest.raises(SessionNotFoundError):
        await journal.get_operations(old)
    assert await ids(journal) == {recent}
    assert len(await journal.get_operations(recent)) == 1


async def test_older_than_accepts_a_timedelta(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """older_than may be a timedelta as well as seconds."""
    with hours_ago(monkeypatch, 3):
        old = await completed(journal, tmp_path, "old")
    assert await journal.prune(timedelta(hours=4)) == []
    assert await journal.prune(timedelta(hours=2)) == [old]


async def test_older_than_accepts_a_cutoff_datetime(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A datetime prunes the sessions that ended before that instant."""
    with hours_ago(monkeypatch, 3):
        old = await completed(journal, tmp_path, "old")
    now = datetime.now(UTC)
    assert await journal.prune(now - timedelta(hours=4)) == []
    assert await journal.prune(now - timedelta(hours=2)) == [old]


async def test_a_given_image_area_keeps_unknown_folders(tmp_path: Path) -> None:
    """Orphan folders are removed only from the journal's own default area."""
    area = tmp_path / "shared-area"
    stranger = area / str(uuid.uuid4())
    stranger.mkdir(parents=True)
    async with Journal(SQLiteStorage(tmp_path / "j.db"), images_dir=area) as journal:
        await completed(journal, tmp_path, "mine")
        assert await journal.prune(0) != []
    assert stranger.is_dir()


async def test_age_counts_from_the_end_of_a_session(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session that started long ago but ended just now is recent."""
    with hours_ago(monkeypatch, 5):
        context = journal.start_session()
        session = await context.__aenter__()
    await context.__aexit__(None, None, None)
    assert await journal.prune(HOUR) == []
    assert await ids(journal) == {session.session_id}


async def test_prune_removes_the_images_of_pruned_sessions(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The before-images of a pruned session go; a kept session keeps its images."""
    with hours_ago(monkeypatch, 2):
        old = await completed(journal, tmp_path, "old")
    recent = await completed(journal, tmp_path, "recent")
    assert image_folder(journal, old).is_dir()
    await journal.prune(HOUR)
    assert not image_folder(journal, old).exists()
    assert len(list(image_folder(journal, recent).iterdir())) == 1


async def test_a_pruned_session_cannot_be_undone(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Undo of a pruned session raises SessionNotFoundError and changes nothing."""
    with hours_ago(monkeypatch, 2):
        old = await completed(journal, tmp_path, "old")
    await journal.prune(HOUR)
    with pytest.raises(SessionNotFoundError):
        await journal.undo_session(old)
    with pytest.raises(SessionNotFoundError):
        await journal.plan_undo(old)
    assert not (tmp_path / "old").exists()


async def test_running_sessions_are_kept_with_their_images(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RUNNING session is never pruned, however old, and its images stay."""
    (tmp_path / "f").write_bytes(b"f")
    with hours_ago(monkeypatch, 5):
        context = journal.start_session()
        session = await context.__aenter__()
    await session.fs.delete(tmp_path / "f")
    assert await journal.prune(0) == []
    assert image_folder(journal, session.session_id).is_dir()
    await context.__aexit__(None, None, None)
    await journal.undo_session(session.session_id)
    assert (tmp_path / "f").read_bytes() == b"f"


async def test_undoing_sessions_are_kept(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session being undone is never pruned."""
    release = asyncio.Event()
    started = asyncio.Event()
    registry = OperationRegistry(builtins=False)

    @registry.handler("t.op")
    async def slow(op: OperationRecord) -> None:
        started.set()
        await release.wait()

    with hours_ago(monkeypatch, 2):
        async with journal.start_session() as session:
            await session.record_operation("t.op", {})
    undo = asyncio.create_task(journal.undo_session(session.session_id, registry))
    await started.wait()
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert record.status is S.UNDOING
    assert await journal.prune(0, statuses=None) == []
    release.set()
    report = await undo
    assert report.status is S.ROLLED_BACK


async def test_statuses_selects_which_ended_sessions_go(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """statuses= limits the prune to sessions with those statuses (names or enums)."""
    with hours_ago(monkeypatch, 2):
        done = await completed(journal, tmp_path, "done")
        broken = await failed(journal)
    assert await journal.prune(HOUR, statuses=["failed"]) == [broken]
    assert await ids(journal) == {done}
    assert await journal.prune(HOUR, statuses=[S.ROLLED_BACK]) == []
    assert await journal.prune(HOUR, statuses=[S.COMPLETED]) == [done]


async def test_statuses_may_be_one_name(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single status name works like a collection of one."""
    with hours_ago(monkeypatch, 2):
        done = await completed(journal, tmp_path, "done")
        broken = await failed(journal)
    assert await journal.prune(HOUR, statuses="failed") == [broken]
    assert await ids(journal) == {done}


async def test_rolled_back_sessions_age_from_their_undo(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolled-back session counts from the end of its undo, and is pruned like others."""
    with hours_ago(monkeypatch, 5):
        old = await completed(journal, tmp_path, "a")
    await journal.undo_session(old)
    assert (tmp_path / "a").exists()
    assert await journal.prune(HOUR) == []
    with hours_ago(monkeypatch, 3):
        other = await completed(journal, tmp_path, "b")
        await journal.undo_session(other)
    assert await journal.prune(HOUR, statuses=["rolled_back"]) == [other]


async def test_every_ended_status_is_pruned_by_default(journal: Journal) -> None:
    """By default every ended status goes; running and undoing ones stay."""
    storage = journal.storage
    long_ago = time.time() - 10 * HOUR
    made: dict[SessionStatus, str] = {}
    for status in S:
        session_id = str(uuid.uuid4())
        await storage.create_session(session_id, "{}", current_owner(), long_ago)
        if status is not S.RUNNING:
            assert await storage.update_session(session_id, status=status, at=long_ago)
        made[status] = session_id
    pruned = await journal.prune(HOUR)
    live = {S.RUNNING, S.UNDOING}
    assert set(pruned) == {sid for status, sid in made.items() if status not in live}
    assert await ids(journal) == {made[S.RUNNING], made[S.UNDOING]}


@pytest.mark.parametrize(
    ("older_than", "statuses"),
    [
        (-1.0, None),
        (timedelta(seconds=-1), None),
        (HOUR, ["running"]),
        (HOUR, [S.UNDOING]),
        (HOUR, ["completed", "running"]),
        (HOUR, ["bogus"]),
    ],
)
async def test_bad_values_raise_value_error(
    journal: Journal,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    older_than: float | timedelta,
    statuses: list[str | SessionStatus] | None,
) -> None:
    """A negative age, or a status that has not ended, is a ValueError; nothing goes."""
    with hours_ago(monkeypatch, 2):
        old = await completed(journal, tmp_path, "old")
    with pytest.raises(ValueError, match=r"negative|not ended|unknown session status"):
        await journal.prune(older_than, statuses=statuses)
    assert await ids(journal) == {old}
    assert image_folder(journal, old).is_dir()


async def test_no_statuses_prunes_nothing(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty statuses collection selects no session."""
    with hours_ago(monkeypatch, 2):
        old = await completed(journal, tmp_path, "old")
    assert await journal.prune(0, statuses=[]) == []
    assert await ids(journal) == {old}


async def test_orphan_image_folders_are_removed(journal: Journal, tmp_path: Path) -> None:
    """Image folders of sessions that no longer exist go; live sessions' and others stay."""
    kept = await completed(journal, tmp_path, "kept")
    orphan = journal.images_dir / str(uuid.uuid4())
    orphan.mkdir(parents=True)
    (orphan / "image").write_bytes(b"left by a prune that died")
    foreign = journal.images_dir / "not-a-session"
    foreign.mkdir()
    assert await journal.prune(HOUR) == []
    assert not orphan.exists()
    assert image_folder(journal, kept).is_dir()
    assert foreign.is_dir()


async def test_cancelled_prune_still_removes_the_images(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while the rows are deleted, prune still removes the images, then raises."""
    with hours_ago(monkeypatch, 2):
        old = await completed(journal, tmp_path, "old")
    storage = journal.storage
    real = storage.prune_sessions
    entered = asyncio.Event()
    release = asyncio.Event()

    async def gated(**kwargs: Any) -> list[str]:
        entered.set()
        await release.wait()
        return await real(**kwargs)

    monkeypatch.setattr(storage, "prune_sessions", gated)
    task = asyncio.create_task(journal.prune(HOUR))
    await entered.wait()
    task.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await journal.get_session(old) is None
    assert not image_folder(journal, old).exists()


async def test_prune_of_an_empty_journal(journal: Journal) -> None:
    """Pruning a journal with no sessions (and no image area yet) returns nothing."""
    assert await journal.prune(0) == []
