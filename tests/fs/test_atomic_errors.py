"""Bad input and failing disks: every atomic write error is clear and changes nothing.

"Nothing" means: the target keeps its old content (or stays absent) and no temp is
left. The one exception is :class:`DurabilityError`, raised after the rename: the new
content is in place then.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from retract import (
    CrossDeviceError,
    DurabilityError,
    FileOperationError,
    RetractError,
    atomic_folder,
    atomic_write,
    atomic_write_text,
)
from retract.fs import _durable
from tests.fs._helpers import is_root, names, tree

SHM = Path("/dev/shm")


# -- where the target is -----------------------------------------------------------------


async def test_missing_directory_raises_file_not_found(tmp_path: Path) -> None:
    """A target in a directory that does not exist raises FileNotFoundError saying so."""
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist") as caught:
        await atomic_write_text(missing / "t.txt", "x")
    assert str(missing) in str(caught.value)
    assert names(tmp_path) == []


async def test_missing_directory_of_a_folder_raises_file_not_found(tmp_path: Path) -> None:
    """atomic_folder in a directory that does not exist raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError, match="does not exist"):
        async with atomic_folder(tmp_path / "nope" / "out"):
            pass
    assert names(tmp_path) == []


async def test_missing_temp_dir_raises_file_not_found(tmp_path: Path) -> None:
    """A temp_dir that does not exist raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match="does not exist") as caught:
        await atomic_write_text(tmp_path / "t.txt", "x", temp_dir=tmp_path / "nope")
    assert "nope" in str(caught.value)
    assert names(tmp_path) == []


async def test_parent_that_is_a_file_raises_not_a_directory(tmp_path: Path) -> None:
    """A target "below" a regular file raises NotADirectoryError."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        await atomic_write_text(tmp_path / "file" / "t.txt", "x")
    assert names(tmp_path) == ["file"]


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory in which no file can be created, even by root.

    Root ignores permission bits, so as root the directory is made immutable
    (``chattr +i``, refused with EPERM) instead of read-only.
    """
    directory = tmp_path / "ro"
    directory.mkdir()
    (directory / "t.txt").write_text("old")
    if not is_root():
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root (permissions are bypassed) and chattr is missing")
    done = subprocess.run([chattr, "+i", str(directory)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"running as root and chattr +i failed: {done.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


async def test_read_only_directory_raises_permission_error(read_only_dir: Path) -> None:
    """A directory where no temp can be created raises PermissionError saying what to do."""
    target = read_only_dir / "t.txt"
    with pytest.raises(PermissionError, match="make the directory writable"):
        await atomic_write_text(target, "new", overwrite=True)
    assert target.read_text() == "old"
    assert names(read_only_dir) == ["t.txt"]


async def test_read_only_directory_refuses_a_folder(read_only_dir: Path) -> None:
    """atomic_folder in a directory where nothing can be created raises PermissionError."""
    with pytest.raises(PermissionError):
        async with atomic_folder(read_only_dir / "out"):
            pass
    assert names(read_only_dir) == ["t.txt"]


@pytest.mark.parametrize("overwrite", [False, True])
async def test_target_that_is_a_directory_raises_is_a_directory(
    tmp_path: Path, overwrite: bool
) -> None:
    """A directory at the target raises IsADirectoryError (either way); it is left alone."""
    target = tmp_path / "d"
    target.mkdir()
    (target / "inside").write_text("x")
    with pytest.raises(IsADirectoryError, match="atomic_folder"):
        await atomic_write_text(target, "new", overwrite=overwrite)
    assert tree(target) == {"inside": b"x"}
    assert names(tmp_path) == ["d"]


async def test_root_path_raises_is_a_directory() -> None:
    """A path that names no file ("/") raises IsADirectoryError before touching anything."""
    with pytest.raises(IsADirectoryError, match="names no file"):
        await atomic_write_text("/", "x", overwrite=True)


async def test_temp_dir_on_another_filesystem_raises_cross_device(tmp_path: Path) -> None:
    """A temp_dir on another filesystem raises CrossDeviceError before writing anything."""
    if not SHM.is_dir() or os.stat(SHM).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is missing or on the same filesystem as the test directory")
    target = tmp_path / "t.txt"
    target.write_text("old")
    shm_before = set(os.listdir(SHM))
    with pytest.raises(CrossDeviceError) as caught:
        async with atomic_write(target, overwrite=True, temp_dir=SHM) as f:
            await f.write("new")
    error = caught.value
    assert isinstance(error, OSError)
    assert isinstance(error, RetractError)
    assert error.errno == errno.EXDEV
    assert "another filesystem" in str(error)
    assert target.read_text() == "old"
    assert names(tmp_path) == ["t.txt"]
    assert set(os.listdir(SHM)) <= shm_before


async def test_folder_temp_dir_on_another_filesystem_raises_cross_device(
    tmp_path: Path,
) -> None:
    """atomic_folder with a temp_dir on another filesystem raises CrossDeviceError."""
    if not SHM.is_dir() or os.stat(SHM).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is missing or on the same filesystem as the test directory")
    shm_before = set(os.listdir(SHM))
    with pytest.raises(CrossDeviceError):
        async with atomic_folder(tmp_path / "out", temp_dir=SHM):
            pass
    assert names(tmp_path) == []
    assert set(os.listdir(SHM)) <= shm_before


async def test_rename_across_filesystems_raises_cross_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename refused with EXDEV raises CrossDeviceError and removes the temp."""
    target = tmp_path / "t.txt"
    target.write_text("old")

    def exdev(src: str, dst: str) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src, None, dst)

    monkeypatch.setattr(os, "replace", exdev)
    with pytest.raises(CrossDeviceError, match="different filesystems"):
        await atomic_write_text(target, "new", overwrite=True)
    assert target.read_text() == "old"
    assert names(tmp_path) == ["t.txt"]


