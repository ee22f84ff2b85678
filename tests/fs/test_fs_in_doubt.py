"""Operations whose commit never reported: undo resolves them from the disk.

A crash is simulated by running the blocking halves of an operation by hand: prepare,
a durable intent (a step entered and never left, so the session's end marks it
IN_DOUBT), then only part of the commit. Failures inside the commit (FAILED steps) and
a DONE write that never lands are simulated with monkeypatched calls. In every case the
undo must restore the tree exactly, never remove a file the operation did not change,
and leave no temp or before-image behind.

``RETRACT_SEED`` fixes the seed of the cancellation test's random delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from retract import (
    DriftError,
    Journal,
    OperationRecord,
    OperationState,
    Session,
    SessionStatus,
    StorageError,
    UndoFailedError,
)
from retract.fs import _images, _ops, is_temp_name
from retract.fs._durable import TempFile, install_file
from retract.fs._images import keep_copy, keep_moved
from retract.fs._ops import FsOp, copy_op, delete_op, mkdir_op, move_op, rmtree_op, write_op
from tests.fs._helpers import snapshot
from tests.helpers import StorageFactory

SEED = int(os.environ.get("RETRACT_SEED") or random.SystemRandom().randrange(2**32))
O = OperationState  # noqa: E741
Payload = dict[str, Any]


def leftovers(journal: Journal, session_id: str, root: Path) -> list[str]:
    """Temps under ``root`` and before-images of the session still on disk."""
    found = [n for _, dirs, files in os.walk(root) for n in dirs + files if is_temp_name(n)]
    folder = journal.images_dir / session_id
    if folder.is_dir():
        found += [f"image:{name}" for name in os.listdir(folder)]
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``f`` (0o640), ``g`` (0o755) and a directory ``d`` with ``d/x`` and ``d/sub/y``."""
    base = tmp_path / "root"
    base.mkdir()
    (base / "f").write_bytes(b"old f content")
    (base / "f").chmod(0o640)
    (base / "g").write_bytes(b"g")
    (base / "g").chmod(0o755)
    (base / "d").mkdir()
    (base / "d" / "x").write_bytes(b"x")
    (base / "d" / "sub").mkdir()
    (base / "d" / "sub" / "y").write_bytes(b"y" * 100)
    return base


@pytest.fixture(params=["local-images", "tmpfs-images"])
async def journal(
    request: pytest.FixtureRequest, storage_factory: StorageFactory, tmp_path: Path
) -> AsyncIterator[Journal]:
    """A journal on each storage, its images beside the files or on another filesystem."""
    if request.param == "local-images":
        images = tmp_path / "images"
    else:
        if not os.path.isdir("/dev/shm"):
            pytest.skip("no /dev/shm on this machine")
        images = Path(tempfile.mkdtemp(prefix="retract-test-", dir="/dev/shm"))
        if images.stat().st_dev == tmp_path.stat().st_dev:
            shutil.rmtree(images)
            pytest.skip("/dev/shm is on the same filesystem as the test directory")
    try:
        async with Journal(storage_factory(), images_dir=images) as opened:
            yield opened
    finally:
        if request.param != "local-images":
            shutil.rmtree(images, ignore_errors=True)


def image_for(session: Session) -> str:
    """A fresh before-image path in the session's image folder, as session.fs makes it."""
    return session.fs._image()


#: Only with the images on another filesystem (where keeping them means copying).
TMPFS_ONLY = pytest.mark.parametrize("journal", ["tmpfs-images"], indirect=True)


async def crash_after(
    session: Session, op: FsOp, cut: Callable[[Payload], object] | None
) -> Payload:
    """Prepare, journal the intent, run ``cut``, then stop as a killed process would.

    ``cut`` is the part of the commit that got done; the step never ends, so the end of
    the session marks the operation IN_DOUBT.
    """
    payload = op.prepare()
    assert payload is not None
    step = session.step(op.op_type, payload)
    await step.__aenter__()
    if cut is not None:
        cut(payload)
    return payload


async def only_op(journal: Journal, session_id: str) -> OperationRecord:
    (op,) = await journal.get_operations(session_id)
    return op


