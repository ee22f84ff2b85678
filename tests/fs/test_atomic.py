"""What ``atomic_write``, ``atomic_write_bytes/text`` and ``atomic_folder`` do.

Bad input and disk failures are in ``test_atomic_errors.py``; cancellation is in
``test_atomic_cancellation.py``.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import retract
from retract import (
    FileAlreadyExistsError,
    FileOperationError,
    RetractError,
    atomic_folder,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
)
from retract.fs import _atomic, _durable, is_temp_name
from tests.fs._helpers import is_root, names, refuse_like_non_root, temps, tree


class Boom(Exception):
    """Raised inside a block on purpose."""


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ``os.fsync`` call (file or directory) is recorded, then done."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


@pytest.fixture
def small_spill(monkeypatch: pytest.MonkeyPatch) -> int:
    """Spill buffered data to the temp file past 64 bytes instead of 4 MiB."""
    monkeypatch.setattr(_atomic, "SPILL_BYTES", 64)
    return 64


# -- files: the basics -------------------------------------------------------------------


async def test_new_file_is_written(tmp_path: Path) -> None:
    """A block that ends normally creates the target with everything written."""
    target = tmp_path / "new.txt"
    async with atomic_write(target) as f:
        await f.write("hello ")
        await f.write("world\n")
    assert target.read_text() == "hello world\n"
    assert names(tmp_path) == ["new.txt"]


async def test_nothing_is_visible_before_the_block_ends(tmp_path: Path) -> None:
    """Inside the block the target is unchanged and (below the spill size) no temp exists."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    async with atomic_write(target, overwrite=True) as f:
        await f.write("new")
        assert target.read_text() == "old"
        assert names(tmp_path) == ["t.txt"]
    assert target.read_text() == "new"


async def test_existing_target_is_refused_by_default(tmp_path: Path) -> None:
    """Without overwrite=True an existing target raises FileAlreadyExistsError, unchanged."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(FileAlreadyExistsError) as caught:
        async with atomic_write(target) as f:
            await f.write("new")
    error = caught.value
    assert isinstance(error, FileExistsError)
    assert isinstance(error, RetractError)
    assert isinstance(error, FileOperationError)
    assert error.filename == str(target)
    assert "overwrite=True" in str(error)
    assert target.read_text() == "old"
    assert names(tmp_path) == ["t.txt"]


async def test_target_created_during_the_block_is_not_clobbered(tmp_path: Path) -> None:
    """A target that appears while the block runs is refused at commit and left alone."""
    target = tmp_path / "t.txt"
    with pytest.raises(FileAlreadyExistsError):
        async with atomic_write(target) as f:
            await f.write("mine")
            target.write_text("someone else's")
    assert target.read_text() == "someone else's"
    assert names(tmp_path) == ["t.txt"]


async def test_overwrite_replaces_the_content(tmp_path: Path) -> None:
    """With overwrite=True the old content is replaced by the new."""
    target = tmp_path / "t.txt"
    target.write_text("old content that is longer")
    async with atomic_write(target, overwrite=True) as f:
        await f.write("new")
    assert target.read_text() == "new"
    assert names(tmp_path) == ["t.txt"]


async def test_overwrite_swaps_in_a_new_file(tmp_path: Path) -> None:
    """The old file is replaced, not rewritten in place: an open reader keeps the old bytes."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    with target.open() as reader:
        await atomic_write_text(target, "new", overwrite=True)
        assert reader.read() == "old"
    assert target.read_text() == "new"


async def test_atomic_write_bytes_writes_the_data(tmp_path: Path) -> None:
    """atomic_write_bytes writes its data in one call and refuses to clobber by default."""
    target = tmp_path / "b.bin"
    await atomic_write_bytes(target, b"\x00\x01\xff")
    assert target.read_bytes() == b"\x00\x01\xff"
    with pytest.raises(FileAlreadyExistsError):
        await atomic_write_bytes(target, b"other")
    await atomic_write_bytes(target, bytearray(b"other"), overwrite=True)
    assert target.read_bytes() == b"other"


