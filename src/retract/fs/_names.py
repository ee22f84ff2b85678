"""Names of retract's temporary files, and the sweep that clears abandoned ones.

A temp is named ``.<target>.retract-<host>-<pid>-<random>.<kind>``: hidden, next to its
target, recognisable, and carrying what a sweep needs to tell an abandoned temp (its
process is gone) from one that a running writer still owns. ``<host>`` is a short hash
of the host name, so a sweep on a shared filesystem leaves other hosts' temps alone.
``<target>`` is the target's base name, cut to its first :data:`_BASE_BYTES` bytes.

The kinds:

- ``tmp``: a file or folder being written, or an old tree being removed after a folder
  exchange. An abandoned one is removed.
- ``swap``: the live target parked under a side name by the fallback of
  :func:`retract.fs._rename.exchange` (where the kernel lacks the exchange flag). It
  may be the only copy of the old target, so an abandoned one is never simply removed:
  if the target (the same directory, the base name from the temp name) is missing, the
  crash came before the new tree went in and the swap is renamed back; if the target
  exists, the new tree is in place and the swap is removed. When the base name may
  have been cut short, the sweep cannot know the target and keeps the swap (reported
  as failed).
- ``old``: what earlier builds named that same side name; handled like ``swap``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import random
import re
import shutil
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ("SweepReport", "is_temp_name", "remove_tree", "sweep_sync", "temp_name")

logger = logging.getLogger("retract")

#: Kinds that may hold the only copy of a target: settled, never simply removed.
_SWAP_KINDS = frozenset({"swap", "old"})
_HOST = hashlib.sha1(socket.gethostname().encode(), usedforsecurity=False).hexdigest()[:6]
# `\Z`, not `$` (which also matches before a final newline), and `[0-9]`, not `\d`
# (which also matches other scripts' digits): only names retract makes may match.
_PATTERN = re.compile(
    r"^\.(?P<base>.*)\.retract-(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-[0-9a-f]{8}"
    r"\.(?P<kind>tmp|swap|old)\Z",
    re.DOTALL,
)
# Temp names need to be unlikely to collide, not secret (they are created exclusively
# and retried): a seeded generator saves a getrandom() system call per name.
_random = random.Random()  # noqa: S311
os.register_at_fork(after_in_child=_random.seed)

#: Bytes of the target's name kept in a temp's name: the suffix needs about 40, and a
#: name may have at most 255 bytes on every common filesystem.
_BASE_BYTES = 180


def temp_name(target_name: str, kind: str = "tmp") -> str:
    """A fresh temp name for ``target_name`` (a base name, not a path)."""
    base = os.fsencode(target_name)[:_BASE_BYTES]
    # Cutting bytes can split a character; surrogateescape keeps the name round-trippable.
    shortened = base.decode("utf-8", "surrogateescape")
    return f".{shortened}.retract-{_HOST}-{os.getpid()}-{_random.getrandbits(32):08x}.{kind}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` (a base name) is one of retract's temps."""
    return _PATTERN.match(name) is not None


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a pid no process can have
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@dataclass(slots=True)
class SweepReport:
    """What :func:`retract.fs.sweep` did.

    :ivar removed: temps removed (their owner process is gone).
    :ivar kept: temps left alone because their owner is alive or on another host.
    :ivar failed: temps that could not be removed or settled, with the error or what to do.
    :ivar restored: ``(temp, target)`` pairs: the old tree of a folder swap cut short by a
        crash, renamed back to its missing target.
    :ivar kept_reasons: why each path in ``kept`` was kept, as a short phrase such as
        ``"its process (pid 123) is still running"``.
    """

    removed: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    restored: list[tuple[Path, Path]] = field(default_factory=list)
    kept_reasons: dict[Path, str] = field(default_factory=dict)


def _keep_reason(
    match: re.Match[str], entry: os.DirEntry[str], min_age: float | None
) -> str | None:
    """Why the temp must stay, or None if it is abandoned."""
    if min_age is not None:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            # Gone between the listing and now: most likely its writer just committed it.
            return "it was renamed or removed during the sweep"
        changed = st.st_mtime
        if match["kind"] in _SWAP_KINDS:
            # A swap keeps its old target's mtime, however old; the rename that parked it
            # set its ctime, so a swap a live writer parked a moment ago is not "old".
            changed = max(changed, st.st_ctime)
        if time.time() - changed >= min_age:
            return None
    if match["host"] != _HOST:
        return (
            f"it was made on another host ({match['host']}), whose processes cannot be "
            "checked from here"
        )
    pid = int(match["pid"])
    if _process_alive(pid):
        return f"its process (pid {pid}) is still running"
    return None


