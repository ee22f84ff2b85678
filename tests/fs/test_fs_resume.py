"""Undo of ``session.fs`` operations resumes after an undo that was cut short.

An undo cancelled (or killed) while a handler's worker thread runs leaves the
operation UNDO_FAILED or UNDOING although the restore finished; the next undo must see
that the work is done instead of calling it drift or a missing before-image.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from retract import (
    DurabilityError,
    Journal,
    OperationRecord,
    OperationRegistry,
    OperationState,
    SessionStatus,
    SQLiteStorage,
    UndoFailedError,
)
from retract.fs import _ops
from retract.journal.storage._protocol import OperationUpdate

from ._helpers import snapshot

SHM = Path("/dev/shm")


@pytest.fixture(params=["local", "shm"])
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    """A journal whose image area is beside the files, or on another filesystem."""
    images = None
    if request.param == "shm":
        if not SHM.is_dir() or os.stat(SHM).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("needs /dev/shm on another filesystem than the tests")
        images = Path(SHM, f"retract-test-{os.getpid()}-{tmp_path.name}")
    async with Journal(SQLiteStorage(tmp_path / "j.db"), images_dir=images) as opened:
        yield opened
    if images is not None:
        shutil.rmtree(images, ignore_errors=True)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Files and folders every operation type can work on."""
    root = tmp_path / "tree"
    (root / "dir" / "sub").mkdir(parents=True)
    for name, data in [("a", b"A"), ("b", b"B"), ("c", b"C"), ("d", b"D"), ("e", b"E")]:
        (root / name).write_bytes(data * 10)
    (root / "dir" / "sub" / "f").write_bytes(b"F")
    (root / "b").chmod(0o600)
    return root


async def _every_operation(journal: Journal, root: Path) -> str:
    async with journal.start_session() as session:
        await session.fs.write_bytes(root / "a", b"new a")
        await session.fs.write_bytes(root / "new", b"created")
        await session.fs.move(root / "c", root / "c2")
        await session.fs.move(root / "d", root / "b", overwrite=True)
        await session.fs.copy(root / "e", root / "a", overwrite=True)
        await session.fs.copy(root / "dir", root / "dir2")
        await session.fs.delete(root / "e")
        await session.fs.rmtree(root / "dir")
        await session.fs.mkdir(root / "made" / "deep", parents=True)
    return session.session_id


async def _as_if_cut_short(journal: Journal, session_id: str) -> None:
    """Mark every operation UNDO_FAILED again, as a cancelled undo run leaves them."""
    now = time.time()
    updates = [
        OperationUpdate(session_id, op.sequence, OperationState.UNDO_FAILED, "cancelled", None)
        for op in await journal.get_operations(session_id)
    ]
    await journal.storage.update_operations(updates, now)
    await journal.storage.update_session(
        session_id, status=SessionStatus.PARTIALLY_ROLLED_BACK, at=now
    )


def _cut_short_at(sequence: int) -> OperationRegistry:
    """The built-in handlers, but the one of ``sequence`` fails after doing its work.

    That is what a cancellation (or a kill) during the handler's worker thread leaves:
    the restore finished, the journal says UNDO_FAILED (or UNDOING).
    """
    builtin = OperationRegistry()
    flaky = OperationRegistry(builtins=False)

    async def run(op: OperationRecord) -> None:
        await builtin.run(op)
        if op.sequence == sequence:
            raise RuntimeError("cut short after the work was done")

    for op_type in builtin.types():
        flaky.handler(op_type)(run)
    return flaky


@pytest.mark.parametrize("sequence", range(1, 10))
async def test_an_undo_cut_short_after_a_handler_resumes(
    journal: Journal, tree: Path, sequence: int
) -> None:
    """The rerun recognises the operation as undone and finishes the rest."""
    before = snapshot(tree)
    session_id = await _every_operation(journal, tree)
    with pytest.raises(UndoFailedError):
        await journal.undo_session(session_id, _cut_short_at(sequence))
    states = [op.state for op in await journal.get_operations(session_id)]
    assert states[sequence - 1] is OperationState.UNDO_FAILED
    report = await journal.undo_session(session_id)
    assert report.status is SessionStatus.ROLLED_BACK
    assert snapshot(tree) == before


