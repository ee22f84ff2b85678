"""The blocking halves of ``session.fs`` operations: prepare, then commit.

``prepare`` checks the request and does everything that leaves the visible tree alone
(a temp written and synced, fingerprints taken); its result is the payload of the
durable intent. ``commit`` then makes the change (keeping a before-image first) and
returns the facts stored with DONE. ``abandon`` removes a prepared temp that was never
committed. Every payload holds absolute paths, so undo works from any directory and any
process.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._durable import (
    TempFile,
    already_exists,
    cross_device,
    discard_file,
    discard_folder,
    finish_temp,
    fsync_file,
    install_file,
    open_temp,
    remove_path,
    resolve_target,
    sync_directory_or_raise,
    sync_tree,
    write_all,
)
from ._fingerprint import fingerprint, hash_bytes, identity
from ._images import keep_copy, keep_moved, place_back
from ._names import temp_name
from ._rename import rename_noreplace

__all__ = ("FsOp", "copy_op", "delete_op", "mkdir_op", "move_op", "rmtree_op", "write_op")

Payload = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FsOp:
    """One ``session.fs`` operation, split into its blocking steps."""

    op_type: str
    prepare: Callable[[], Payload | None]  # None: nothing to do, nothing journaled
    commit: Callable[[Payload], Payload]
    abandon: Callable[[Payload], None] | None = None


def _missing(path: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, f"cannot {what} {path}: it does not exist", path)


def _lstat(path: str, what: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        raise _missing(path, what) from None


def _same_entry(st: os.stat_result, path: str) -> bool:
    # lstat, not samefile(): a dst symlink pointing at src (or dangling) is a different
    # entry that the move may replace; the same inode (a hard link) would make the
    # rename a silent no-op.
    other = os.lstat(path)
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def _is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)


def _sync_dirs(durable: bool, target: str, *paths: str) -> None:
    if durable:
        for directory in dict.fromkeys(os.path.dirname(p) for p in paths):
            sync_directory_or_raise(directory, target)


def _real(path: str) -> str:
    """``path`` with its directory's symlinks resolved (the last component kept)."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _swap_kept(dst: str, image: str, durable: bool, rename: Callable[[], None]) -> None:
    """Move ``dst`` away into its image, then ``rename`` the new entry onto it.

    If the rename fails, ``dst`` is put back at once: a failed operation must not leave
    the path empty until someone runs undo.
    """
    keep_moved(dst, image, durable=durable)
    try:
        rename()
    except BaseException:
        place_back(image, dst, replace=False, durable=durable)
        raise


def _abandon_temp(payload: Payload) -> None:
    remove_path(payload["temp"])


# -- write -----------------------------------------------------------------------------


def write_op(
    path: str, data: bytes, image: str, *, overwrite: bool, durable: bool, permissions: int | None
) -> FsOp:
    """Write ``data`` to ``path`` atomically, keeping the old file as a before-image."""

    def prepare() -> Payload:
        target, directory = resolve_target(path, None)
        existed = os.path.lexists(target)
        if existed and not overwrite:
            raise already_exists(target)
        temp = open_temp(target, directory)
        try:
            assert temp.fd is not None  # noqa: S101
            write_all(temp.fd, (data,))
            finish_temp(temp, target, durable=durable, permissions=permissions)
        except BaseException:
            discard_file(temp)
            raise
        new = {"kind": "file", "size": len(data), "sha256": hash_bytes(data)}
        return {"path": target, "temp": temp.path, "image": image, "existed": existed, "new": new}

    def commit(payload: Payload) -> Payload:
        target = payload["path"]
        temp = TempFile(payload["temp"], None)
        before = None
        try:
            existed = os.path.lexists(target)
            if not existed:
                try:
                    # No-replace: a file that appears meanwhile is never clobbered unkept.
                    install_file(temp, target, overwrite=False)
                except FileExistsError:
                    if not overwrite:
                        raise
                    existed = True
            if existed:
                if not overwrite:
                    raise already_exists(target)
                before = identity(target)
                keep_copy(target, image, durable=durable)
                install_file(temp, target, overwrite=True)
        except BaseException:
            discard_file(temp)
            raise
        after = fingerprint(target, content=False) or {}
        facts = {
            "committed": True,
            "existed": existed,
            "before": before,
            "after": after | {"sha256": payload["new"]["sha256"]},
        }
        _sync_with_facts(facts, lambda: _sync_dirs(durable, target, target))
        return facts

    return FsOp("fs.write", prepare, commit, _abandon_temp)


