"""Names of retract's temporary files, and the sweep that removes abandoned ones.

A temp is named ``.<target>.retract-<host>-<pid>-<random>.<kind>``: hidden, next to its
target, recognisable, and carrying what a sweep needs to tell an abandoned temp (its
process is gone) from one that a running writer still owns. ``<host>`` is a short hash
of the host name, so a sweep on a shared filesystem leaves other hosts' temps alone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ("SweepReport", "is_temp_name", "sweep_sync", "temp_name")

logger = logging.getLogger("retract")

#: Kinds of temp: a file or folder being written, and an old tree being removed.
KINDS = ("tmp", "old")
_HOST = hashlib.sha1(socket.gethostname().encode(), usedforsecurity=False).hexdigest()[:6]
# `\Z`, not `$` (which also matches before a final newline), and `[0-9]`, not `\d`
# (which also matches other scripts' digits): only names retract makes may match.
_PATTERN = re.compile(
    r"^\.(?P<base>.*)\.retract-(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-[0-9a-f]{8}"
    r"\.(?P<kind>tmp|old)\Z",
    re.DOTALL,
)
#: Bytes of the target's name kept in a temp's name: the suffix needs about 40, and a
#: name may have at most 255 bytes on every common filesystem.
_BASE_BYTES = 180


def temp_name(target_name: str, kind: str = "tmp") -> str:
    """A fresh temp name for ``target_name`` (a base name, not a path)."""
    base = os.fsencode(target_name)[:_BASE_BYTES]
    # Cutting bytes can split a character; surrogateescape keeps the name round-trippable.
    shortened = base.decode("utf-8", "surrogateescape")
    return f".{shortened}.retract-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.{kind}"


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
    :ivar failed: temps that could not be removed, with the error.
    """

    removed: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _abandoned(match: re.Match[str], entry: os.DirEntry[str], min_age: float | None) -> bool:
    if min_age is not None:
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return False
        if age >= min_age:
            return True
    if match["host"] != _HOST:
        return False
    return not _process_alive(int(match["pid"]))


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
            if not _abandoned(match, entry, min_age):
                report.kept.append(path)
                continue
            try:
                _remove(entry)
            except OSError as exc:
                report.failed.append((path, f"{type(exc).__name__}: {exc}"))
            else:
                logger.debug("swept %s", path)
                report.removed.append(path)
    return report


def _remove(entry: os.DirEntry[str]) -> None:
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(entry.path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