@pytest.mark.parametrize("length", [256, 1000])
async def test_name_too_long_raises_enametoolong(tmp_path: Path, length: int) -> None:
    """A file name longer than the filesystem allows raises OSError ENAMETOOLONG, clearly."""
    target = tmp_path / ("n" * length)
    with pytest.raises(OSError, match="file name too long") as caught:
        await atomic_write_text(target, "x")
    assert caught.value.errno == errno.ENAMETOOLONG
    assert "shorten the name" in str(caught.value)
    assert names(tmp_path) == []


async def test_folder_name_too_long_raises_enametoolong(tmp_path: Path) -> None:
    """atomic_folder with a too long name raises OSError ENAMETOOLONG."""
    with pytest.raises(OSError, match="file name too long") as caught:
        async with atomic_folder(tmp_path / ("n" * 300)):
            pass
    assert caught.value.errno == errno.ENAMETOOLONG
    assert names(tmp_path) == []


async def test_longest_allowed_name_works(tmp_path: Path) -> None:
    """A 255-byte name works: the temp name shortens it and stays within the limit."""
    target = tmp_path / ("\u00e9" * 127 + "x")  # 255 bytes, split mid-character at 180
    assert len(os.fsencode(target.name)) == 255
    async with atomic_write(target, "w") as f:
        await f.write("x")
        await f.flush()
    assert target.read_text() == "x"
    assert names(tmp_path) == [target.name]


# -- bad arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["r", "a", "x", "w+", "wb+", "b", "", "W"])
def test_bad_mode_raises_value_error(tmp_path: Path, mode: str) -> None:
    """A mode other than "w", "wt" and "wb" raises ValueError at the call."""
    with pytest.raises(ValueError, match="mode must be"):
        atomic_write(tmp_path / "t.txt", mode)  # type: ignore[arg-type]  # what is tested


@pytest.mark.parametrize("mode", ["w", "wt", "wb"])
async def test_good_modes_are_accepted(tmp_path: Path, mode: str) -> None:
    """Modes "w" and "wt" write text, "wb" bytes."""
    async with atomic_write(tmp_path / "t", mode) as f:  # type: ignore[arg-type]
        await f.write(b"x" if mode == "wb" else "x")
    assert (tmp_path / "t").read_bytes() == b"x"


@pytest.mark.parametrize("permissions", [-1, 0o10000, "644", 420.0, True])
def test_bad_permissions_raise_value_error(tmp_path: Path, permissions: object) -> None:
    """permissions= must be an int from 0 to 0o7777."""
    with pytest.raises(ValueError, match="permissions must be"):
        atomic_write(tmp_path / "t.txt", permissions=permissions)  # type: ignore[arg-type]


@pytest.mark.parametrize("newline", ["\t", "x", "\n\n", " "])
def test_bad_newline_raises_value_error(tmp_path: Path, newline: str) -> None:
    """newline= takes the values open() takes."""
    with pytest.raises(ValueError, match="illegal newline"):
        atomic_write(tmp_path / "t.txt", newline=newline)


