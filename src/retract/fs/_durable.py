"""The blocking steps of a durable atomic write; callers run them in a worker thread.

A file commit is: a temp created exclusively in the target's directory, the data
written, the old file's permission bits (and owner, where allowed) copied, fsync, close
with its error checked, a rename (no-replace unless overwriting), fsync of the
directory. Any failure before the rename removes the temp. A failed fsync is never
retried: after one, the kernel may have dropped the dirty pages, so a second call could
report success for data that is gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from .._errors import CrossDeviceError, DurabilityError, FileAlreadyExistsError
from ._names import remove_tree, temp_name
from ._rename import exchange, rename_noreplace

__all__ = (
    "TempFile",
    "commit_folder",
    "discard_file",
    "discard_folder",
    "fsync_dir",
    "fsync_file",
    "install_file",
    "prepare_folder",
    "remove_path",
    "resolve_target",
    "write_temp",
)

logger = logging.getLogger("retract")

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
# For fsyncing an existing file: O_NONBLOCK so that a FIFO swapped in after the type check
# cannot block the open forever (it does nothing to regular files).
_SYNC_FLAGS = os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_ATTEMPTS = 100


def resolve_target(
    path: str | os.PathLike[str], temp_dir: str | os.PathLike[str] | None
) -> tuple[str, str]:
    """The real target path (symlinks followed) and the directory for its temp.

    Writing through a symlink replaces the file it points to, never the link itself.

    :raises OSError: the name is too long, or ``temp_dir`` is unusable (clear messages).
    """
    target = os.path.realpath(os.fspath(path))
    directory = os.path.dirname(target)
    name = os.path.basename(target)
    if not name:
        raise IsADirectoryError(errno.EISDIR, f"{os.fspath(path)!r} names no file", os.fspath(path))
    _check_name_length(directory, name)
    if temp_dir is None:
        return target, directory
    temps = os.path.realpath(os.fspath(temp_dir))
    try:
        same_device = os.stat(temps).st_dev == os.stat(directory).st_dev
    except FileNotFoundError as exc:
        raise _missing_directory(target, exc.filename or temps) from None
    if not same_device:
        raise CrossDeviceError(
            errno.EXDEV,
            f"the temp directory {temps} is on another filesystem than {target}; a rename "
            "cannot cross filesystems, so pick a temp_dir on the target's filesystem "
            "(or leave temp_dir out: temps then go next to the target)",
            temps,
        )
    return target, temps


#: No filesystem in common use allows fewer bytes per name (eCryptfs: 143), so shorter
#: names skip the pathconf() call, one system call less per write.
_SAFE_NAME_BYTES = 143


def _check_name_length(directory: str, name: str) -> None:
    if len(name) * 4 <= _SAFE_NAME_BYTES:  # UTF-8 needs at most 4 bytes a character
        return
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(name)) > limit:
        raise OSError(
            errno.ENAMETOOLONG,
            f"file name too long: {name[:40]!r}... has {len(os.fsencode(name))} bytes, the "
            f"filesystem allows {limit}; shorten the name",
            os.path.join(directory, name),
        )


def _missing_directory(target: str, directory: str) -> FileNotFoundError:
    return FileNotFoundError(
        errno.ENOENT,
        f"cannot write {target}: the directory {directory} does not exist; create it first",
        directory,
    )


def _explain(exc: OSError, target: str, directory: str) -> OSError:
    """Turn a bare OSError from creating a temp into one that says what to do."""
    if isinstance(exc, FileNotFoundError):
        return _missing_directory(target, directory)
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return type(exc)(
            exc.errno,
            f"cannot write {target}: no permission to create files in {directory} (atomic "
            "writes create their temp file there); make the directory writable",
            directory,
        )
    if isinstance(exc, NotADirectoryError):
        return NotADirectoryError(
            exc.errno, f"cannot write {target}: a parent of it is not a directory", directory
        )
    return exc


@dataclass(slots=True)
class TempFile:
    """A temp file being written: its path and open descriptor (None once closed)."""

    path: str
    fd: int | None


def open_temp(target: str, directory: str) -> TempFile:
    """Create a fresh temp file for ``target`` in ``directory`` (exclusive create).

    It is created with mode 0o666, so the umask decides its bits like any new file.
    """
    name = os.path.basename(target)
    for _ in range(_ATTEMPTS):
        path = os.path.join(directory, temp_name(name))
        try:
            fd = os.open(path, _OPEN_FLAGS, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _explain(exc, target, directory) from None
        return TempFile(path, fd)
    raise FileExistsError(  # pragma: no cover (100 random collisions)
        errno.EEXIST, f"could not find a free temp name in {directory}", directory
    )


def write_all(fd: int, chunks: Sequence[bytes]) -> None:
    """Write every chunk, looping over short writes."""
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def write_temp(
    temp: TempFile | None, target: str, directory: str, chunks: Sequence[bytes]
) -> TempFile:
    """Append ``chunks`` to the temp, creating it first if needed."""
    if temp is None:
        temp = open_temp(target, directory)
    assert temp.fd is not None  # noqa: S101
    try:
        write_all(temp.fd, chunks)
    except BaseException:
        discard_file(temp)
        raise
    return temp


def discard_file(temp: TempFile) -> None:
    """Close and remove a temp; never raises for a temp that is already gone."""
    if temp.fd is not None:
        fd, temp.fd = temp.fd, None
        try:
            os.close(fd)
        except OSError:
            logger.debug("closing temp %s failed while discarding it", temp.path, exc_info=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp.path)


def finish_temp(temp: TempFile, target: str, *, durable: bool, permissions: int | None) -> None:
    """Copy the old file's metadata onto the temp, fsync it and close it (checked)."""
    assert temp.fd is not None  # noqa: S101
    fd = temp.fd
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    except NotADirectoryError:
        raise _explain(NotADirectoryError(errno.ENOTDIR, ""), target, target) from None
    if old is not None and stat.S_ISDIR(old.st_mode):
        raise is_a_directory(target)
    # Owner first: a chown clears the setuid and setgid bits, so the mode comes after it.
    if old is not None:
        mine = os.fstat(fd)
        if (mine.st_uid, mine.st_gid) != (old.st_uid, old.st_gid):
            try:
                os.fchown(fd, old.st_uid, old.st_gid)
            except PermissionError:
                # Only root may give a file away, but an owner may still hand it to a group
                # they belong to: keep at least the group then.
                logger.debug("could not keep the owner of %s", target)
                if mine.st_gid != old.st_gid:
                    try:
                        os.fchown(fd, -1, old.st_gid)
                    except PermissionError:
                        logger.debug("could not keep the group of %s", target)
    if permissions is not None:
        os.fchmod(fd, permissions)
    elif old is not None:
        os.fchmod(fd, stat.S_IMODE(old.st_mode))
    if durable:
        os.fsync(fd)
    temp.fd = None
    os.close(fd)