async def test_atomic_write_text_writes_the_text(tmp_path: Path) -> None:
    """atomic_write_text encodes its text in one call and refuses to clobber by default."""
    target = tmp_path / "t.txt"
    await atomic_write_text(target, "caf\u00e9", encoding="latin-1")
    assert target.read_bytes() == b"caf\xe9"
    with pytest.raises(FileAlreadyExistsError):
        await atomic_write_text(target, "other")
    await atomic_write_text(target, "other", overwrite=True)
    assert target.read_text() == "other"


async def test_path_may_be_a_string(tmp_path: Path) -> None:
    """A str path works like a Path, and the file object reports it as its name."""
    target = str(tmp_path / "s.txt")
    async with atomic_write(target) as f:
        assert f.name == target
        await f.write("x")
    assert Path(target).read_text() == "x"


async def test_context_can_be_entered_only_once(tmp_path: Path) -> None:
    """Entering the same atomic_write() object twice raises RuntimeError."""
    writer = atomic_write(tmp_path / "t.txt")
    async with writer as f:
        await f.write("x")
    with pytest.raises(RuntimeError, match="only once"):
        async with writer:
            pass


# -- text and bytes ----------------------------------------------------------------------


async def test_text_is_utf8_by_default(tmp_path: Path) -> None:
    """Mode "w" encodes with UTF-8 unless told otherwise."""
    target = tmp_path / "t.txt"
    await atomic_write_text(target, "\u00e9t\u00e9 \u2603")
    assert target.read_bytes() == "\u00e9t\u00e9 \u2603".encode()


async def test_text_encoding_is_incremental(tmp_path: Path) -> None:
    """A stateful encoding (UTF-16) writes one byte-order mark over several writes."""
    target = tmp_path / "t.txt"
    async with atomic_write(target, "w", encoding="utf-16") as f:
        await f.write("ab")
        await f.write("cd")
    assert target.read_bytes() == "abcd".encode("utf-16")
    assert target.read_text(encoding="utf-16") == "abcd"


async def test_text_encoding_errors_handler_is_used(tmp_path: Path) -> None:
    """errors="replace" turns characters the encoding lacks into "?"."""
    target = tmp_path / "t.txt"
    await atomic_write_text(target, "a\u2603b", encoding="ascii", errors="replace")
    assert target.read_bytes() == b"a?b"