def test_unknown_encoding_raises_lookup_error_at_the_call(tmp_path: Path) -> None:
    """An unknown encoding raises LookupError at the call, not at the first write."""
    with pytest.raises(LookupError, match="no-such-codec"):
        atomic_write(tmp_path / "t.txt", encoding="no-such-codec")
    assert names(tmp_path) == []


async def test_unknown_encoding_of_atomic_write_text(tmp_path: Path) -> None:
    """atomic_write_text with an unknown encoding raises LookupError and writes nothing."""
    with pytest.raises(LookupError):
        await atomic_write_text(tmp_path / "t.txt", "x", encoding="no-such-codec")
    assert names(tmp_path) == []


# -- failing syncs -----------------------------------------------------------------------


def failing_dir_sync(monkeypatch: pytest.MonkeyPatch, directory: Path) -> list[str]:
    """Make fsyncs of ``directory`` fail with EIO; return every directory fsync asked for."""
    calls: list[str] = []
    real = _durable.fsync_dir

    def fsync_dir(path: str) -> None:
        calls.append(path)
        if path == str(directory):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(path)

    monkeypatch.setattr(_durable, "fsync_dir", fsync_dir)
    return calls


async def test_failed_directory_sync_raises_durability_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed directory fsync after the rename raises DurabilityError; new content is in."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    calls = failing_dir_sync(monkeypatch, tmp_path)
    with pytest.raises(DurabilityError, match="holds the new content") as caught:
        await atomic_write_text(target, "new", overwrite=True)
    error = caught.value
    assert isinstance(error, FileOperationError)
    assert isinstance(error, RetractError)
    assert error.errno == errno.EIO
    assert isinstance(error.__cause__, OSError)
    assert target.read_text() == "new"
    assert names(tmp_path) == ["t.txt"]
    assert calls == [str(tmp_path)]  # never retried


async def test_failed_parent_sync_of_a_folder_raises_durability_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renames: str
) -> None:
    """A failed parent fsync after the swap raises DurabilityError; the old tree is gone."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    calls = failing_dir_sync(monkeypatch, tmp_path)
    with pytest.raises(DurabilityError, match="holds the new content"):
        async with atomic_folder(target, overwrite=True) as tmp:
            (tmp / "new").write_text("new")
    assert tree(target) == {"new": b"new"}
    assert names(tmp_path) == ["out"]
    assert calls.count(str(tmp_path)) == 1


@pytest.fixture
def failing_fsync(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every os.fsync fail with EIO; return the descriptors it was called with."""
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


async def test_failed_file_sync_raises_and_is_not_retried(
    tmp_path: Path, failing_fsync: list[int]
) -> None:
    """A failed fsync of the temp raises OSError once, removes the temp, keeps the old file."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(OSError, match="Input/output error") as caught:
        await atomic_write_text(target, "new", overwrite=True)
    assert not isinstance(caught.value, DurabilityError)
    assert caught.value.errno == errno.EIO
    assert len(failing_fsync) == 1
    assert target.read_text() == "old"
    assert names(tmp_path) == ["t.txt"]


async def test_failed_file_sync_after_a_spill_removes_the_temp(
    tmp_path: Path, failing_fsync: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temp of a spilled write goes too when its fsync fails."""
    monkeypatch.setattr("retract.fs._atomic.SPILL_BYTES", 16)
    target = tmp_path / "t.txt"
    with pytest.raises(OSError, match="Input/output error"):
        async with atomic_write(target) as f:
            await f.write("x" * 100)
    assert len(failing_fsync) == 1
    assert names(tmp_path) == []


async def test_failed_file_sync_in_a_folder_removes_the_temp_folder(
    tmp_path: Path, failing_fsync: list[int]
) -> None:
    """A failed fsync while syncing the new tree raises; the temp folder goes, old tree stays."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(OSError, match="Input/output error"):
        async with atomic_folder(target, overwrite=True) as tmp:
            (tmp / "new").write_text("new")
    assert len(failing_fsync) == 1
    assert tree(target) == {"old": b"old"}
    assert names(tmp_path) == ["out"]


async def test_failed_close_raises_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error from closing the temp (late write-back error) raises; the old file stays."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    real_close = os.close
    failed: list[int] = []

    def close(fd: int) -> None:
        real_close(fd)
        # the worker's first close is the temp's, right after its fsync
        if not failed and threading.current_thread() is not threading.main_thread():
            failed.append(fd)
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "close", close)
    with pytest.raises(OSError, match="Input/output error"):
        await atomic_write_text(target, "new", overwrite=True)
    monkeypatch.undo()
    assert len(failed) == 1
    assert target.read_text() == "old"
    assert names(tmp_path) == ["t.txt"]