def install_file(temp: TempFile, target: str, *, overwrite: bool) -> None:
    """Rename the closed temp onto ``target`` (no-replace unless ``overwrite``)."""
    try:
        if overwrite:
            os.replace(temp.path, target)
        else:
            rename_noreplace(temp.path, target)
    except FileExistsError:
        raise already_exists(target) from None
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise cross_device(temp.path, target) from None
        raise


def is_a_directory(target: str) -> IsADirectoryError:
    """The error for an atomic file write whose target is a directory."""
    return IsADirectoryError(
        errno.EISDIR,
        f"cannot write {target}: it is a directory; atomic_write replaces files "
        "(use atomic_folder to replace a directory)",
        target,
    )


def already_exists(target: str) -> FileAlreadyExistsError:
    """The error for a target that exists while ``overwrite=False``."""
    return FileAlreadyExistsError(
        errno.EEXIST,
        f"{target} already exists and overwrite=False; pass overwrite=True to replace it",
        target,
    )


def cross_device(src: str, dst: str) -> CrossDeviceError:
    """The error for a rename between two filesystems."""
    return CrossDeviceError(
        errno.EXDEV,
        f"cannot rename {src} to {dst}: they are on different filesystems; keep both on "
        "one filesystem (or copy, then delete)",
        dst,
    )