async def undo_restores(journal: Journal, session_id: str, root: Path, before: object) -> str:
    """Undo; the tree must be ``before`` with nothing left behind. Return the op's state."""
    op = await only_op(journal, session_id)
    assert op.state in (O.IN_DOUBT, O.FAILED)
    assert op.payload.get("committed") is None
    report = await journal.undo_session(session_id)
    assert report.status is SessionStatus.ROLLED_BACK
    assert report.failed == ()
    assert snapshot(root) == before
    assert leftovers(journal, session_id, root) == []
    return (await only_op(journal, session_id)).state.value


# -- write ------------------------------------------------------------------------------


def write_stage(stage: str, target: str, image: str) -> Callable[[Payload], object] | None:
    if stage == "prepared":
        return None
    if stage == "imaged":
        return lambda p: keep_copy(target, image, durable=True)

    def replaced(p: Payload) -> None:
        keep_copy(target, image, durable=True)
        install_file(TempFile(p["temp"], None), target, overwrite=True)

    return replaced


@pytest.mark.parametrize("same", [False, True], ids=["new-bytes", "same-bytes"])
@pytest.mark.parametrize("stage", ["prepared", "imaged", "replaced"])
async def test_in_doubt_overwrite(journal: Journal, root: Path, stage: str, same: bool) -> None:
    """An overwrite cut anywhere is undone to the old file (same bytes: never deleted)."""
    target = str(root / "f")
    data = b"old f content" if same else b"brand new bytes"
    before = snapshot(root)
    async with journal.start_session() as session:
        image = image_for(session)
        op = write_op(target, data, image, overwrite=True, durable=True, permissions=None)
        await crash_after(session, op, write_stage(stage, target, image))
    state = await undo_restores(journal, session.session_id, root, before)
    if stage != "replaced":
        assert state == "skipped"


@pytest.mark.parametrize("same", [False, True], ids=["new-bytes", "same-bytes"])
@pytest.mark.parametrize("stage", ["prepared", "imaged", "replaced"])
async def test_in_doubt_overwrite_with_new_permissions(
    journal: Journal, root: Path, stage: str, same: bool
) -> None:
    """An overwrite that also changed the bits is undone to the old bits."""
    target = str(root / "f")
    data = b"old f content" if same else b"other"
    before = snapshot(root)
    async with journal.start_session() as session:
        image = image_for(session)
        op = write_op(target, data, image, overwrite=True, durable=True, permissions=0o600)
        await crash_after(session, op, write_stage(stage, target, image))
    await undo_restores(journal, session.session_id, root, before)


@pytest.mark.parametrize("stage", ["prepared", "replaced"])
async def test_in_doubt_new_file(journal: Journal, root: Path, stage: str) -> None:
    """A write of a new file cut before or after its rename is undone to no file."""
    target = str(root / "new")
    before = snapshot(root)
    async with journal.start_session() as session:
        op = write_op(
            target, b"n", image_for(session), overwrite=True, durable=True, permissions=None
        )
        await crash_after(
            session,
            op,
            None
            if stage == "prepared"
            else lambda p: install_file(TempFile(p["temp"], None), target, overwrite=False),
        )
    state = await undo_restores(journal, session.session_id, root, before)
    assert state == ("skipped" if stage == "prepared" else "undone")


