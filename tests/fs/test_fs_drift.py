"""Drift: undo of ``session.fs`` checks a path is as the operation left it before acting."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from retract import (
    DriftError,
    Journal,
    OperationState,
    RetractError,
    SessionStatus,
    UndoErrorGroup,
    UndoFailedError,
)

O = OperationState  # noqa: E741


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A folder with one file ``f`` (0o644) and one directory ``d`` holding ``d/g``."""
    base = tmp_path / "root"
    base.mkdir()
    (base / "f").write_bytes(b"original")
    (base / "f").chmod(0o644)
    (base / "d").mkdir()
    (base / "d" / "g").write_bytes(b"inner")
    return base


async def states(journal: Journal, session_id: str) -> list[OperationState]:
    return [op.state for op in await journal.get_operations(session_id)]


async def refused(journal: Journal, session_id: str) -> DriftError:
    """Undo with the default policy; return the DriftError that stopped it."""
    with pytest.raises(UndoFailedError) as caught:
        await journal.undo_session(session_id)
    cause = caught.value.__cause__
    assert isinstance(cause, DriftError)
    assert caught.value.report.status is SessionStatus.PARTIALLY_ROLLED_BACK
    return cause


async def written(journal: Journal, root: Path) -> str:
    async with journal.start_session() as session:
        await session.fs.write_bytes(root / "f", b"written by the session")
    return session.session_id


async def test_a_modified_file_refuses_undo(journal: Journal, root: Path) -> None:
    """Content changed after a write: DriftError by default, and the file is left alone."""
    session_id = await written(journal, root)
    (root / "f").write_bytes(b"edited later by someone")
    error = await refused(journal, session_id)
    assert (root / "f").read_bytes() == b"edited later by someone"
    assert await states(journal, session_id) == [O.UNDO_FAILED]
    assert error.filename == str(root / "f")
    assert error.errno == errno.ESTALE
    assert any("size" in change for change in error.changes)


async def test_drift_error_is_an_os_error_and_says_what_to_do(journal: Journal, root: Path) -> None:
    """DriftError is an OSError and a RetractError; its message names the change and the fix."""
    session_id = await written(journal, root)
    (root / "f").write_bytes(b"written by the SESSION")  # same size, other bytes
    error = await refused(journal, session_id)
    assert isinstance(error, OSError)
    assert isinstance(error, RetractError)
    message = str(error)
    assert str(root / "f") in message
    assert "content" in message
    assert "drift='force'" in message
    assert "drift='skip'" in message
    assert error.changes == ["content (SHA-256 differs)"]


async def test_skip_leaves_the_file_and_marks_the_operation_skipped(
    journal: Journal, root: Path
) -> None:
    """drift="skip" leaves the changed file as it is and the operation SKIPPED."""
    session_id = await written(journal, root)
    (root / "f").write_bytes(b"mine now")
    report = await journal.undo_session(session_id, drift="skip")
    assert (report.status, report.skipped, report.undone) == (SessionStatus.ROLLED_BACK, 1, 0)
    assert (root / "f").read_bytes() == b"mine now"
    (op,) = await journal.get_operations(session_id)
    assert op.state is O.SKIPPED
    assert op.error is not None
    assert "drift='skip'" in op.error


async def test_force_restores_despite_drift(journal: Journal, root: Path) -> None:
    """drift="force" restores the old file over the changed one."""
    session_id = await written(journal, root)
    (root / "f").write_bytes(b"mine now")
    (root / "f").chmod(0o600)
    report = await journal.undo_session(session_id, drift="force")
    assert report.status is SessionStatus.ROLLED_BACK
    assert (root / "f").read_bytes() == b"original"
    assert (root / "f").stat().st_mode & 0o777 == 0o644


async def test_a_refused_undo_can_be_resumed_with_force(journal: Journal, root: Path) -> None:
    """After a refusal nothing is lost: undo again with force restores the file."""
    session_id = await written(journal, root)
    (root / "f").write_bytes(b"edited")
    await refused(journal, session_id)
    report = await journal.undo_session(session_id, drift="force")
    assert (report.status, report.undone) == (SessionStatus.ROLLED_BACK, 1)
    assert (root / "f").read_bytes() == b"original"


