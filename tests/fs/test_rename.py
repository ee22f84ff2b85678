"""``rename_noreplace`` and ``exchange``, through renameat2 and through the fallback.

The ``renames`` fixture runs each test twice: with the kernel's flags and with
``_use_native`` off (the path taken where the kernel or filesystem lacks them).
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

import retract.fs
from retract.fs import _rename, is_temp_name
from retract.fs._rename import exchange, has_native_flags, rename_noreplace
from tests.fs._helpers import names, tree


def make_tree(root: Path, label: str) -> None:
    """A non-empty folder with a nested folder, labelled so two trees differ."""
    (root / "sub").mkdir(parents=True)
    (root / "file").write_text(f"{label} file")
    (root / "sub" / "deep").write_text(f"{label} deep")


def tree_of(label: str) -> dict[str, bytes | None]:
    return {"file": f"{label} file".encode(), "sub": None, "sub/deep": f"{label} deep".encode()}


def test_native_flags_are_present_on_linux() -> None:
    """On Linux (glibc 2.28+ or the raw syscall) the native renames are used."""
    if os.uname().sysname != "Linux":
        pytest.skip("checks the Linux renameat2 path")
    assert has_native_flags()


def test_has_native_flags_follows_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """has_native_flags() reports False once the fallback is forced."""
    monkeypatch.setattr(_rename, "_use_native", False)
    assert not has_native_flags()


def test_has_native_renames_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """retract.fs.has_native_renames() is exported and tells which rename path runs."""
    assert "has_native_renames" in retract.fs.__all__
    assert retract.fs.has_native_renames() == has_native_flags()
    monkeypatch.setattr(_rename, "_use_native", False)
    assert not retract.fs.has_native_renames()


# -- rename_noreplace --------------------------------------------------------------------


def test_noreplace_moves_a_file(tmp_path: Path, renames: str) -> None:
    """A file is renamed to a free name; the source name is gone."""
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text("a")
    rename_noreplace(str(src), str(dst))
    assert names(tmp_path) == ["b"]
    assert dst.read_text() == "a"


def test_noreplace_refuses_an_existing_file(tmp_path: Path, renames: str) -> None:
    """Onto an existing file it raises FileExistsError; both files are unchanged."""
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text("a")
    dst.write_text("b")
    with pytest.raises(FileExistsError):
        rename_noreplace(str(src), str(dst))
    assert (src.read_text(), dst.read_text()) == ("a", "b")


def test_noreplace_keeps_the_inode(tmp_path: Path, renames: str) -> None:
    """The renamed file is the same file (a link, not a copy, in the fallback)."""
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text("a")
    inode = src.stat().st_ino
    rename_noreplace(str(src), str(dst))
    assert dst.stat().st_ino == inode
    assert dst.stat().st_nlink == 1


def test_noreplace_moves_a_symlink_itself(tmp_path: Path, renames: str) -> None:
    """A symlink is renamed as a link, not followed."""
    (tmp_path / "real").write_text("r")
    (tmp_path / "link").symlink_to("real")
    rename_noreplace(str(tmp_path / "link"), str(tmp_path / "moved"))
    assert os.readlink(tmp_path / "moved") == "real"
    assert names(tmp_path) == ["moved", "real"]


def test_noreplace_moves_a_non_empty_folder(tmp_path: Path, renames: str) -> None:
    """A non-empty folder is renamed to a free name with everything in it."""
    make_tree(tmp_path / "a", "a")
    rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert names(tmp_path) == ["b"]
    assert tree(tmp_path / "b") == tree_of("a")


@pytest.mark.parametrize("empty", [False, True])
def test_noreplace_refuses_an_existing_folder(tmp_path: Path, renames: str, empty: bool) -> None:
    """Onto an existing folder (even an empty one) it raises FileExistsError."""
    make_tree(tmp_path / "a", "a")
    if empty:
        (tmp_path / "b").mkdir()
    else:
        make_tree(tmp_path / "b", "b")
    with pytest.raises(FileExistsError):
        rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert tree(tmp_path / "a") == tree_of("a")
    assert tree(tmp_path / "b") == ({} if empty else tree_of("b"))


def test_noreplace_of_a_missing_source_raises(tmp_path: Path, renames: str) -> None:
    """A missing source raises FileNotFoundError and creates nothing."""
    with pytest.raises(FileNotFoundError):
        rename_noreplace(str(tmp_path / "missing"), str(tmp_path / "b"))
    assert names(tmp_path) == []


def refuse_links(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    """Force the fallback and make os.link fail with ``err``, as on a FAT or FUSE mount."""
    monkeypatch.setattr(_rename, "_use_native", False)

    def link(src: str, dst: str, *, follow_symlinks: bool = True) -> None:
        raise OSError(err, os.strerror(err), src, None, dst)

    monkeypatch.setattr(os, "link", link)


@pytest.mark.parametrize("err", [errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS])
def test_noreplace_without_hard_links_moves_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """Where hard links are refused, a file is still renamed to a free name."""
    refuse_links(monkeypatch, err)
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text("a")
    rename_noreplace(str(src), str(dst))
    assert names(tmp_path) == ["b"]
    assert dst.read_text() == "a"


def test_noreplace_without_hard_links_refuses_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where hard links are refused, an existing file still raises FileExistsError."""
    refuse_links(monkeypatch, errno.EPERM)
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text("a")
    dst.write_text("b")
    with pytest.raises(FileExistsError):
        rename_noreplace(str(src), str(dst))
    assert (src.read_text(), dst.read_text()) == ("a", "b")