async def test_identical_rewrite_that_failed_before_replace_keeps_the_file(
    journal: Journal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A same-bytes write whose replace failed (FAILED) must not delete the user's file."""
    before = snapshot(root)

    def failing_install(temp: TempFile, target: str, *, overwrite: bool) -> None:
        raise OSError(errno.EIO, "simulated I/O error", target)

    monkeypatch.setattr(_ops, "install_file", failing_install)
    async with journal.start_session() as session:
        with pytest.raises(OSError, match="simulated"):
            await session.fs.write_bytes(root / "f", b"old f content")
    assert (await only_op(journal, session.session_id)).state is O.FAILED
    state = await undo_restores(journal, session.session_id, root, before)
    assert state == "skipped"


async def test_write_whose_commit_failed_after_the_image(
    journal: Journal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that failed between keeping the image and replacing is a no-op to undo."""
    before = snapshot(root)

    def failing_install(temp: TempFile, target: str, *, overwrite: bool) -> None:
        raise OSError(errno.EIO, "simulated I/O error", target)

    monkeypatch.setattr(_ops, "install_file", failing_install)
    async with journal.start_session() as session:
        with pytest.raises(OSError, match="simulated"):
            await session.fs.write_bytes(root / "f", b"never written")
    state = await undo_restores(journal, session.session_id, root, before)
    assert state == "skipped"


# -- move and copy ----------------------------------------------------------------------


async def test_in_doubt_move_not_started(journal: Journal, root: Path) -> None:
    """A move cut before its rename is nothing to undo."""
    before = snapshot(root)
    async with journal.start_session() as session:
        op = move_op(
            str(root / "f"), str(root / "moved"), image_for(session), overwrite=False, durable=True
        )
        await crash_after(session, op, None)
    assert await undo_restores(journal, session.session_id, root, before) == "skipped"


@pytest.mark.parametrize(("src", "dst"), [("f", "moved"), ("d", "d2"), ("f", "g"), ("g", "d")])
async def test_in_doubt_move_done(journal: Journal, root: Path, src: str, dst: str) -> None:
    """A move that happened but never reported is moved back (replaced dst restored)."""
    before = snapshot(root)
    async with journal.start_session() as session:
        op = move_op(
            str(root / src), str(root / dst), image_for(session), overwrite=True, durable=True
        )
        await crash_after(session, op, op.commit)
    assert await undo_restores(journal, session.session_id, root, before) == "undone"


@pytest.mark.parametrize("dst", ["g", "d", "dangling"])
async def test_in_doubt_move_after_keeping_the_image(
    journal: Journal, root: Path, dst: str
) -> None:
    """A move over a file, a tree or a dangling symlink cut after its image was kept."""
    os.symlink("nowhere", root / "dangling")
    before = snapshot(root)
    async with journal.start_session() as session:
        image = image_for(session)
        op = move_op(str(root / "f"), str(root / dst), image, overwrite=True, durable=True)
        keep = keep_moved if dst == "d" else keep_copy
        await crash_after(session, op, lambda p: keep(str(root / dst), image, durable=True))
    assert await undo_restores(journal, session.session_id, root, before) == "skipped"


@pytest.mark.parametrize(("src", "dst"), [("f", "copy"), ("d", "d2")])
async def test_in_doubt_copy_not_renamed(journal: Journal, root: Path, src: str, dst: str) -> None:
    """A copy cut before its rename leaves only its temp, which undo removes."""
    before = snapshot(root)
    async with journal.start_session() as session:
        op = copy_op(
            str(root / src), str(root / dst), image_for(session), overwrite=False, durable=True
        )
        await crash_after(session, op, None)
    assert await undo_restores(journal, session.session_id, root, before) == "skipped"


@pytest.mark.parametrize(("src", "dst"), [("f", "copy"), ("d", "d2"), ("g", "f"), ("d", "d")])
async def test_in_doubt_copy_done(journal: Journal, root: Path, src: str, dst: str) -> None:
    """A copy that happened but never reported is removed and what it replaced restored."""
    before = snapshot(root)
    async with journal.start_session() as session:
        op = copy_op(
            str(root / src), str(root / dst), image_for(session), overwrite=True, durable=True
        )
        await crash_after(session, op, op.commit)
    await undo_restores(journal, session.session_id, root, before)


@pytest.mark.parametrize("dst", ["f", "d"])
async def test_in_doubt_copy_after_keeping_the_image(
    journal: Journal, root: Path, dst: str
) -> None:
    """A copy over a file or a tree cut after the image was kept restores the old dst."""
    before = snapshot(root)
    async with journal.start_session() as session:
        image = image_for(session)
        op = copy_op(str(root / "g"), str(root / dst), image, overwrite=True, durable=True)
        keep = keep_moved if dst == "d" else keep_copy
        await crash_after(session, op, lambda p: keep(str(root / dst), image, durable=True))
    await undo_restores(journal, session.session_id, root, before)


@pytest.mark.parametrize("kind", ["move", "copy"])
async def test_failed_rename_over_a_tree_puts_the_tree_back(
    journal: Journal, root: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename that fails after dst was moved into its image puts dst back at once."""
    before = snapshot(root)

    def failing_rename(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "simulated rename failure", dst)

    monkeypatch.setattr(_ops, "rename_noreplace", failing_rename)
    async with journal.start_session() as session:
        with pytest.raises(OSError, match="simulated rename"):
            if kind == "move":
                await session.fs.move(root / "g", root / "d", overwrite=True)
            else:
                await session.fs.copy(root / "g", root / "d", overwrite=True)
    assert snapshot(root) == before
    assert await undo_restores(journal, session.session_id, root, before) == "skipped"


# -- delete, rmtree, mkdir --------------------------------------------------------------


@pytest.mark.parametrize("stage", ["prepared", "removed"])
@pytest.mark.parametrize("path", ["f", "d"])
async def test_in_doubt_removal(journal: Journal, root: Path, path: str, stage: str) -> None:
    """A delete or rmtree cut before or after it moved the path away is undone."""
    before = snapshot(root)
    async with journal.start_session() as session:
        image = image_for(session)
        target = str(root / path)
        op = (
            delete_op(target, image, missing_ok=False, durable=True)
            if path == "f"
            else rmtree_op(target, image, durable=True)
        )
        await crash_after(session, op, None if stage == "prepared" else op.commit)
    state = await undo_restores(journal, session.session_id, root, before)
    assert state == ("skipped" if stage == "prepared" else "undone")


def partial_removal(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    """Make the next removal of a file or tree by ``module`` stop halfway with EIO."""
    real_rmtree, real_unlink = shutil.rmtree, os.unlink

    def rmtree(path: str, *args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(module.shutil, "rmtree", real_rmtree)
        for current, _dirs, files in os.walk(path):
            for name in files:
                real_unlink(os.path.join(current, name))
                raise OSError(errno.EIO, "simulated failure halfway", path)
        raise OSError(errno.EIO, "simulated failure", path)

    monkeypatch.setattr(module.shutil, "rmtree", rmtree)


@TMPFS_ONLY
async def test_rmtree_that_failed_halfway_loses_nothing(
    journal: Journal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree whose removal stopped halfway (after its copy) is never given up.

    Undo refuses (the tree differs from its whole image), and force restores it whole.
    """
    before = snapshot(root)
    async with journal.start_session() as session:
        partial_removal(monkeypatch, _images)
        with pytest.raises(OSError, match="simulated failure halfway"):
            await session.fs.rmtree(root / "d")
    monkeypatch.undo()
    assert (await only_op(journal, session.session_id)).state is O.FAILED
    halfway = snapshot(root)
    assert halfway != before
    with pytest.raises(UndoFailedError) as caught:
        await journal.undo_session(session.session_id)
    assert isinstance(caught.value.__cause__, DriftError)
    assert snapshot(root) == halfway
    report = await journal.undo_session(session.session_id, drift="force")
    assert report.failed == ()
    assert snapshot(root) == before
    assert leftovers(journal, session.session_id, root) == []


@TMPFS_ONLY
async def test_move_over_a_tree_that_failed_halfway_loses_nothing(
    journal: Journal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move over a tree whose removal stopped halfway gets the whole tree back by force."""
    before = snapshot(root)
    async with journal.start_session() as session:
        partial_removal(monkeypatch, _images)
        with pytest.raises(OSError, match="simulated failure halfway"):
            await session.fs.move(root / "g", root / "d", overwrite=True)
    monkeypatch.undo()
    with pytest.raises(UndoFailedError) as caught:
        await journal.undo_session(session.session_id)
    assert isinstance(caught.value.__cause__, DriftError)
    report = await journal.undo_session(session.session_id, drift="force")
    assert report.failed == ()
    assert snapshot(root) == before
    assert leftovers(journal, session.session_id, root) == []


@TMPFS_ONLY
async def test_delete_whose_unlink_failed_after_the_copy(
    journal: Journal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete that copied its image but failed to unlink is nothing to undo."""
    before = snapshot(root)
    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.fspath(path) == str(root / "f"):
            raise OSError(errno.EIO, "simulated unlink failure", path)
        real_unlink(path, *args, **kwargs)

    async with journal.start_session() as session:
        monkeypatch.setattr(os, "unlink", unlink)
        with pytest.raises(OSError, match="simulated unlink"):
            await session.fs.delete(root / "f")
        monkeypatch.undo()
    assert await undo_restores(journal, session.session_id, root, before) == "skipped"


@pytest.mark.parametrize("made", [0, 1, 3])
async def test_in_doubt_mkdir(journal: Journal, root: Path, made: int) -> None:
    """mkdir(parents=True) cut after some of its folders is undone to none of them."""
    before = snapshot(root)
    path = root / "p" / "q" / "r"
    async with journal.start_session() as session:
        op = mkdir_op(str(path), mode=0o777, parents=True, exist_ok=False, durable=True)

        def cut(p: Payload) -> None:
            for folder in p["create"][:made]:
                os.mkdir(folder)

        await crash_after(session, op, cut)
    state = await undo_restores(journal, session.session_id, root, before)
    assert state == ("skipped" if made == 0 else "undone")


# -- the DONE write never lands ---------------------------------------------------------

Action = Callable[[Session, Path], Awaitable[None]]

ACTIONS: dict[str, Action] = {
    "write-over": lambda s, r: s.fs.write_bytes(r / "f", b"new"),
    "write-new": lambda s, r: s.fs.write_bytes(r / "new", b"new"),
    "write-same": lambda s, r: s.fs.write_bytes(r / "f", b"old f content"),
    "move": lambda s, r: s.fs.move(r / "f", r / "d" / "f"),
    "move-over-dir": lambda s, r: s.fs.move(r / "g", r / "d", overwrite=True),
    "copy": lambda s, r: s.fs.copy(r / "d", r / "d2"),
    "copy-over-file": lambda s, r: s.fs.copy(r / "g", r / "f", overwrite=True),
    "delete": lambda s, r: s.fs.delete(r / "f"),
    "rmtree": lambda s, r: s.fs.rmtree(r / "d"),
    "mkdir": lambda s, r: s.fs.mkdir(r / "a" / "b", parents=True),
}


@pytest.mark.parametrize("action", list(ACTIONS))
async def test_done_write_lost(
    journal: Journal, root: Path, action: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change happened but its DONE row failed: IN_DOUBT, and undo still restores."""
    before = snapshot(root)
    storage = journal.storage
    real = storage.update_operations

    async def no_done(updates: Any, at: float) -> None:
        if any(u.state is O.DONE for u in updates):
            raise StorageError("simulated: the DONE row was not written")
        await real(updates, at)

    monkeypatch.setattr(storage, "update_operations", no_done)
    with pytest.raises(StorageError, match="DONE row"):
        async with journal.start_session() as session:
            await ACTIONS[action](session, root)
    monkeypatch.undo()
    assert (await only_op(journal, session.session_id)).state is O.IN_DOUBT
    await undo_restores(journal, session.session_id, root, before)


# -- cancellation -----------------------------------------------------------------------


async def write(journal: Journal, path: Path, ids: list[str]) -> None:
    """Write ``path`` in a new session, reporting the session's id into ``ids``."""
    async with journal.start_session() as session:
        ids.append(session.session_id)
        await session.fs.write_bytes(path, b"cancelled or not")


async def test_cancelled_writes_are_all_or_nothing(
    journal: Journal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write cancelled at a random instant either left nothing or is DONE and undoable."""
    rng = random.Random(SEED)
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.002)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    before = snapshot(root)
    outcomes = {"nothing": 0, "done": 0}
    for _ in range(25):
        ids: list[str] = []
        task = asyncio.create_task(write(journal, root / "f", ids))
        if rng.random() < 0.5:
            for _ in range(rng.randrange(40)):
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(rng.uniform(0, 0.03))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not ids:
            assert snapshot(root) == before
            continue
        (session_id,) = ids
        ops = await journal.get_operations(session_id)
        if (root / "f").read_bytes() == b"cancelled or not":
            outcomes["done"] += 1
            assert [op.state for op in ops] == [O.DONE], f"seed {SEED}"
            assert [n for n in os.listdir(root) if is_temp_name(n)] == [], f"seed {SEED}"
        else:
            outcomes["nothing"] += 1
            assert snapshot(root) == before, f"seed {SEED}"
            assert leftovers(journal, session_id, root) == [], f"seed {SEED}"
            assert all(op.state is O.FAILED for op in ops), f"seed {SEED}"
        await journal.undo_session(session_id)
        assert snapshot(root) == before, f"seed {SEED}"
        assert leftovers(journal, session_id, root) == [], f"seed {SEED}"
    assert sum(outcomes.values()) > 0