def fsync_dir(directory: str) -> None:
    """Sync a directory's entries to disk."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directory_or_raise(directory: str, target: str) -> None:
    """Fsync ``directory`` after a rename; a failure is a :class:`DurabilityError`."""
    try:
        fsync_dir(directory)
    except OSError as exc:
        raise DurabilityError(
            exc.errno or errno.EIO,
            f"{target} holds the new content, but syncing {directory} failed ({exc}); "
            "whether the change survives a power loss is unconfirmed. Check the disk; a "
            "failed sync is not retried",
            target,
        ) from exc


def commit_file(
    temp: TempFile | None,
    target: str,
    directory: str,
    chunks: Sequence[bytes],
    *,
    overwrite: bool,
    durable: bool,
    permissions: int | None,
) -> None:
    """Write the last chunks and commit: the whole tail of an atomic write in one call.

    The temp never survives a failure here.
    """
    if not overwrite and os.path.lexists(target):
        # Checked early to spare the write; the no-replace rename still decides.
        if temp is not None:
            discard_file(temp)
        # A directory is the wrong kind of target, whatever `overwrite` says.
        raise is_a_directory(target) if os.path.isdir(target) else already_exists(target)
    temp = write_temp(temp, target, directory, chunks)
    try:
        finish_temp(temp, target, durable=durable, permissions=permissions)
        install_file(temp, target, overwrite=overwrite)
    except BaseException:
        discard_file(temp)
        raise
    if durable:
        sync_directory_or_raise(os.path.dirname(target), target)


# -- folders ---------------------------------------------------------------------------


def prepare_folder(
    path: str | os.PathLike[str], temp_dir: str | os.PathLike[str] | None, *, overwrite: bool
) -> tuple[str, str, int]:
    """Create the temp folder for ``path``; return (target, temp folder, its fresh mode)."""
    target, directory = resolve_target(path, temp_dir)
    if os.path.lexists(target):
        # A file is the wrong kind of target, whatever `overwrite` says.
        if not os.path.isdir(target):
            raise NotADirectoryError(
                errno.ENOTDIR,
                f"cannot replace {target} with a folder: it is not a directory; remove it "
                "first or use atomic_write for files",
                target,
            )
        if not overwrite:
            raise already_exists(target)
    for _ in range(_ATTEMPTS):
        folder = os.path.join(directory, temp_name(os.path.basename(target)))
        try:
            os.mkdir(folder, 0o777)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _explain(exc, target, directory) from None
        return target, folder, stat.S_IMODE(os.stat(folder).st_mode)
    raise FileExistsError(  # pragma: no cover
        errno.EEXIST, f"could not find a free temp name in {directory}", directory
    )


def discard_folder(folder: str) -> None:
    """Remove a temp folder and everything in it (read-only folders inside included)."""
    try:
        remove_tree(folder)
    except OSError:
        logger.warning(
            "could not remove the temp folder %s; `retract sweep` will", folder, exc_info=True
        )


def sync_tree(root: str) -> None:
    """Fsync every regular file and directory under ``root`` (bottom-up).

    Symlinks, FIFOs, sockets and devices are skipped: they hold no data of the tree, and
    opening a FIFO would block until a writer came.
    """
    for current, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(current, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                fsync_file(path)
        fsync_dir(current)


def fsync_file(path: str) -> None:
    """Fsync a regular file by path (opened non-blocking; write-only files too)."""
    try:
        fd = os.open(path, os.O_RDONLY | _SYNC_FLAGS)
    except PermissionError:
        # A write-only file (mode 0o200) cannot be opened for reading by its owner; fsync
        # works through any descriptor.
        fd = os.open(path, os.O_WRONLY | _SYNC_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_path(path: str) -> None:
    """Remove a file, symlink or directory tree at ``path``; a missing path is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def commit_folder(
    folder: str, target: str, fresh_mode: int, *, overwrite: bool, durable: bool
) -> None:
    """Swap the filled temp folder in: no-replace, else exchange, then drop the old tree.

    The temp folder never survives a failure before the swap.
    """
    try:
        if durable:
            sync_tree(folder)
        old = _swap_in(folder, target, fresh_mode, overwrite=overwrite)
    except BaseException:
        discard_folder(folder)
        raise
    try:
        if durable:
            sync_directory_or_raise(os.path.dirname(target), target)
    finally:
        if old:
            # After the exchange the old tree sits under the temp name: a crash here
            # leaves it for `retract sweep`, while the new folder is already in place.
            # A failed directory sync must not leave it behind either.
            discard_folder(folder)


def _keep_owner(folder: str, old: os.stat_result) -> None:
    """Give the new folder the old one's owner and group, where the process may."""
    mine = os.stat(folder)
    if (mine.st_uid, mine.st_gid) == (old.st_uid, old.st_gid):
        return
    try:
        os.chown(folder, old.st_uid, old.st_gid)
    except PermissionError:
        with contextlib.suppress(PermissionError):
            os.chown(folder, -1, old.st_gid)


def _swap_in(folder: str, target: str, fresh_mode: int, *, overwrite: bool) -> bool:
    """Rename ``folder`` onto ``target``; True when an old tree was swapped out."""
    while True:
        try:
            rename_noreplace(folder, target)
        except FileExistsError:
            if not overwrite:
                raise already_exists(target) from None
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise cross_device(folder, target) from None
            raise
        else:
            return False
        try:
            old = os.stat(target)
            _keep_owner(folder, old)  # first: a chown clears setgid on a directory
            if stat.S_IMODE(os.stat(folder).st_mode) == fresh_mode:
                os.chmod(folder, stat.S_IMODE(old.st_mode))  # unless the block changed them
            exchange(folder, target)
        except FileNotFoundError:
            continue  # the target vanished between the two calls: try no-replace again
        return True
