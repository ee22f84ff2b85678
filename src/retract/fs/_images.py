"""Before-images: what a delete or an overwrite took away, kept so undo can put it back.

Images live in the journal's image area, one folder per session
(``<area>/<session id>/<operation id>``), and go when the session is pruned. Keeping an
image is a rename (delete) or a hard link (overwrite, where the old file must stay in
place until the atomic replace) when the area is on the file's filesystem, and a copy
otherwise. Everything here is blocking.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat

from ._durable import (
    TempFile,
    discard_file,
    fsync_dir,
    fsync_file,
    install_file,
    open_temp,
    remove_path,
    sync_tree,
)
from ._rename import rename_noreplace

__all__ = ("keep_copy", "keep_moved", "place_back")


def _prepare_slot(image: str, durable: bool) -> None:
    """Create the session's image folder; the area and it are private (0o700).

    Images hold what was deleted or overwritten, possibly from private directories, so
    nobody but the owner may read them, whatever the umask says.
    """
    folder = os.path.dirname(image)
    if os.path.isdir(folder):
        return
    area = os.path.dirname(folder)
    made = []
    if not os.path.isdir(area):
        os.makedirs(os.path.dirname(area), exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(area, 0o700)
            made.append(area)
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    for created in (*made, folder):
        os.chmod(created, 0o700)  # mkdir's mode is filtered by the umask
    if durable:
        fsync_dir(area)
        if made:
            fsync_dir(os.path.dirname(area))


def _copy_any(src: str, dst: str, durable: bool) -> None:
    """Copy a file, symlink or tree with its metadata and owners, synced when ``durable``."""
    mode = os.lstat(src).st_mode
    if stat.S_ISDIR(mode):
        shutil.copytree(src, dst, symlinks=True)
        _copy_owners(src, dst)
        if durable:
            sync_tree(dst)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
        _copy_owner(src, dst)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)
        _copy_owner(src, dst)
        if durable:
            fsync_file(dst)


def _copy_owner(src: str, dst: str) -> None:
    """Give ``dst`` the owner and group of ``src`` where allowed (copy2 does not)."""
    st = os.lstat(src)
    try:
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    except PermissionError:
        with contextlib.suppress(PermissionError):
            os.chown(dst, -1, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))  # a chown clears setuid and setgid


def _copy_owners(src: str, dst: str) -> None:
    for current, dirs, files in os.walk(src):
        relative = os.path.relpath(current, src)
        target = os.path.normpath(os.path.join(dst, relative))
        for name in dirs + files:
            _copy_owner(os.path.join(current, name), os.path.join(target, name))
        _copy_owner(current, target)


def _copy_in(path: str, image: str, durable: bool) -> None:
    """Copy ``path`` to ``image`` through a temp name, so an image that exists is whole.

    Undo relies on it: a copy cut short must never pass for the before-image (the
    original may already be partly removed). A leftover temp goes with the session's
    image folder when it is pruned.
    """
    partial = image + ".partial"
    try:
        _copy_any(path, partial, durable)
        os.rename(partial, image)
    except BaseException:
        if os.path.isdir(partial) and not os.path.islink(partial):
            shutil.rmtree(partial, ignore_errors=True)
        elif os.path.lexists(partial):
            os.unlink(partial)
        raise


def keep_moved(path: str, image: str, *, durable: bool, final_sync: bool = True) -> None:
    """Move ``path`` away into ``image`` (rename; copy then remove across filesystems).

    :param final_sync: sync both directories after the move (when ``durable``); False
        leaves that to the caller, which must then report a failure as its own.
    """
    _prepare_slot(image, durable)
    try:
        rename_noreplace(path, image)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_in(path, image, durable)
        if durable:
            fsync_dir(os.path.dirname(image))
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    if durable and final_sync:
        fsync_dir(os.path.dirname(image))
        fsync_dir(os.path.dirname(path))


def keep_copy(path: str, image: str, *, durable: bool) -> None:
    """Keep the current ``path`` as ``image`` without moving it (hard link, else copy)."""
    _prepare_slot(image, durable)
    if stat.S_ISDIR(os.lstat(path).st_mode):
        _copy_in(path, image, durable)
    else:
        try:
            os.link(path, image, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            _copy_in(path, image, durable)
    if durable:
        fsync_dir(os.path.dirname(image))


def place_back(image: str, path: str, *, replace: bool, durable: bool) -> None:
    """Put ``image`` back at ``path``; the image is consumed.

    Atomic when both are on one filesystem (a rename); across filesystems a file comes
    back through an atomic write and a tree through a copy into a temp folder.

    :param replace: replace whatever is at ``path`` now (else FileExistsError).
    """
    directory = os.path.dirname(path)
    is_dir = stat.S_ISDIR(os.lstat(image).st_mode)
    try:
        _rename_back(image, path, replace=replace, is_dir=is_dir)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_back(image, path, replace=replace, is_dir=is_dir, durable=durable)
    if durable:
        fsync_dir(directory)


def _close(temp: TempFile) -> None:
    fd, temp.fd = temp.fd, None
    if fd is not None:
        os.close(fd)


def _rename_back(image: str, path: str, *, replace: bool, is_dir: bool) -> None:
    if not replace or not os.path.lexists(path):
        rename_noreplace(image, path)
    elif is_dir or (os.path.isdir(path) and not os.path.islink(path)):
        remove_path(path)
        rename_noreplace(image, path)
    else:
        os.replace(image, path)


def _copy_back(image: str, path: str, *, replace: bool, is_dir: bool, durable: bool) -> None:
    if is_dir or stat.S_ISLNK(os.lstat(image).st_mode):
        if os.path.lexists(path):
            if not replace:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
            remove_path(path)
        _copy_any(image, path, durable)
    else:
        temp = open_temp(path, os.path.dirname(path))
        try:
            _close(temp)
            shutil.copy2(image, temp.path)  # content, permission bits and times
            _copy_owner(image, temp.path)
            if durable:
                fsync_file(temp.path)
            install_file(temp, path, overwrite=replace)
        except BaseException:
            discard_file(temp)
            raise
    remove_path(image)