def test_noreplace_raises_other_link_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link error that does not mean "no hard links here" is raised; nothing moves."""
    refuse_links(monkeypatch, errno.EIO)
    (tmp_path / "a").write_text("a")
    with pytest.raises(OSError, match="Input/output error"):
        rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert names(tmp_path) == ["a"]


def test_noreplace_whose_unlink_fails_leaves_only_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If unlinking the source after the link fails, the new link goes again: one name."""
    monkeypatch.setattr(_rename, "_use_native", False)
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text("a")
    real_unlink = os.unlink

    def unlink(path: str, *, dir_fd: int | None = None) -> None:
        if path == str(src):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(PermissionError):
        rename_noreplace(str(src), str(dst))
    assert names(tmp_path) == ["a"]
    assert src.stat().st_nlink == 1


# -- exchange ----------------------------------------------------------------------------


def test_exchange_swaps_two_files(tmp_path: Path, renames: str) -> None:
    """Two files trade places."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    exchange(str(a), str(b))
    assert (a.read_text(), b.read_text()) == ("b", "a")
    assert names(tmp_path) == ["a", "b"]


def test_exchange_swaps_two_non_empty_folders(tmp_path: Path, renames: str) -> None:
    """Two non-empty folders trade places with their whole trees."""
    make_tree(tmp_path / "a", "a")
    make_tree(tmp_path / "b", "b")
    exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert tree(tmp_path / "a") == tree_of("b")
    assert tree(tmp_path / "b") == tree_of("a")
    assert names(tmp_path) == ["a", "b"]


def test_exchange_across_folders(tmp_path: Path, renames: str) -> None:
    """The two paths may sit in different folders of one filesystem."""
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = tmp_path / "x" / "a", tmp_path / "y" / "b"
    a.write_text("a")
    make_tree(b, "b")
    exchange(str(a), str(b))
    assert tree(a) == tree_of("b")
    assert b.read_text() == "a"
    assert names(tmp_path / "y") == ["b"]


def test_exchange_fallback_parks_the_target_under_a_swap_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback's side name is a ``.swap`` temp next to ``b`` (a sweep restores it)."""
    monkeypatch.setattr(_rename, "_use_native", False)
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    real_rename = os.rename
    seen: list[str] = []

    def rename(src: str, dst: str) -> None:
        seen.append(os.path.basename(dst))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    side = seen[0]
    assert is_temp_name(side)
    assert side.startswith(".b.retract-")
    assert side.endswith(".swap")
    assert seen == [side, "b", "a"]


@pytest.mark.parametrize("missing", ["a", "b"])
def test_exchange_with_a_missing_path_raises_and_changes_nothing(
    tmp_path: Path, renames: str, missing: str
) -> None:
    """If either path is missing it raises FileNotFoundError; the other stays put."""
    present = "b" if missing == "a" else "a"
    (tmp_path / present).write_text(present)
    with pytest.raises(FileNotFoundError):
        exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert names(tmp_path) == [present]
    assert (tmp_path / present).read_text() == present


# -- when the native call is there but refuses -------------------------------------------


def refusing(err: int) -> _rename._Rename:
    """A stand-in for renameat2 that fails with ``err``, as the kernel would."""

    def native(src: bytes, dst: bytes, flags: int) -> int:
        ctypes.set_errno(err)
        return -1

    return native


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_unsupported_flags_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """A kernel or filesystem that refuses the flags gets the fallback, which still works."""
    monkeypatch.setattr(_rename, "_native", refusing(err))
    monkeypatch.setattr(_rename, "_use_native", True)
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert ((tmp_path / "a").read_text(), (tmp_path / "b").read_text()) == ("b", "a")
    rename_noreplace(str(tmp_path / "a"), str(tmp_path / "c"))
    assert names(tmp_path) == ["b", "c"]


def test_native_failure_is_raised_with_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real failure of the native call (not "unsupported") is an OSError naming both paths."""
    monkeypatch.setattr(_rename, "_native", refusing(errno.EACCES))
    monkeypatch.setattr(_rename, "_use_native", True)
    src, dst = str(tmp_path / "a"), str(tmp_path / "b")
    with pytest.raises(PermissionError) as caught:
        rename_noreplace(src, dst)
    assert (caught.value.filename, caught.value.filename2) == (src, dst)
