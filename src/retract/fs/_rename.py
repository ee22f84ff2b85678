"""Atomic renames: no-replace and exchange, with renameat2 where the kernel has it.

Linux has ``renameat2(2)`` with ``RENAME_NOREPLACE`` (fail with EEXIST instead of
replacing) and ``RENAME_EXCHANGE`` (swap two paths, both must exist). macOS has the same
two through ``renameatx_np(2)``. Elsewhere, and on filesystems that refuse the flags
(EINVAL), a portable fallback runs: ``link`` + ``unlink`` for a no-replace of a file
(atomic too), and a check-then-rename, which has a small race window, for directories
and on filesystems without hard links (FAT, some FUSE). Everything here is blocking;
callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import sys
from collections.abc import Callable

from ._names import temp_name

__all__ = ("exchange", "has_native_flags", "has_native_renames", "rename_noreplace")

_LINUX_NOREPLACE = 1
_LINUX_EXCHANGE = 2
_MAC_SWAP = 2
_MAC_EXCL = 4
#: renameat2's number where glibc is too old to export the wrapper (before 2.28).
_SYSCALL_NUMBERS = {"x86_64": 316, "aarch64": 276, "i686": 353, "armv7l": 382}

_Rename = Callable[[bytes, bytes, int], int]


def _load() -> tuple[_Rename | None, int, int]:
    """Find the native call: (function, no-replace flag, exchange flag)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover (no C library to load)
        return None, 0, 0
    system: str = sys.platform  # a plain str: both branches are type-checked everywhere
    if system == "linux":
        at_fdcwd = -100
        fn = getattr(libc, "renameat2", None)
        if fn is not None:
            fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
            fn.argtypes += (ctypes.c_uint,)
            fn.restype = ctypes.c_int
            call = fn
        else:  # pragma: no cover (glibc before 2.28)
            number = _SYSCALL_NUMBERS.get(platform.machine())
            if number is None:
                return None, 0, 0
            syscall = libc.syscall
            syscall.restype = ctypes.c_long

            def call(a: int, src: bytes, b: int, dst: bytes, flags: int) -> int:
                return int(syscall(number, a, src, b, dst, ctypes.c_uint(flags)))

        def rename(src: bytes, dst: bytes, flags: int) -> int:
            return int(call(at_fdcwd, src, at_fdcwd, dst, flags))

        return rename, _LINUX_NOREPLACE, _LINUX_EXCHANGE
    if system == "darwin":  # pragma: no cover (exercised on macOS only)
        fn = getattr(libc, "renameatx_np", None)
        if fn is None:
            return None, 0, 0
        fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
        fn.argtypes += (ctypes.c_uint,)
        fn.restype = ctypes.c_int

        def rename(src: bytes, dst: bytes, flags: int) -> int:
            return int(fn(-2, src, -2, dst, flags))

        return rename, _MAC_EXCL, _MAC_SWAP
    return None, 0, 0  # pragma: no cover


_native, _NOREPLACE, _EXCHANGE = _load()
#: Errnos that mean "this kernel or filesystem cannot do it", not "it failed".
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
_use_native = _native is not None
#: Errnos of ``link`` that mean "this filesystem has no hard links (for this file)".
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS})


def has_native_flags() -> bool:
    """Whether atomic no-replace and exchange renames come from the kernel here."""
    return _use_native


def has_native_renames() -> bool:
    """Whether the atomic no-replace and exchange renames come from the kernel here.

    True on Linux (``renameat2``) and macOS (``renameatx_np``). False means the portable
    fallback runs: folder no-replace renames then have a short race window, and a folder
    swap (``atomic_folder(overwrite=True)``) leaves a moment in which the target is
    missing.
    """
    return has_native_flags()


def _native_rename(src: str, dst: str, flags: int) -> bool:
    """Try the native call. False: unsupported here; OSError: it failed for real."""
    assert _native is not None  # noqa: S101
    if _native(os.fsencode(src), os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), src, None, dst)


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``, failing with EEXIST (FileExistsError) if ``dst`` exists.

    Atomic where the kernel has the flag. Without it, a file is hard-linked to ``dst``
    (atomic no-replace), then ``src`` is unlinked; if that unlink fails, ``dst`` is
    unlinked again before the error is raised, so a failure leaves only ``src``. A crash
    between the two steps leaves both names on the one file (when ``src`` is a temp name,
    a sweep unlinks just that name; ``dst`` keeps the data). Directories, and files on a
    filesystem without hard links, get a check-then-rename instead: a path created at
    ``dst`` between the check and the rename may be replaced.
    """
    if _use_native and _native_rename(src, dst, _NOREPLACE):
        return
    if os.path.isdir(src) and not os.path.islink(src):
        # No atomic way: a directory cannot be hard-linked.
        _check_then_rename(src, dst)
        return
    try:
        os.link(src, dst, follow_symlinks=False)  # EEXIST if dst exists: atomic no-replace
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        _check_then_rename(src, dst)
        return
    try:
        os.unlink(src)
    except BaseException:
        # Two names on one file would outlive the error: keep the one we started from.
        with contextlib.suppress(OSError):
            os.unlink(dst)
        raise


def _check_then_rename(src: str, dst: str) -> None:
    # The window between the check and the rename is the fallback's documented weakness.
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


def exchange(a: str, b: str) -> None:
    """Swap ``a`` and ``b`` atomically; both must exist.

    Without the kernel's flag this falls back to three renames through a side name,
    which is not atomic (readers may briefly see ``b`` missing). The side name is a
    ``swap`` temp name next to ``b``: after a crash, a sweep renames it back if ``b`` is
    missing and removes it if ``b`` is there (see :mod:`retract.fs._names`).
    """
    if _use_native and _native_rename(a, b, _EXCHANGE):
        return
    # Not an "old" or "tmp" temp: between the first two renames it is the only copy of b.
    side = os.path.join(os.path.dirname(b), temp_name(os.path.basename(b), "swap"))
    os.rename(b, side)
    try:
        os.rename(a, b)
    except BaseException:
        os.rename(side, b)
        raise
    os.rename(side, a)