async def test_refusal_stops_before_older_operations(journal: Journal, root: Path) -> None:
    """Newer operations are undone, the drifted one is refused, older ones wait."""
    async with journal.start_session() as session:
        await session.fs.mkdir(root / "n")
        await session.fs.write_bytes(root / "f", b"session")
        await session.fs.write_bytes(root / "n" / "h", b"h")
    (root / "f").write_bytes(b"edited")
    await refused(journal, session.session_id)
    assert await states(journal, session.session_id) == [O.DONE, O.UNDO_FAILED, O.UNDONE]
    assert not (root / "n" / "h").exists()
    assert (root / "n").is_dir()


async def test_continue_collects_drift_errors(journal: Journal, root: Path) -> None:
    """on_error="continue" undoes what it can and raises every DriftError in a group."""
    async with journal.start_session() as session:
        await session.fs.write_bytes(root / "f", b"session")
        await session.fs.write_bytes(root / "d" / "g", b"session")
        await session.fs.write_bytes(root / "new", b"session")
    (root / "f").write_bytes(b"edited f")
    (root / "d" / "g").write_bytes(b"edited g")
    with pytest.raises(UndoErrorGroup) as caught:
        await journal.undo_session(session.session_id, on_error="continue")
    assert all(isinstance(e, DriftError) for e in caught.value.exceptions)
    assert len(caught.value.exceptions) == 2
    assert not (root / "new").exists()


async def test_a_chmod_alone_is_drift(journal: Journal, root: Path) -> None:
    """Changed permission bits with the same content are drift."""
    session_id = await written(journal, root)
    (root / "f").chmod(0o600)
    error = await refused(journal, session_id)
    assert error.changes == ["permission bits 644 -> 600"]
    assert (root / "f").read_bytes() == b"written by the session"


async def test_a_touch_alone_is_not_drift(journal: Journal, root: Path) -> None:
    """A new mtime with the same bytes and bits is not drift; undo restores."""
    session_id = await written(journal, root)
    os.utime(root / "f", (1, 1))
    report = await journal.undo_session(session_id)
    assert report.status is SessionStatus.ROLLED_BACK
    assert (root / "f").read_bytes() == b"original"


async def test_a_removed_file_is_drift(journal: Journal, root: Path) -> None:
    """A written file removed since is drift (undo cannot tell what the user wants)."""
    session_id = await written(journal, root)
    (root / "f").unlink()
    error = await refused(journal, session_id)
    assert error.changes == ["the path no longer exists"]
    assert not (root / "f").exists()


async def test_a_new_file_changed_since_is_not_removed(journal: Journal, root: Path) -> None:
    """A file the session created and someone edited is not deleted by undo."""
    async with journal.start_session() as session:
        await session.fs.write_bytes(root / "new", b"created")
    (root / "new").write_bytes(b"user data")
    await refused(journal, session.session_id)
    assert (root / "new").read_bytes() == b"user data"


async def test_a_file_replaced_by_a_directory_is_drift(journal: Journal, root: Path) -> None:
    """A different kind at the path is drift."""
    session_id = await written(journal, root)
    (root / "f").unlink()
    (root / "f").mkdir()
    error = await refused(journal, session_id)
    assert error.changes == ["it is now a dir, was a file"]


async def test_mkdir_of_a_folder_no_longer_empty(journal: Journal, root: Path) -> None:
    """A created folder that holds something now is drift; skip keeps, force removes it."""
    async with journal.start_session() as session:
        await session.fs.mkdir(root / "out" / "sub", parents=True)
    (root / "out" / "sub" / "user.txt").write_bytes(b"keep me")
    error = await refused(journal, session.session_id)
    assert error.changes == ["it is not empty (1 entries)"]
    assert (root / "out" / "sub" / "user.txt").exists()
    report = await journal.undo_session(session.session_id, drift="skip")
    assert report.skipped == 1
    assert (root / "out" / "sub" / "user.txt").exists()


async def test_mkdir_force_removes_a_non_empty_folder(journal: Journal, root: Path) -> None:
    """drift="force" removes the created folders even with new content."""
    async with journal.start_session() as session:
        await session.fs.mkdir(root / "out" / "sub", parents=True)
    (root / "out" / "sub" / "user.txt").write_bytes(b"goes")
    await journal.undo_session(session.session_id, drift="force")
    assert not (root / "out").exists()