async def test_unencodable_text_raises_and_writes_nothing(tmp_path: Path) -> None:
    """A character the encoding lacks raises UnicodeEncodeError; the old file stays."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        async with atomic_write(target, encoding="ascii", overwrite=True) as f:
            await f.write("\u2603")
    assert target.read_text() == "old"
    assert names(tmp_path) == ["t.txt"]


@pytest.mark.parametrize(
    ("newline", "expected"),
    [
        (None, f"a{os.linesep}b{os.linesep}".encode()),
        ("", b"a\nb\n"),
        ("\n", b"a\nb\n"),
        ("\r\n", b"a\r\nb\r\n"),
        ("\r", b"a\rb\r"),
    ],
)
async def test_newline_is_translated_like_open(
    tmp_path: Path, newline: str | None, expected: bytes
) -> None:
    """newline= translates the line ends written the way open() does in text mode."""
    target = tmp_path / "t.txt"
    async with atomic_write(target, "w", newline=newline) as f:
        await f.write("a\nb\n")
    assert target.read_bytes() == expected


@pytest.mark.parametrize(
    "data",
    [
        b"payload",
        bytearray(b"payload"),
        memoryview(b"__payload__")[2:-2],
        array.array("b", b"payload"),
    ],
    ids=["bytes", "bytearray", "memoryview", "array"],
)
async def test_bytes_mode_accepts_bytes_like_objects(tmp_path: Path, data: object) -> None:
    """Mode "wb" takes bytes, bytearray, memoryview (slices too) and other buffers."""
    target = tmp_path / "b.bin"
    async with atomic_write(target, "wb") as f:
        await f.write(data)  # type: ignore[arg-type]  # any buffer works, like files
    assert target.read_bytes() == b"payload"


async def test_write_returns_bytes_for_buffers_with_wide_items(tmp_path: Path) -> None:
    """write() returns the byte count of a buffer whose items are wider than a byte."""
    data = array.array("i", [1, 2, 3])
    async with atomic_write(tmp_path / "b.bin", "wb") as f:
        written = await f.write(memoryview(data))
    assert written == data.itemsize * 3
    assert (tmp_path / "b.bin").read_bytes() == data.tobytes()


async def test_write_returns_characters_in_text_mode(tmp_path: Path) -> None:
    """write() in text mode returns the number of characters, not of encoded bytes."""
    async with atomic_write(tmp_path / "t.txt") as f:
        assert await f.write("\u00e9\u2603") == 2


async def test_text_mode_refuses_bytes(tmp_path: Path) -> None:
    """Writing bytes in text mode raises TypeError, as open() does."""
    with pytest.raises(TypeError, match="must be str"):
        async with atomic_write(tmp_path / "t.txt", "w") as f:
            await f.write(b"bytes")
    assert names(tmp_path) == []


async def test_bytes_mode_refuses_str(tmp_path: Path) -> None:
    """Writing str in bytes mode raises TypeError, as open() does."""
    with pytest.raises(TypeError, match="bytes-like"):
        async with atomic_write(tmp_path / "b.bin", "wb") as f:
            await f.write("text")
    assert names(tmp_path) == []


async def test_writelines_writes_every_item_without_separators(tmp_path: Path) -> None:
    """writelines() writes each item in order and adds nothing between them."""
    target = tmp_path / "t.txt"
    async with atomic_write(target, "w", newline="") as f:
        await f.writelines(["a\n", "b", "c\n"])
    assert target.read_text() == "a\nbc\n"


async def test_writelines_in_bytes_mode(tmp_path: Path) -> None:
    """writelines() takes bytes items in mode "wb"."""
    target = tmp_path / "b.bin"
    async with atomic_write(target, "wb") as f:
        await f.writelines(iter([b"ab", b"", b"cd"]))
    assert target.read_bytes() == b"abcd"


async def test_writes_after_the_block_raise_value_error(tmp_path: Path) -> None:
    """write(), writelines() and flush() on the file after its block raise ValueError."""
    async with atomic_write(tmp_path / "t.txt") as f:
        await f.write("x")
    assert f.closed
    with pytest.raises(ValueError, match="closed file"):
        await f.write("more")
    with pytest.raises(ValueError, match="closed file"):
        await f.writelines(["more"])
    with pytest.raises(ValueError, match="closed file"):
        await f.flush()
    assert (tmp_path / "t.txt").read_text() == "x"


async def test_writes_after_a_failed_block_raise_value_error(tmp_path: Path) -> None:
    """The file of a block that raised is closed too."""
    with pytest.raises(Boom):
        async with atomic_write(tmp_path / "t.txt") as f:
            raise Boom
    with pytest.raises(ValueError, match="closed file"):
        await f.write("late")
    assert names(tmp_path) == []


# -- a block that raises -----------------------------------------------------------------


async def test_block_raising_keeps_the_old_content(tmp_path: Path) -> None:
    """An error in the block propagates unchanged; the target keeps its old content."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    error = Boom("in the block")
    with pytest.raises(Boom) as caught:
        async with atomic_write(target, overwrite=True) as f:
            await f.write("new")
            raise error
    assert caught.value is error
    assert target.read_text() == "old"
    assert names(tmp_path) == ["t.txt"]


async def test_block_raising_creates_no_file(tmp_path: Path) -> None:
    """An error in the block of a new file leaves no file and no temp."""
    with pytest.raises(Boom):
        async with atomic_write(tmp_path / "t.txt") as f:
            await f.write("new")
            raise Boom
    assert names(tmp_path) == []


# -- spilling large writes ---------------------------------------------------------------


async def test_spill_default_is_4_mib() -> None:
    """SPILL_BYTES is the documented 4 MiB."""
    assert retract.fs.SPILL_BYTES == 4 * 1024 * 1024


