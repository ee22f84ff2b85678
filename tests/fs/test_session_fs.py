"""``session.fs``: each operation does its change, journals it, and undo restores the tree."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from retract import (
    CrossDeviceError,
    FileAlreadyExistsError,
    InMemoryStorage,
    Journal,
    OperationRecord,
    OperationState,
    SessionStateError,
    SessionStatus,
    SQLiteStorage,
    open_journal,
)
from retract.fs import is_temp_name
from tests.fs._helpers import snapshot


def temps_under(root: Path) -> list[str]:
    """Retract temps anywhere under ``root``."""
    return [name for _, dirs, files in os.walk(root) for name in dirs + files if is_temp_name(name)]


def images(journal: Journal, session_id: str) -> list[str]:
    """The before-images kept for a session."""
    folder = journal.images_dir / session_id
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def make_file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small tree: two files, a nested directory with a file and a symlink."""
    base = tmp_path / "root"
    base.mkdir()
    make_file(base / "a.txt", b"alpha", 0o640)
    make_file(base / "b.bin", b"\x00\x01beta", 0o755)
    (base / "d").mkdir(mode=0o750)
    (base / "d").chmod(0o750)
    make_file(base / "d" / "x.txt", b"nested x", 0o600)
    (base / "d" / "e").mkdir()
    make_file(base / "d" / "e" / "y", b"deep y", 0o644)
    os.symlink("x.txt", base / "d" / "link")
    return base


async def only_op(journal: Journal, session_id: str) -> OperationRecord:
    (op,) = await journal.get_operations(session_id)
    return op


async def undo_restores(journal: Journal, session_id: str, root: Path, before: object) -> None:
    report = await journal.undo_session(session_id)
    assert report.status is SessionStatus.ROLLED_BACK
    assert report.failed == ()
    assert snapshot(root) == before
    assert images(journal, session_id) == []
    assert temps_under(root) == []


# -- write ------------------------------------------------------------------------------


async def test_write_over_a_file_is_journaled_done(journal: Journal, root: Path) -> None:
    """An overwrite journals fs.write DONE with the absolute path and the committed fact."""
    async with journal.start_session() as session:
        await session.fs.write_bytes(root / "a.txt", b"new content")
    op = await only_op(journal, session.session_id)
    assert (op.op_type, op.state) == ("fs.write", OperationState.DONE)
    assert op.payload["path"] == str(root / "a.txt")
    assert op.payload["committed"] is True
    assert op.payload["existed"] is True
    assert (root / "a.txt").read_bytes() == b"new content"
    assert stat.S_IMODE((root / "a.txt").stat().st_mode) == 0o640
    assert len(images(journal, session.session_id)) == 1


async def test_undo_of_an_overwrite_restores_content_and_bits(journal: Journal, root: Path) -> None:
    """Undo puts the old bytes and permission bits back and removes the before-image."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.write_bytes(root / "a.txt", b"replaced", permissions=0o600)
    assert stat.S_IMODE((root / "a.txt").stat().st_mode) == 0o600
    await undo_restores(journal, session.session_id, root, before)


async def test_undo_of_a_new_file_removes_it(journal: Journal, root: Path) -> None:
    """A write that created a file is undone by removing it."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.write_bytes(root / "d" / "new.txt", bytearray(b"fresh"))
    op = await only_op(journal, session.session_id)
    assert op.payload["existed"] is False
    assert (root / "d" / "new.txt").read_bytes() == b"fresh"
    await undo_restores(journal, session.session_id, root, before)