def sweep_sync(
    directory: str | os.PathLike[str], *, recursive: bool, min_age: float | None
) -> SweepReport:
    """Blocking body of :func:`retract.fs.sweep`."""
    report = SweepReport()
    pending = [os.fspath(directory)]
    if not os.path.isdir(pending[0]):
        raise NotADirectoryError(
            errno.ENOTDIR, f"cannot sweep {pending[0]}: not a directory", pending[0]
        )
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            report.failed.append((Path(current), f"{type(exc).__name__}: {exc}"))
            continue
        for entry in entries:
            match = _PATTERN.match(entry.name)
            if match is None:
                if recursive and entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                continue
            path = Path(entry.path)
            reason = _keep_reason(match, entry, min_age)
            if reason is not None:
                report.kept.append(path)
                report.kept_reasons[path] = reason
                continue
            if match["kind"] in _SWAP_KINDS:
                _settle_swap(match, entry, report)
                continue
            try:
                _remove(entry)
            except OSError as exc:
                report.failed.append((path, f"{type(exc).__name__}: {exc}"))
            else:
                logger.debug("swept %s", path)
                report.removed.append(path)
    return report


def _settle_swap(match: re.Match[str], entry: os.DirEntry[str], report: SweepReport) -> None:
    """Restore or remove an abandoned swap: the old target parked by an exchange fallback."""
    # Here, not at the top: _rename imports this module for temp_name.
    from ._rename import rename_noreplace  # noqa: PLC0415

    path = Path(entry.path)
    base = match["base"]
    if len(os.fsencode(base)) >= _BASE_BYTES or base in ("", ".", ".."):
        # The name may be cut short: the target cannot be known, and a guess could delete
        # the only copy of a folder or rename it over the wrong name.
        report.failed.append((path, _unknown_target(base, entry.path)))
        return
    target = os.path.join(os.path.dirname(entry.path), base)
    try:
        if os.path.lexists(target):
            # The crash came after the new tree went in: this is the old one, to be removed.
            _remove(entry)
            report.removed.append(path)
            logger.debug("swept %s", path)
        else:
            # The crash came before the new tree went in: put the old one back.
            rename_noreplace(entry.path, target)
            report.restored.append((path, Path(target)))
            logger.info("restored %s from %s", target, path)
    except OSError as exc:
        report.failed.append((path, f"{type(exc).__name__}: {exc}"))


def _unknown_target(base: str, path: str) -> str:
    return (
        f"kept: this holds the old content of a folder or file whose replacement was cut "
        f"short by a crash, but its name ({base!r}...) may be truncated here, so retract "
        f"cannot tell which entry of {os.path.dirname(path)} it belongs to. If the entry "
        "it replaced is missing, rename this back to that name; otherwise delete this"
    )


def _remove(entry: os.DirEntry[str]) -> None:
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        remove_tree(entry.path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)


def remove_tree(path: str) -> None:
    """Remove the directory tree at ``path`` as far as possible, then raise the first error.

    A read-only directory inside the tree (a 0o555 folder a build or a copy left) keeps a
    non-root process from deleting its entries, so after a PermissionError the entry's
    parent gets u+w and u+x and the deletion is retried once. Only directories inside the
    tree are changed, never the one holding ``path``. A missing path is no error.
    """
    errors: list[OSError] = []
    root = os.path.normpath(path)
    inside = os.path.join(root, "")

    def on_error(fn: Callable[..., object], failed: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):
            return
        parent = os.path.dirname(failed)
        if (
            isinstance(exc, PermissionError)
            and fn in (os.unlink, os.rmdir)
            and (parent == root or parent.startswith(inside))
        ):
            try:
                mode = stat.S_IMODE(os.lstat(parent).st_mode)
                os.chmod(parent, mode | stat.S_IWUSR | stat.S_IXUSR)
                fn(failed)
            except FileNotFoundError:
                return
            except OSError as again:
                exc = again
            else:
                return
        if isinstance(exc, OSError):
            errors.append(exc)

    # `onerror` is deprecated from 3.12 on, where `onexc` replaces it.
    if sys.version_info >= (3, 12):
        shutil.rmtree(root, onexc=on_error)
    else:
        shutil.rmtree(root, onerror=lambda fn, failed, info: on_error(fn, failed, info[1]))
    if errors:
        raise errors[0]