async def test_spill_moves_data_to_a_temp_next_to_the_target(
    tmp_path: Path, small_spill: int
) -> None:
    """Past SPILL_BYTES the data goes to a hidden temp; the target changes only at commit."""
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")
    chunks = [bytes([i]) * 40 for i in range(10)]
    async with atomic_write(target, "wb", overwrite=True) as f:
        for chunk in chunks:
            await f.write(chunk)
        assert target.read_bytes() == b"old"
        assert len(temps(tmp_path)) == 1
        assert temps(tmp_path)[0].startswith(".t.bin.retract-")
    assert target.read_bytes() == b"".join(chunks)
    assert names(tmp_path) == ["t.bin"]


async def test_spilled_text_keeps_encoder_state(tmp_path: Path, small_spill: int) -> None:
    """Text spilled in several pieces encodes like one write (one UTF-16 BOM)."""
    target = tmp_path / "t.txt"
    text = "".join(chr(0x41 + i % 26) for i in range(500))
    async with atomic_write(target, "w", encoding="utf-16") as f:
        for i in range(0, len(text), 30):
            await f.write(text[i : i + 30])
    assert target.read_bytes() == text.encode("utf-16")


async def test_flush_spills_at_once(tmp_path: Path) -> None:
    """flush() moves the buffered data to the temp file before the spill size is reached."""
    target = tmp_path / "t.txt"
    async with atomic_write(target) as f:
        await f.write("abc")
        await f.flush()
        await f.flush()  # nothing buffered: nothing to do
        assert len(temps(tmp_path)) == 1
        await f.write("def")
    assert target.read_text() == "abcdef"
    assert names(tmp_path) == ["t.txt"]


async def test_spill_then_error_removes_the_temp(tmp_path: Path, small_spill: int) -> None:
    """A block that raises after a spill leaves the old content and removes the temp."""
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")
    with pytest.raises(Boom):
        async with atomic_write(target, "wb", overwrite=True) as f:
            await f.write(b"x" * 200)
            assert len(temps(tmp_path)) == 1
            raise Boom
    assert target.read_bytes() == b"old"
    assert names(tmp_path) == ["t.bin"]


async def test_spill_then_refused_clobber_removes_the_temp(
    tmp_path: Path, small_spill: int
) -> None:
    """A spilled write refused by no-clobber at commit removes its temp."""
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileAlreadyExistsError):
        async with atomic_write(target, "wb") as f:
            await f.write(b"x" * 200)
    assert target.read_bytes() == b"old"
    assert names(tmp_path) == ["t.bin"]