async def test_relative_paths_are_journaled_absolute(
    journal: Journal, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path is made absolute at call time, so undo works from anywhere."""
    monkeypatch.chdir(root)
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.write_bytes("rel.txt", b"r")
        await session.fs.move("a.txt", "d/a2.txt")
    first, second = await journal.get_operations(session.session_id)
    assert first.payload["path"] == str(root / "rel.txt")
    assert (second.payload["src"], second.payload["dst"]) == (
        str(root / "a.txt"),
        str(root / "d" / "a2.txt"),
    )
    monkeypatch.chdir(root.parent)
    await undo_restores(journal, session.session_id, root, before)


@pytest.mark.parametrize(
    ("text", "how", "expected"),
    [
        ("héllo\nwörld", ("utf-8", "strict", None), "héllo\nwörld".encode()),
        ("héllo", ("utf-16", "strict", None), "héllo".encode("utf-16")),
        ("héllo", ("ascii", "replace", None), b"h?llo"),
        ("a\nb\n", ("utf-8", "strict", "\r\n"), b"a\r\nb\r\n"),
        ("a\nb", ("utf-8", "strict", ""), b"a\nb"),
    ],
)
async def test_write_text_encodes_as_asked(
    journal: Journal, root: Path, text: str, how: tuple[str, str, str | None], expected: bytes
) -> None:
    """write_text honours encoding, errors and newline, and is undone like write_bytes."""
    encoding, errors, newline = how
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.write_text(
            root / "a.txt", text, encoding=encoding, errors=errors, newline=newline
        )
    assert (root / "a.txt").read_bytes() == expected
    await undo_restores(journal, session.session_id, root, before)


async def test_write_text_refuses_bytes_before_journaling(journal: Journal, root: Path) -> None:
    """Bytes given to write_text are a TypeError and nothing is journaled or written."""
    async with journal.start_session() as session:
        with pytest.raises(TypeError, match="needs a str"):
            await session.fs.write_text(root / "a.txt", b"raw")  # type: ignore[arg-type]
    assert await journal.get_operations(session.session_id) == []
    assert (root / "a.txt").read_bytes() == b"alpha"


async def test_write_text_refuses_a_bad_newline(journal: Journal, root: Path) -> None:
    """An illegal newline value is a ValueError, as with open()."""
    async with journal.start_session() as session:
        with pytest.raises(ValueError, match="illegal newline"):
            await session.fs.write_text(root / "a.txt", "x", newline="\t")
    assert await journal.get_operations(session.session_id) == []


async def test_write_without_overwrite_refuses_an_existing_file(
    journal: Journal, root: Path
) -> None:
    """overwrite=False on an existing file raises, journals nothing and leaves no temp."""
    before = snapshot(root)
    async with journal.start_session() as session:
        with pytest.raises(FileAlreadyExistsError):
            await session.fs.write_bytes(root / "a.txt", b"no", overwrite=False)
    assert await journal.get_operations(session.session_id) == []
    assert snapshot(root) == before
    assert images(journal, session.session_id) == []


async def test_write_onto_a_directory_is_refused(journal: Journal, root: Path) -> None:
    """Writing a directory's path raises IsADirectoryError and changes nothing."""
    before = snapshot(root)
    async with journal.start_session() as session:
        with pytest.raises(IsADirectoryError):
            await session.fs.write_bytes(root / "d", b"no")
    assert await journal.get_operations(session.session_id) == []
    assert snapshot(root) == before


async def test_write_into_a_missing_directory_is_refused(journal: Journal, root: Path) -> None:
    """A missing parent directory is a FileNotFoundError with nothing journaled."""
    async with journal.start_session() as session:
        with pytest.raises(FileNotFoundError):
            await session.fs.write_bytes(root / "nope" / "f", b"no")
    assert await journal.get_operations(session.session_id) == []


async def test_write_through_a_symlink_replaces_its_target(journal: Journal, root: Path) -> None:
    """A symlink is followed: its target is replaced, the link stays, undo restores both."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.write_bytes(root / "d" / "link", b"via link")
    assert os.readlink(root / "d" / "link") == "x.txt"
    assert (root / "d" / "x.txt").read_bytes() == b"via link"
    op = await only_op(journal, session.session_id)
    assert op.payload["path"] == str(root / "d" / "x.txt")
    await undo_restores(journal, session.session_id, root, before)


async def test_an_unchanged_rewrite_is_undone_too(journal: Journal, root: Path) -> None:
    """Writing identical bytes is journaled and undone without losing the file."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.write_bytes(root / "a.txt", b"alpha")
    await undo_restores(journal, session.session_id, root, before)


async def test_non_durable_write_is_undone(journal: Journal, root: Path) -> None:
    """durable=False skips syncs but journals and undoes the same way."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.write_bytes(root / "a.txt", b"fast", durable=False)
        await session.fs.delete(root / "b.bin", durable=False)
    assert (root / "a.txt").read_bytes() == b"fast"
    await undo_restores(journal, session.session_id, root, before)


# -- move -------------------------------------------------------------------------------


async def test_move_of_a_file_is_journaled_and_undone(journal: Journal, root: Path) -> None:
    """A moved file is journaled as fs.move and moved back by undo."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.move(root / "a.txt", root / "d" / "moved.txt")
    op = await only_op(journal, session.session_id)
    assert (op.op_type, op.state, op.payload["committed"]) == ("fs.move", OperationState.DONE, True)
    assert (op.payload["src"], op.payload["dst"]) == (
        str(root / "a.txt"),
        str(root / "d" / "moved.txt"),
    )
    assert not (root / "a.txt").exists()
    assert (root / "d" / "moved.txt").read_bytes() == b"alpha"
    await undo_restores(journal, session.session_id, root, before)


async def test_move_of_a_directory_is_undone(journal: Journal, root: Path) -> None:
    """A whole directory is renamed and renamed back."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.move(root / "d", root / "renamed")
    assert (root / "renamed" / "e" / "y").read_bytes() == b"deep y"
    await undo_restores(journal, session.session_id, root, before)


async def test_move_of_a_symlink_moves_the_link(journal: Journal, root: Path) -> None:
    """A symlink is moved as a link, not followed."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.move(root / "d" / "link", root / "link2")
    assert os.readlink(root / "link2") == "x.txt"
    await undo_restores(journal, session.session_id, root, before)


async def test_move_with_overwrite_restores_the_replaced_file(journal: Journal, root: Path) -> None:
    """overwrite=True keeps the replaced dst; undo brings back both files."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.move(root / "a.txt", root / "b.bin", overwrite=True)
    op = await only_op(journal, session.session_id)
    assert op.payload["replaced"] is True
    assert (root / "b.bin").read_bytes() == b"alpha"
    await undo_restores(journal, session.session_id, root, before)


async def test_move_with_overwrite_restores_a_replaced_directory(
    journal: Journal, root: Path
) -> None:
    """A directory moved over another directory is undone, the old tree restored."""
    (root / "other").mkdir()
    make_file(root / "other" / "o.txt", b"other", 0o600)
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.move(root / "other", root / "d", overwrite=True)
    assert sorted(os.listdir(root / "d")) == ["o.txt"]
    await undo_restores(journal, session.session_id, root, before)


async def test_move_onto_an_existing_path_needs_overwrite(journal: Journal, root: Path) -> None:
    """Without overwrite an existing dst raises; nothing is journaled or moved."""
    before = snapshot(root)
    async with journal.start_session() as session:
        with pytest.raises(FileAlreadyExistsError):
            await session.fs.move(root / "a.txt", root / "b.bin")
        with pytest.raises(FileExistsError):
            await session.fs.move(root / "a.txt", root / "d")
    assert await journal.get_operations(session.session_id) == []
    assert snapshot(root) == before


async def test_move_of_a_missing_source_is_refused(journal: Journal, root: Path) -> None:
    """A missing src raises FileNotFoundError and journals nothing."""
    async with journal.start_session() as session:
        with pytest.raises(FileNotFoundError):
            await session.fs.move(root / "ghost", root / "g2")
        with pytest.raises(FileNotFoundError):
            await session.fs.move(root / "a.txt", root / "no-dir" / "a.txt")
    assert await journal.get_operations(session.session_id) == []
    assert (root / "a.txt").exists()


async def test_move_onto_itself_is_refused(journal: Journal, root: Path) -> None:
    """Moving a path onto itself (or a hard link of it) is a ValueError."""
    os.link(root / "a.txt", root / "hard")
    before = snapshot(root)
    async with journal.start_session() as session:
        with pytest.raises(ValueError, match="onto itself"):
            await session.fs.move(root / "a.txt", root / "hard", overwrite=True)
    assert await journal.get_operations(session.session_id) == []
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        ("d", "d/e", "into itself"),
        ("d", "d/new", "into itself"),
        ("d/e/y", "d", "which contains it"),
        ("d/x.txt", "d", "which contains it"),
    ],
)
async def test_move_into_itself_or_over_its_parent_is_refused(
    journal: Journal, root: Path, src: str, dst: str, message: str
) -> None:
    """A directory moved into itself, or a path over a folder holding it, is a ValueError."""
    before = snapshot(root)
    async with journal.start_session() as session:
        with pytest.raises(ValueError, match=message):
            await session.fs.move(root / src, root / dst, overwrite=True)
    assert await journal.get_operations(session.session_id) == []
    assert snapshot(root) == before


async def test_move_over_a_dangling_symlink_is_undone(journal: Journal, root: Path) -> None:
    """overwrite=True replaces a dangling symlink at dst and undo puts it back."""
    os.symlink("nowhere", root / "dangling")
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.move(root / "a.txt", root / "dangling", overwrite=True)
    assert (root / "dangling").read_bytes() == b"alpha"
    await undo_restores(journal, session.session_id, root, before)


async def test_move_over_a_symlink_to_itself_replaces_the_link(
    journal: Journal, root: Path
) -> None:
    """A dst symlink pointing at src is a different entry: it is replaced, then restored."""
    os.symlink("a.txt", root / "to-a")
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.move(root / "a.txt", root / "to-a", overwrite=True)
    assert not (root / "to-a").is_symlink()
    assert (root / "to-a").read_bytes() == b"alpha"
    await undo_restores(journal, session.session_id, root, before)


@pytest.fixture
def shm_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on another filesystem than ``tmp_path`` (tmpfs /dev/shm), else skip."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    folder = Path(tempfile.mkdtemp(prefix="retract-test-", dir="/dev/shm"))
    try:
        if folder.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("/dev/shm is on the same filesystem as the test directory")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_move_across_filesystems_is_refused(
    journal: Journal, root: Path, shm_dir: Path
) -> None:
    """A move to another filesystem raises CrossDeviceError before anything is journaled."""
    before = snapshot(root)
    async with journal.start_session() as session:
        with pytest.raises(CrossDeviceError) as caught:
            await session.fs.move(root / "a.txt", shm_dir / "a.txt")
    assert "different filesystems" in str(caught.value)
    assert await journal.get_operations(session.session_id) == []
    assert snapshot(root) == before
    assert os.listdir(shm_dir) == []


# -- copy -------------------------------------------------------------------------------


async def test_copy_of_a_file_keeps_bits_and_is_undone(journal: Journal, root: Path) -> None:
    """A copied file has the source's bytes and bits; undo removes the copy."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.copy(root / "b.bin", root / "d" / "copy.bin")
    op = await only_op(journal, session.session_id)
    assert (op.op_type, op.state, op.payload["committed"]) == ("fs.copy", OperationState.DONE, True)
    assert op.payload["dst"] == str(root / "d" / "copy.bin")
    copied = root / "d" / "copy.bin"
    assert copied.read_bytes() == b"\x00\x01beta"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o755
    await undo_restores(journal, session.session_id, root, before)


async def test_copy_of_a_directory_is_undone(journal: Journal, root: Path) -> None:
    """A tree is copied whole (symlinks as links) and removed by undo."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.copy(root / "d", root / "d2")
    copied = {k.removeprefix("d2/"): v for k, v in snapshot(root).items() if k.startswith("d2/")}
    original = {k.removeprefix("d/"): v for k, v in before.items() if k.startswith("d/")}
    assert copied == original
    await undo_restores(journal, session.session_id, root, before)


async def test_copy_with_overwrite_restores_the_replaced_file(journal: Journal, root: Path) -> None:
    """overwrite=True keeps the replaced file; undo restores it."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.copy(root / "a.txt", root / "b.bin", overwrite=True)
    assert (root / "b.bin").read_bytes() == b"alpha"
    await undo_restores(journal, session.session_id, root, before)


async def test_copy_of_a_tree_over_a_tree_is_undone(journal: Journal, root: Path) -> None:
    """overwrite=True over a directory keeps the old tree and undo swaps it back."""
    (root / "t").mkdir()
    make_file(root / "t" / "only-in-t", b"t", 0o600)
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.copy(root / "d", root / "t", overwrite=True)
    assert not (root / "t" / "only-in-t").exists()
    assert (root / "t" / "e" / "y").read_bytes() == b"deep y"
    await undo_restores(journal, session.session_id, root, before)


async def test_copy_onto_an_existing_path_needs_overwrite(journal: Journal, root: Path) -> None:
    """Without overwrite an existing dst raises; nothing is journaled or left behind."""
    before = snapshot(root)
    async with journal.start_session() as session:
        with pytest.raises(FileAlreadyExistsError):
            await session.fs.copy(root / "a.txt", root / "b.bin")
        with pytest.raises(FileAlreadyExistsError):
            await session.fs.copy(root / "d", root / "d" / "e")
    assert await journal.get_operations(session.session_id) == []
    assert snapshot(root) == before


async def test_copy_of_a_missing_source_is_refused(journal: Journal, root: Path) -> None:
    """A missing src raises FileNotFoundError and journals nothing."""
    before = snapshot(root)
    async with journal.start_session() as session:
        with pytest.raises(FileNotFoundError):
            await session.fs.copy(root / "ghost", root / "g2")
    assert await journal.get_operations(session.session_id) == []
    assert snapshot(root) == before


@pytest.mark.parametrize("source", ["a.txt", "d"])
async def test_copy_into_a_missing_directory_is_refused(
    journal: Journal, root: Path, source: str
) -> None:
    """A file or a tree copied into a missing directory raises and creates nothing."""
    before = snapshot(root)
    async with journal.start_session() as session:
        with pytest.raises(FileNotFoundError):
            await session.fs.copy(root / source, root / "missing" / "deeper" / "dst")
    assert await journal.get_operations(session.session_id) == []
    assert snapshot(root) == before


# -- delete -----------------------------------------------------------------------------


async def test_delete_of_a_file_is_undone(journal: Journal, root: Path) -> None:
    """A deleted file is kept as an image and put back, bytes and bits, by undo."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.delete(root / "b.bin")
    op = await only_op(journal, session.session_id)
    assert (op.op_type, op.state) == ("fs.delete", OperationState.DONE)
    assert op.payload["path"] == str(root / "b.bin")
    assert op.payload["committed"] is True
    assert not (root / "b.bin").exists()
    assert len(images(journal, session.session_id)) == 1
    await undo_restores(journal, session.session_id, root, before)


async def test_delete_of_a_symlink_removes_only_the_link(journal: Journal, root: Path) -> None:
    """Deleting a symlink keeps its target; undo re-creates the link."""
    os.symlink("nowhere", root / "dangling")
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.delete(root / "d" / "link")
        await session.fs.delete(root / "dangling")
    assert not (root / "d" / "link").is_symlink()
    assert (root / "d" / "x.txt").read_bytes() == b"nested x"
    await undo_restores(journal, session.session_id, root, before)


async def test_delete_of_a_directory_is_refused(journal: Journal, root: Path) -> None:
    """delete() on a directory raises IsADirectoryError naming rmtree."""
    async with journal.start_session() as session:
        with pytest.raises(IsADirectoryError, match="rmtree"):
            await session.fs.delete(root / "d")
    assert await journal.get_operations(session.session_id) == []
    assert (root / "d" / "x.txt").exists()


async def test_delete_of_a_missing_file(journal: Journal, root: Path) -> None:
    """A missing path raises, unless missing_ok, which journals nothing."""
    async with journal.start_session() as session:
        with pytest.raises(FileNotFoundError):
            await session.fs.delete(root / "ghost")
        await session.fs.delete(root / "ghost", missing_ok=True)
    assert await journal.get_operations(session.session_id) == []


# -- mkdir ------------------------------------------------------------------------------


async def test_mkdir_is_journaled_and_undone(journal: Journal, root: Path) -> None:
    """A created directory is journaled with what it created and removed by undo."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.mkdir(root / "new", mode=0o700)
    op = await only_op(journal, session.session_id)
    assert (op.op_type, op.state) == ("fs.mkdir", OperationState.DONE)
    assert op.payload["created"] == [str(root / "new")]
    assert (root / "new").is_dir()
    await undo_restores(journal, session.session_id, root, before)


async def test_mkdir_parents_undo_removes_only_created_dirs(journal: Journal, root: Path) -> None:
    """parents=True creates the missing chain; undo removes exactly those folders."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.mkdir(root / "d" / "p" / "q" / "r", parents=True)
    op = await only_op(journal, session.session_id)
    assert op.payload["created"] == [
        str(root / "d" / "p"),
        str(root / "d" / "p" / "q"),
        str(root / "d" / "p" / "q" / "r"),
    ]
    await undo_restores(journal, session.session_id, root, before)
    assert (root / "d" / "x.txt").exists()


async def test_mkdir_exist_ok_journals_nothing(journal: Journal, root: Path) -> None:
    """exist_ok=True on an existing directory returns without journaling."""
    async with journal.start_session() as session:
        await session.fs.mkdir(root / "d", exist_ok=True)
        await session.fs.mkdir(root / "d" / "e", parents=True, exist_ok=True)
    assert await journal.get_operations(session.session_id) == []


async def test_mkdir_errors(journal: Journal, root: Path) -> None:
    """An existing path, a file with exist_ok, or a missing parent raise and journal nothing."""
    before = snapshot(root)
    async with journal.start_session() as session:
        with pytest.raises(FileAlreadyExistsError):
            await session.fs.mkdir(root / "d")
        with pytest.raises(FileExistsError):
            await session.fs.mkdir(root / "a.txt", exist_ok=True)
        with pytest.raises(FileNotFoundError):
            await session.fs.mkdir(root / "no" / "such")
    assert await journal.get_operations(session.session_id) == []
    assert snapshot(root) == before


# -- rmtree -----------------------------------------------------------------------------


async def test_rmtree_is_undone_whole(journal: Journal, root: Path) -> None:
    """A removed tree comes back exactly: names, bytes, bits, symlinks."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.rmtree(root / "d")
    op = await only_op(journal, session.session_id)
    assert (op.op_type, op.state, op.payload["committed"]) == (
        "fs.rmtree",
        OperationState.DONE,
        True,
    )
    assert not (root / "d").exists()
    await undo_restores(journal, session.session_id, root, before)


async def test_rmtree_of_a_file_or_missing_path_is_refused(journal: Journal, root: Path) -> None:
    """rmtree() on a file is NotADirectoryError, on nothing FileNotFoundError."""
    before = snapshot(root)
    async with journal.start_session() as session:
        with pytest.raises(NotADirectoryError, match="delete"):
            await session.fs.rmtree(root / "a.txt")
        with pytest.raises(FileNotFoundError):
            await session.fs.rmtree(root / "ghost")
    assert await journal.get_operations(session.session_id) == []
    assert snapshot(root) == before


# -- sessions ---------------------------------------------------------------------------


async def test_many_operations_are_undone_newest_first(journal: Journal, root: Path) -> None:
    """A chain of dependent operations in one session is undone back to the start."""
    before = snapshot(root)
    async with journal.start_session() as session:
        await session.fs.mkdir(root / "out" / "sub", parents=True)
        await session.fs.copy(root / "d", root / "out" / "sub" / "d")
        await session.fs.move(root / "a.txt", root / "out" / "a.txt")
        await session.fs.write_text(root / "out" / "a.txt", "rewritten")
        await session.fs.delete(root / "b.bin")
        await session.fs.rmtree(root / "d")
        await session.fs.move(root / "out" / "sub" / "d", root / "d")
    assert len(await journal.get_operations(session.session_id)) == 7
    await undo_restores(journal, session.session_id, root, before)


async def test_fs_after_the_session_ended_is_refused(journal: Journal, root: Path) -> None:
    """Using session.fs after the block raises SessionStateError and writes nothing."""
    async with journal.start_session() as session:
        pass
    with pytest.raises(SessionStateError, match="has ended"):
        await session.fs.write_bytes(root / "late.txt", b"late")
    with pytest.raises(SessionStateError):
        await session.fs.delete(root / "a.txt")
    assert not (root / "late.txt").exists()
    assert (root / "a.txt").exists()
    assert await journal.get_operations(session.session_id) == []


async def test_undo_on_error_rolls_back_fs_operations(journal: Journal, root: Path) -> None:
    """A session with undo_on_error restores the tree when its block raises."""
    before = snapshot(root)
    with pytest.raises(RuntimeError, match="boom"):
        async with journal.start_session(undo_on_error=True) as session:
            await session.fs.write_bytes(root / "a.txt", b"half")
            await session.fs.rmtree(root / "d")
            raise RuntimeError("boom")
    assert snapshot(root) == before
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert record.status is SessionStatus.ROLLED_BACK


# -- images on another filesystem -------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_images_on_another_filesystem_still_restore_everything(
    root: Path, shm_dir: Path, tmp_path: Path, kind: str
) -> None:
    """With the image area on tmpfs, images are copies, and undo still restores the tree."""
    storage = InMemoryStorage() if kind == "memory" else SQLiteStorage(tmp_path / "j.db")
    (root / "t").mkdir()
    make_file(root / "t" / "t.txt", b"t", 0o600)
    before = snapshot(root)
    async with Journal(storage, images_dir=shm_dir / "images") as journal:
        assert journal.images_dir == shm_dir / "images"
        async with journal.start_session() as session:
            await session.fs.write_bytes(root / "a.txt", b"overwritten", permissions=0o600)
            await session.fs.delete(root / "d" / "link")
            await session.fs.move(root / "b.bin", root / "d" / "x.txt", overwrite=True)
            await session.fs.copy(root / "d" / "e", root / "t", overwrite=True)
            await session.fs.rmtree(root / "d")
            await session.fs.write_bytes(root / "new.txt", b"n")
        kept = images(journal, session.session_id)
        assert len(kept) == 5
        await undo_restores(journal, session.session_id, root, before)


async def test_open_journal_accepts_an_images_dir(
    root: Path, shm_dir: Path, tmp_path: Path
) -> None:
    """open_journal(..., images_dir=) keeps the images there, and undo restores."""
    before = snapshot(root)
    async with open_journal(tmp_path / "j.db", images_dir=shm_dir) as journal:
        async with journal.start_session() as session:
            await session.fs.delete(root / "a.txt")
        assert len(os.listdir(shm_dir / session.session_id)) == 1
        await undo_restores(journal, session.session_id, root, before)