def _sync_with_facts(facts: Payload, sync: Callable[[], None]) -> None:
    """Run the final sync; a failure is raised *with* the facts (the change happened).

    ``retract_facts`` on an exception tells the session which effects did happen; they
    are stored with the FAILED state, and undo uses them.
    """
    try:
        sync()
    except OSError as exc:
        exc.retract_facts = facts  # type: ignore[attr-defined]
        raise


# -- move ------------------------------------------------------------------------------


def move_op(src: str, dst: str, image: str, *, overwrite: bool, durable: bool) -> FsOp:
    """Rename ``src`` to ``dst``; with ``overwrite``, the old ``dst`` is kept as an image."""

    def prepare() -> Payload:
        st = _lstat(src, "move")
        parent = os.path.dirname(dst)
        try:
            parent_dev = os.stat(parent).st_dev
        except FileNotFoundError:
            raise _missing(parent, f"move {src} into") from None
        if parent_dev != st.st_dev:
            raise cross_device(src, dst)
        replaced = os.path.lexists(dst)
        if replaced and not overwrite:
            raise already_exists(dst)
        if replaced and _same_entry(st, dst):
            raise ValueError(f"cannot move {src} onto itself ({dst})")
        real_src, real_dst = _real(src), _real(dst)
        if real_dst.startswith(real_src + os.sep):
            raise ValueError(f"cannot move {src} into itself ({dst} is inside it)")
        if replaced and real_src.startswith(real_dst + os.sep):
            raise ValueError(f"cannot move {src} over {dst}, which contains it")
        moved = fingerprint(src)
        return {"src": src, "dst": dst, "image": image, "replaced": replaced, "moved": moved}

    def commit(payload: Payload) -> Payload:
        replaced = os.path.lexists(dst)
        before = identity(dst)
        try:
            if not replaced:
                rename_noreplace(src, dst)
            elif not overwrite:
                raise already_exists(dst)
            elif _is_dir(os.lstat(dst)) or _is_dir(os.lstat(src)):
                _swap_kept(dst, image, durable, lambda: rename_noreplace(src, dst))
            else:
                keep_copy(dst, image, durable=durable)
                os.replace(src, dst)
        except FileExistsError:
            raise already_exists(dst) from None
        except OSError as exc:
            if exc.errno == errno.EXDEV:  # bind mounts of one filesystem share st_dev
                raise cross_device(src, dst) from None
            raise
        facts = {"committed": True, "replaced": replaced, "before": before}
        _sync_with_facts(facts, lambda: _sync_dirs(durable, dst, src, dst))
        return facts

    return FsOp("fs.move", prepare, commit)


# -- copy ------------------------------------------------------------------------------