async def test_failed_spill_cannot_be_committed(
    tmp_path: Path, small_spill: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a spill failed, later writes and the commit raise: the lost data is not hidden."""
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")

    def full_disk(*args: object) -> _durable.TempFile:
        raise OSError(28, "No space left on device")

    with pytest.raises(ValueError, match="earlier write"):
        async with atomic_write(target, "wb", overwrite=True) as f:
            monkeypatch.setattr(_atomic, "write_temp", full_disk)
            with pytest.raises(OSError, match="No space"):
                await f.write(b"x" * 100)
            monkeypatch.undo()
            with pytest.raises(ValueError, match="earlier write"):
                await f.write(b"y")
            # the caller swallowed the errors and ends the block normally
    assert target.read_bytes() == b"old"
    assert names(tmp_path) == ["t.bin"]


# -- durability --------------------------------------------------------------------------


async def test_durable_write_syncs_the_file_and_its_directory(
    tmp_path: Path, fsync_calls: list[int]
) -> None:
    """A durable write (the default) fsyncs twice: the temp file, then the directory."""
    await atomic_write_text(tmp_path / "t.txt", "x")
    assert len(fsync_calls) == 2


async def test_durable_false_writes_without_fsync(tmp_path: Path, fsync_calls: list[int]) -> None:
    """durable=False still writes atomically, without any fsync."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    async with atomic_write(target, overwrite=True, durable=False) as f:
        await f.write("new")
    assert target.read_text() == "new"
    assert fsync_calls == []
    assert names(tmp_path) == ["t.txt"]


# -- permissions and owner ---------------------------------------------------------------


async def test_overwrite_keeps_permission_bits(
    tmp_path: Path, set_umask: Callable[[int], None]
) -> None:
    """An overwritten file keeps its mode bits, whatever the umask."""
    set_umask(0o022)
    target = tmp_path / "t.txt"
    target.write_text("old")
    target.chmod(0o640)
    await atomic_write_text(target, "new", overwrite=True)
    assert mode_of(target) == 0o640


@pytest.mark.skipif(not is_root(), reason="only root can give a file to another owner")
async def test_overwrite_keeps_setuid_bits_of_a_file_owned_by_another_user(
    tmp_path: Path,
) -> None:
    """Setuid and setgid bits survive the owner being copied (chown would clear them)."""
    target = tmp_path / "tool"
    target.write_text("old")
    os.chown(target, 1234, 5678)
    target.chmod(0o6755)
    await atomic_write_text(target, "new", overwrite=True)
    assert mode_of(target) == 0o6755
    assert (target.stat().st_uid, target.stat().st_gid) == (1234, 5678)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
async def test_new_file_honours_the_umask(
    tmp_path: Path, set_umask: Callable[[int], None], umask: int
) -> None:
    """A new file gets 0o666 less the umask, like open()."""
    set_umask(umask)
    target = tmp_path / "t.txt"
    await atomic_write_text(target, "x")
    assert mode_of(target) == 0o666 & ~umask


async def test_explicit_permissions_on_a_new_file(
    tmp_path: Path, set_umask: Callable[[int], None]
) -> None:
    """permissions= sets the new file's bits exactly, the umask notwithstanding."""
    set_umask(0o077)
    target = tmp_path / "t.txt"
    await atomic_write_text(target, "x", permissions=0o604)
    assert mode_of(target) == 0o604


async def test_explicit_permissions_on_overwrite(tmp_path: Path) -> None:
    """permissions= wins over the old file's bits on overwrite."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    target.chmod(0o644)
    await atomic_write_text(target, "new", overwrite=True, permissions=0o600)
    assert mode_of(target) == 0o600


async def test_overwrite_keeps_the_owner(tmp_path: Path) -> None:
    """An overwritten file keeps its uid and gid (root: even another user's)."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    if is_root():
        os.chown(target, 4321, 8765)
    before = target.stat()
    await atomic_write_text(target, "new", overwrite=True)
    after = target.stat()
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_ino != before.st_ino


@pytest.mark.skipif(not is_root(), reason="only root can give the old file another owner")
async def test_overwrite_keeps_the_group_when_the_owner_cannot_be_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the owner may not be given away (non-root), the old file's group is kept."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    os.chown(target, 4321, 8765)
    real_fchown = os.fchown

    def fchown(fd: int, uid: int, gid: int) -> None:
        if uid != -1:  # as for non-root: only the group of one's own file may change
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        real_fchown(fd, uid, gid)

    monkeypatch.setattr(os, "fchown", fchown)
    await atomic_write_text(target, "new", overwrite=True)
    assert (target.stat().st_uid, target.stat().st_gid) == (os.geteuid(), 8765)
    assert target.read_text() == "new"


@pytest.mark.skipif(not is_root(), reason="only root can give the old file another owner")
async def test_overwrite_goes_on_when_neither_owner_nor_group_can_be_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If even the group may not be kept, the write still succeeds with our own ownership."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    os.chown(target, 4321, 8765)

    def fchown(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "fchown", fchown)
    await atomic_write_text(target, "new", overwrite=True)
    assert (target.stat().st_uid, target.stat().st_gid) == (os.geteuid(), os.getegid())
    assert target.read_text() == "new"


# -- symlinks and temp_dir ---------------------------------------------------------------


async def test_symlink_target_is_replaced_and_the_link_kept(tmp_path: Path) -> None:
    """Writing through a symlink replaces the file it points to; the link stays a link."""
    (tmp_path / "data").mkdir()
    (tmp_path / "links").mkdir()
    real = tmp_path / "data" / "config.real"
    real.write_text("old")
    link = tmp_path / "links" / "config"
    link.symlink_to(real)
    await atomic_write_text(link, "new", overwrite=True)
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert real.read_text() == "new"
    assert names(tmp_path / "data") == ["config.real"]
    assert names(tmp_path / "links") == ["config"]


async def test_relative_symlink_target_is_replaced(tmp_path: Path) -> None:
    """A relative link is followed from its own directory."""
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(Path("data") / "real.txt")
    await atomic_write_text(link, "new", overwrite=True)
    assert os.readlink(link) == os.path.join("data", "real.txt")
    assert real.read_text() == "new"


async def test_symlink_to_existing_file_is_not_clobbered(tmp_path: Path) -> None:
    """No-clobber looks at the file a link points to."""
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    with pytest.raises(FileAlreadyExistsError):
        await atomic_write_text(link, "new")
    assert real.read_text() == "old"
    assert link.is_symlink()


async def test_temp_dir_on_the_same_filesystem_holds_the_temp(
    tmp_path: Path, small_spill: int
) -> None:
    """With temp_dir= the temp goes there (same filesystem) and is renamed onto the target."""
    work, scratch = tmp_path / "work", tmp_path / "scratch"
    work.mkdir()
    scratch.mkdir()
    target = work / "t.bin"
    async with atomic_write(target, "wb", temp_dir=scratch) as f:
        await f.write(b"z" * 100)
        assert names(work) == []
        assert len(temps(scratch)) == 1
    assert target.read_bytes() == b"z" * 100
    assert names(scratch) == []
    assert names(work) == ["t.bin"]


# -- folders -----------------------------------------------------------------------------


async def test_folder_new(tmp_path: Path) -> None:
    """A new folder appears with everything the block put in its temp."""
    target = tmp_path / "out"
    async with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
        assert not target.exists()
    assert tree(target) == {"a.txt": b"a", "sub": None, "sub/b.txt": b"b"}
    assert names(tmp_path) == ["out"]


async def test_folder_temp_is_a_hidden_sibling(tmp_path: Path) -> None:
    """The block gets an empty hidden temp folder next to the target, with a temp name."""
    async with atomic_folder(tmp_path / "out") as tmp:
        assert tmp.parent == tmp_path
        assert is_temp_name(tmp.name)
        assert tmp.name.startswith(".out.retract-")
        assert tmp.is_dir()
        assert list(tmp.iterdir()) == []


async def test_folder_keeps_symlinks_and_nested_folders(tmp_path: Path) -> None:
    """A durable commit of a tree with links and nested folders keeps them as they are."""
    target = tmp_path / "out"
    async with atomic_folder(target) as tmp:
        (tmp / "deep" / "er").mkdir(parents=True)
        (tmp / "deep" / "er" / "f").write_bytes(b"f")
        (tmp / "link").symlink_to("deep/er/f")
        (tmp / "dangling").symlink_to("nowhere")
    assert (target / "link").read_bytes() == b"f"
    assert os.readlink(target / "dangling") == "nowhere"


async def test_folder_path_with_trailing_slash(tmp_path: Path) -> None:
    """A target given as "out/" is the folder "out"."""
    async with atomic_folder(f"{tmp_path}/out/") as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "out" / "f").read_text() == "x"
    assert names(tmp_path) == ["out"]


async def test_folder_existing_target_is_refused_by_default(tmp_path: Path) -> None:
    """Without overwrite=True an existing folder is refused at entry; the block never runs."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("old")
    ran = False
    with pytest.raises(FileAlreadyExistsError) as caught:
        async with atomic_folder(target):
            ran = True
    assert isinstance(caught.value, FileExistsError)
    assert isinstance(caught.value, RetractError)
    assert not ran
    assert tree(target) == {"keep": b"old"}
    assert names(tmp_path) == ["out"]


async def test_folder_created_during_the_block_is_not_clobbered(
    tmp_path: Path, renames: str
) -> None:
    """A folder that appears during the block is refused at the swap; the temp goes."""
    target = tmp_path / "out"
    with pytest.raises(FileAlreadyExistsError):
        async with atomic_folder(target) as tmp:
            (tmp / "mine").write_text("mine")
            target.mkdir()
            (target / "theirs").write_text("theirs")
    assert tree(target) == {"theirs": b"theirs"}
    assert names(tmp_path) == ["out"]


async def test_folder_overwrite_swaps_and_removes_the_old_tree(
    tmp_path: Path, renames: str
) -> None:
    """overwrite=True exchanges the trees; the old one is deleted, no temp remains."""
    target = tmp_path / "out"
    (target / "old-sub").mkdir(parents=True)
    (target / "old-sub" / "x").write_text("old")
    (target / "shared").write_text("old")
    async with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "shared").write_text("new")
        (tmp / "fresh").write_text("new")
        assert tree(target)["shared"] == b"old"
    assert tree(target) == {"fresh": b"new", "shared": b"new"}
    assert names(tmp_path) == ["out"]


async def test_folder_overwrite_of_a_missing_target_creates_it(
    tmp_path: Path, renames: str
) -> None:
    """overwrite=True with no folder there yet simply creates it (atomik raised here)."""
    target = tmp_path / "out"
    async with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "f").write_text("x")
    assert tree(target) == {"f": b"x"}
    assert names(tmp_path) == ["out"]


async def test_folder_overwrite_keeps_the_old_folder_mode(
    tmp_path: Path, set_umask: Callable[[int], None], renames: str
) -> None:
    """A replaced folder keeps the old folder's permission bits."""
    set_umask(0o022)
    target = tmp_path / "out"
    target.mkdir()
    target.chmod(0o750)
    async with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "f").write_text("x")
    assert mode_of(target) == 0o750