async def test_mkdir_folder_replaced_by_a_file(journal: Journal, root: Path) -> None:
    """A created folder that became a file is drift."""
    async with journal.start_session() as session:
        await session.fs.mkdir(root / "out")
    (root / "out").rmdir()
    (root / "out").write_bytes(b"file")
    error = await refused(journal, session.session_id)
    assert error.changes == ["it is no longer a directory"]
    assert (root / "out").read_bytes() == b"file"


async def test_mkdir_folder_already_removed_is_fine(journal: Journal, root: Path) -> None:
    """A created folder that is gone already needs nothing; undo succeeds."""
    async with journal.start_session() as session:
        await session.fs.mkdir(root / "out")
    (root / "out").rmdir()
    report = await journal.undo_session(session.session_id)
    assert report.status is SessionStatus.ROLLED_BACK


async def test_delete_target_recreated(journal: Journal, root: Path) -> None:
    """Something new at a deleted path refuses undo; force puts the original back."""
    async with journal.start_session() as session:
        await session.fs.delete(root / "f")
    (root / "f").write_bytes(b"a new f")
    error = await refused(journal, session.session_id)
    assert "something new exists" in str(error)
    assert (root / "f").read_bytes() == b"a new f"
    await journal.undo_session(session.session_id, drift="force")
    assert (root / "f").read_bytes() == b"original"


async def test_rmtree_target_recreated(journal: Journal, root: Path) -> None:
    """A folder re-created at a removed tree's path is drift; skip leaves it."""
    async with journal.start_session() as session:
        await session.fs.rmtree(root / "d")
    (root / "d").mkdir()
    await refused(journal, session.session_id)
    report = await journal.undo_session(session.session_id, drift="skip")
    assert report.skipped == 1
    assert os.listdir(root / "d") == []


async def test_move_destination_modified(journal: Journal, root: Path) -> None:
    """A moved file edited at its new place refuses undo; nothing is moved back."""
    async with journal.start_session() as session:
        await session.fs.move(root / "f", root / "moved")
    (root / "moved").write_bytes(b"edited after the move")
    error = await refused(journal, session.session_id)
    assert error.filename == str(root / "moved")
    assert not (root / "f").exists()
    await journal.undo_session(session.session_id, drift="force")
    assert (root / "f").read_bytes() == b"edited after the move"
    assert not (root / "moved").exists()


async def test_moved_tree_changed_inside(journal: Journal, root: Path) -> None:
    """A file added inside a moved directory is drift of the tree."""
    async with journal.start_session() as session:
        await session.fs.move(root / "d", root / "d2")
    (root / "d2" / "extra").write_bytes(b"x")
    error = await refused(journal, session.session_id)
    assert error.changes == ["the tree's entries, sizes, modes or file mtimes"]


async def test_move_source_recreated(journal: Journal, root: Path) -> None:
    """Something new at the source path of a move refuses undo; it is not clobbered."""
    async with journal.start_session() as session:
        await session.fs.move(root / "f", root / "moved")
    (root / "f").write_bytes(b"new f")
    error = await refused(journal, session.session_id)
    assert "source path" in str(error)
    assert (root / "f").read_bytes() == b"new f"
    assert (root / "moved").read_bytes() == b"original"


async def test_copy_destination_modified(journal: Journal, root: Path) -> None:
    """An edited copy is not removed by undo."""
    async with journal.start_session() as session:
        await session.fs.copy(root / "f", root / "copy")
    (root / "copy").write_bytes(b"changed copy")
    await refused(journal, session.session_id)
    assert (root / "copy").read_bytes() == b"changed copy"


@pytest.mark.parametrize("drift", ["Refuse", "ignore", ""])
async def test_an_unknown_policy_is_a_value_error(journal: Journal, root: Path, drift: str) -> None:
    """An invalid drift value raises ValueError before anything is undone."""
    session_id = await written(journal, root)
    with pytest.raises(ValueError, match="drift must be one of"):
        await journal.undo_session(session_id, drift=drift)  # type: ignore[arg-type]
    assert (root / "f").read_bytes() == b"written by the session"
    record = await journal.get_session(session_id)
    assert record is not None
    assert (record.status, record.undo_count) == (SessionStatus.COMPLETED, 0)