def copy_op(src: str, dst: str, image: str, *, overwrite: bool, durable: bool) -> FsOp:
    """Copy a file or a tree to ``dst`` atomically (through a temp next to it)."""

    def prepare() -> Payload:
        st = os.stat(src) if os.path.exists(src) else _lstat(src, "copy")
        replaced = os.path.lexists(dst)
        if replaced and not overwrite:
            raise already_exists(dst)
        directory = os.path.dirname(dst)
        if not os.path.isdir(directory):
            # Checked first: copytree() would create the missing parents, unjournaled.
            raise _missing(directory, f"copy {src} into")
        if _is_dir(st):
            temp = os.path.join(directory, temp_name(os.path.basename(dst)))
            try:
                shutil.copytree(src, temp, symlinks=True)
                if durable:
                    sync_tree(temp)
            except FileNotFoundError as exc:
                discard_folder(temp)
                if not os.path.isdir(directory):
                    raise _missing(directory, f"copy {src} into") from None
                raise exc from None
            except BaseException:
                discard_folder(temp)
                raise
        else:
            handle = open_temp(dst, directory)
            temp = handle.path
            try:
                assert handle.fd is not None  # noqa: S101
                os.close(handle.fd)
                handle.fd = None
                shutil.copy2(src, temp)
                if durable:
                    fsync_file(temp)
            except BaseException:
                discard_file(handle)
                raise
        copied = fingerprint(temp)
        return {
            "src": src,
            "dst": dst,
            "temp": temp,
            "image": image,
            "replaced": replaced,
            "copied": copied,
        }

    def commit(payload: Payload) -> Payload:
        temp = payload["temp"]
        replaced = os.path.lexists(dst)
        before = identity(dst)
        try:
            if not replaced:
                rename_noreplace(temp, dst)
            elif not overwrite:
                raise already_exists(dst)
            elif _is_dir(os.lstat(dst)) or os.path.isdir(temp):
                _swap_kept(dst, image, durable, lambda: rename_noreplace(temp, dst))
            else:
                keep_copy(dst, image, durable=durable)
                os.replace(temp, dst)
        except BaseException as exc:
            remove_path(temp)
            if isinstance(exc, FileExistsError):
                raise already_exists(dst) from None
            raise
        facts = {"committed": True, "replaced": replaced, "before": before}
        _sync_with_facts(facts, lambda: _sync_dirs(durable, dst, dst))
        return facts

    return FsOp("fs.copy", prepare, commit, _abandon_temp)


# -- delete and rmtree -----------------------------------------------------------------


def delete_op(path: str, image: str, *, missing_ok: bool, durable: bool) -> FsOp:
    """Remove a file or symlink, keeping it as a before-image."""

    def prepare() -> Payload | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise _missing(path, "delete") from None
        if _is_dir(st):
            raise IsADirectoryError(
                errno.EISDIR, f"cannot delete {path}: it is a directory; use rmtree", path
            )
        deleted = fingerprint(path, content=False)
        return {"path": path, "image": image, "deleted": deleted, "before": identity(path)}

    return FsOp("fs.delete", prepare, _move_away(path, image, durable))


def rmtree_op(path: str, image: str, *, durable: bool) -> FsOp:
    """Remove a directory tree, keeping it as a before-image."""

    def prepare() -> Payload:
        st = _lstat(path, "remove")
        if not _is_dir(st):
            raise NotADirectoryError(
                errno.ENOTDIR, f"cannot rmtree {path}: it is not a directory; use delete", path
            )
        removed = fingerprint(path)
        return {"path": path, "image": image, "removed": removed, "before": identity(path)}

    return FsOp("fs.rmtree", prepare, _move_away(path, image, durable))


def _move_away(path: str, image: str, durable: bool) -> Callable[[Payload], Payload]:
    def commit(payload: Payload) -> Payload:
        keep_moved(path, image, durable=durable, final_sync=False)
        facts = {"committed": True}
        # The entry is gone from `path` now: a failed sync is a DurabilityError.
        _sync_with_facts(facts, lambda: _sync_dirs(durable, path, image, path))
        return facts

    return commit


# -- mkdir -----------------------------------------------------------------------------


def mkdir_op(path: str, *, mode: int, parents: bool, exist_ok: bool, durable: bool) -> FsOp:
    """Create a directory (and its missing parents with ``parents=True``)."""

    def prepare() -> Payload | None:
        if os.path.lexists(path):
            if exist_ok and os.path.isdir(path):
                return None
            raise already_exists(path)
        missing = [path]
        parent = os.path.dirname(path)
        while not os.path.lexists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        if len(missing) > 1 and not parents:
            raise _missing(os.path.dirname(path), f"create {path} in")
        return {"path": path, "create": missing[::-1], "mode": mode}

    def commit(payload: Payload) -> Payload:
        created: list[str] = []
        facts: Payload = {"committed": True, "created": created}
        try:
            for folder in payload["create"]:
                try:
                    os.mkdir(folder, mode)
                except FileExistsError:
                    if folder == path and not exist_ok:
                        raise already_exists(path) from None
                    continue
                created.append(folder)
        except OSError as exc:
            # undo removes the folders made before the failure
            exc.retract_facts = facts  # type: ignore[attr-defined]
            raise
        _sync_with_facts(facts, lambda: _sync_dirs(durable, path, *created))
        return facts

    return FsOp("fs.mkdir", prepare, commit)