@pytest.mark.skipif(not is_root(), reason="only root can give a folder to another owner")
async def test_folder_overwrite_keeps_the_old_folder_owner(tmp_path: Path) -> None:
    """A replaced folder keeps the old folder's owner and group (and its setgid bit)."""
    target = tmp_path / "out"
    target.mkdir()
    os.chown(target, 65534, 65534)
    target.chmod(0o2750)
    async with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "f").write_text("x")
    st = target.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert mode_of(target) == 0o2750


async def test_folder_mode_set_in_the_block_wins(tmp_path: Path) -> None:
    """Bits the block gave the temp folder are kept on overwrite."""
    target = tmp_path / "out"
    target.mkdir()
    target.chmod(0o755)
    async with atomic_folder(target, overwrite=True) as tmp:
        tmp.chmod(0o700)
    assert mode_of(target) == 0o700


@pytest.mark.parametrize("umask", [0o022, 0o027])
async def test_new_folder_honours_the_umask(
    tmp_path: Path, set_umask: Callable[[int], None], umask: int
) -> None:
    """A new folder gets 0o777 less the umask, like mkdir."""
    set_umask(umask)
    async with atomic_folder(tmp_path / "out"):
        pass
    assert mode_of(tmp_path / "out") == 0o777 & ~umask