async def test_a_copy_back_cut_short_before_dropping_the_image_resumes(
    journal: Journal, tree: Path
) -> None:
    """A restored file whose image is still there: the rerun drops the image only."""
    before = snapshot(tree)
    async with journal.start_session() as session:
        await session.fs.delete(tree / "a")
    (op,) = await journal.get_operations(session.session_id)
    image = Path(op.payload["image"])
    await journal.undo_session(session.session_id)
    shutil.copy2(tree / "a", image)  # as if the undo died before removing it
    await _as_if_cut_short(journal, session.session_id)
    await journal.undo_session(session.session_id)
    assert not image.exists()
    assert snapshot(tree) == before


async def test_unmake_style_move_records_are_undone(journal: Journal, tree: Path) -> None:
    """A plain ``record_operation("fs.move", {"src", "dst"})`` is moved back."""
    async with journal.start_session() as session:
        (tree / "a").rename(tree / "moved")
        await session.record_operation(
            "fs.move", {"src": str(tree / "a"), "dst": str(tree / "moved")}
        )
    await journal.undo_session(session.session_id)
    assert (tree / "a").read_bytes() == b"A" * 10
    assert not (tree / "moved").exists()


async def test_foreign_fs_payloads_fail_with_advice(journal: Journal, tree: Path) -> None:
    """An fs.copy record not written by session.fs fails clearly, touching nothing."""
    async with journal.start_session() as session:
        await session.record_operation("fs.copy", {"src": "x", "dst": "y"})
    with pytest.raises(UndoFailedError) as caught:
        await journal.undo_session(session.session_id)
    assert "not written by session.fs" in str(caught.value.__cause__)
    assert "register your own handler" in str(caught.value.__cause__)


async def test_the_image_area_is_private(journal: Journal, tree: Path) -> None:
    """The image area and a session's folder are 0o700 whatever the umask."""
    old = os.umask(0o022)
    try:
        async with journal.start_session() as session:
            await session.fs.delete(tree / "a")
    finally:
        os.umask(old)
    for folder in (journal.images_dir, journal.images_dir / session.session_id):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_file_that_appears_before_the_commit_is_kept(tmp_path: Path) -> None:
    """A write prepared for a new file keeps a file created meanwhile as its image."""
    target, image = tmp_path / "t", tmp_path / "images" / "s" / "i"
    op = _ops.write_op(
        str(target), b"mine", str(image), overwrite=True, durable=False, permissions=None
    )
    payload = op.prepare()
    assert payload is not None
    assert payload["existed"] is False
    target.write_bytes(b"theirs")
    facts = op.commit(payload)
    assert facts["existed"] is True
    assert image.read_bytes() == b"theirs"
    assert target.read_bytes() == b"mine"


async def test_mkdir_rejects_a_bad_mode_before_journaling(journal: Journal, tree: Path) -> None:
    """A mode that is not an int in 0..0o7777 is a ValueError; nothing is journaled."""
    async with journal.start_session() as session:
        for mode in ("0755", -1, 0o10000):
            with pytest.raises(ValueError, match="mode must be an int"):
                await session.fs.mkdir(tree / "m", mode=mode)  # type: ignore[arg-type]
    assert await journal.get_operations(session.session_id) == []
    assert not (tree / "m").exists()


async def test_an_already_cancelled_anyio_scope_changes_nothing(
    journal: Journal, tree: Path
) -> None:
    """A pending anyio cancellation stops the operation before it starts."""
    async with journal.start_session() as session:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await session.fs.delete(tree / "a")
        assert scope.cancelled_caught
    assert (tree / "a").exists()
    assert await journal.get_operations(session.session_id) == []


async def test_a_delete_whose_directory_sync_fails_is_a_durability_error(
    journal: Journal, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is gone when the sync fails: DurabilityError, and undo still restores."""
    calls: list[str] = []

    def failing(directory: str, target: str) -> None:
        calls.append(directory)
        raise DurabilityError(5, f"sync of {directory} failed", target)

    before = snapshot(tree)
    monkeypatch.setattr(_ops, "sync_directory_or_raise", failing)
    async with journal.start_session() as session:
        with pytest.raises(DurabilityError):
            await session.fs.delete(tree / "a")
    monkeypatch.undo()
    assert calls
    (op,) = await journal.get_operations(session.session_id)
    assert op.state is OperationState.FAILED
    assert op.payload["committed"] is True
    await journal.undo_session(session.session_id)
    assert snapshot(tree) == before