async def test_folder_block_raising_removes_the_temp(tmp_path: Path) -> None:
    """An error in the block removes the temp folder and leaves the old folder alone."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("old")
    with pytest.raises(Boom):
        async with atomic_folder(target, overwrite=True) as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "f").write_text("new")
            raise Boom
    assert tree(target) == {"keep": b"old"}
    assert names(tmp_path) == ["out"]


async def test_folder_block_raising_removes_read_only_folders_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temp folder holding a read-only folder (0o555) is still removed whole."""
    refuse_like_non_root(monkeypatch)
    with pytest.raises(Boom):
        async with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "ro").mkdir()
            (tmp / "ro" / "f").write_text("new")
            (tmp / "ro").chmod(0o555)
            raise Boom
    assert names(tmp_path) == []


async def test_folder_overwrite_removes_an_old_tree_with_read_only_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swapped-out old tree goes even when a folder in it is read-only (0o555)."""
    target = tmp_path / "out"
    (target / "ro").mkdir(parents=True)
    (target / "ro" / "f").write_text("old")
    (target / "ro").chmod(0o555)
    refuse_like_non_root(monkeypatch)
    async with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "f").write_text("new")
    assert tree(target) == {"f": b"new"}
    assert names(tmp_path) == ["out"]


async def test_folder_block_raising_creates_nothing(tmp_path: Path) -> None:
    """An error in the block of a new folder leaves nothing behind."""
    with pytest.raises(Boom):
        async with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "f").write_text("new")
            raise Boom
    assert names(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
async def test_folder_target_that_is_a_file_raises_not_a_directory(
    tmp_path: Path, overwrite: bool
) -> None:
    """A file at the target raises NotADirectoryError (either way) and is left alone."""
    target = tmp_path / "out"
    target.write_text("a file")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        async with atomic_folder(target, overwrite=overwrite):
            pass
    assert target.read_text() == "a file"
    assert names(tmp_path) == ["out"]


async def test_folder_durable_false_commits_without_fsync(
    tmp_path: Path, fsync_calls: list[int]
) -> None:
    """durable=False swaps the folder in without any fsync."""
    target = tmp_path / "out"
    target.mkdir()
    async with atomic_folder(target, overwrite=True, durable=False) as tmp:
        (tmp / "f").write_text("x")
    assert tree(target) == {"f": b"x"}
    assert fsync_calls == []


async def test_folder_durable_commit_syncs_files_folders_and_parent(
    tmp_path: Path, fsync_calls: list[int]
) -> None:
    """A durable commit fsyncs every file and folder of the tree, then the parent."""
    async with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "a").write_text("a")
        (tmp / "sub" / "b").write_text("b")
    # files a and b, folders sub and the temp, then the parent
    assert len(fsync_calls) == 5


@contextlib.contextmanager
def freeing_blocked_fifos(fifos: list[Path], after: float) -> Iterator[threading.Event]:
    """If still running after ``after`` seconds, open the write end of each of ``fifos``.

    That frees a thread blocked opening one for reading (a commit that would otherwise
    hang for good); the event yielded tells whether it had to.
    """
    freed, stop = threading.Event(), threading.Event()

    def watch() -> None:
        if stop.wait(after):
            return
        freed.set()
        while not stop.wait(0.05):
            for fifo in fifos:
                with contextlib.suppress(OSError):  # no reader yet, or moved already
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield freed
    finally:
        stop.set()
        watcher.join()


async def test_folder_with_a_fifo_commits_without_blocking(tmp_path: Path) -> None:
    """A durable commit skips a FIFO in the tree instead of blocking on opening it."""
    target = tmp_path / "out"
    fifos: list[Path] = []
    with freeing_blocked_fifos(fifos, after=1.0) as freed:
        async with atomic_folder(target) as tmp:
            os.mkfifo(tmp / "pipe")
            fifos.append(tmp / "pipe")
            (tmp / "f").write_text("x")
    assert not freed.is_set(), "the commit blocked opening the FIFO"
    assert stat.S_ISFIFO((target / "pipe").lstat().st_mode)
    assert (target / "f").read_text() == "x"


async def test_folder_with_a_write_only_file_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file its owner may only write (0o200) is fsynced through a write-only descriptor."""
    real_open = os.open
    opened: list[int] = []

    def open_(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if os.path.basename(path) == "secret":
            opened.append(flags & os.O_ACCMODE)
            if flags & os.O_ACCMODE == os.O_RDONLY:  # as for non-root, with mode 0o200
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_)
    async with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "secret").write_text("s")
        (tmp / "secret").chmod(0o200)
    assert opened[-1] == os.O_WRONLY
    assert mode_of(tmp_path / "out" / "secret") == 0o200


async def test_folder_context_can_be_entered_only_once(tmp_path: Path) -> None:
    """Entering the same atomic_folder() object twice raises RuntimeError."""
    folder = atomic_folder(tmp_path / "out")
    async with folder:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        async with folder:
            pass
