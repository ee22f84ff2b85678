"""Helpers shared by the tests of ``retract.fs``."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from retract.fs import is_temp_name
from retract.fs._names import _HOST

#: The host hash in the temp names this machine makes.
HOST = _HOST
#: A host hash that is not this machine's.
OTHER_HOST = "ffffff" if HOST != "ffffff" else "000000"


def temps(directory: Path) -> list[str]:
    """The names of retract temps directly in ``directory``, sorted."""
    return sorted(name for name in os.listdir(directory) if is_temp_name(name))


def names(directory: Path) -> list[str]:
    """Every name directly in ``directory``, sorted."""
    return sorted(os.listdir(directory))


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory)."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def temp_name_for(
    target: str, *, pid: int, host: str = HOST, suffix: str = "0123abcd", kind: str = "tmp"
) -> str:
    """A temp name as ``retract.fs._names.temp_name`` makes it, for any pid and host.

    ``suffix`` stands for the 8 random hex digits.
    """
    return f".{target}.retract-{host}-{pid}-{suffix}.{kind}"


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def is_root() -> bool:
    """Whether the tests run as root (who ignores permission bits)."""
    return os.geteuid() == 0


def refuse_like_non_root(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make os.unlink and os.rmdir fail in a directory without u+w, as they do for non-root.

    Root may delete inside a read-only directory; the tests run as root, so this brings
    back what every other user sees. Returns the names refused.
    """
    refused: list[str] = []

    def guard(real: Callable[..., None]) -> Callable[..., None]:
        def call(path: str, *, dir_fd: int | None = None) -> None:
            if dir_fd is None:
                parent = os.stat(os.path.dirname(os.path.abspath(path)))
            else:  # shutil.rmtree passes names relative to an open directory
                parent = os.fstat(dir_fd)
            if not parent.st_mode & stat.S_IWUSR:
                refused.append(path)
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            real(path, dir_fd=dir_fd)

        return call

    monkeypatch.setattr(os, "unlink", guard(os.unlink))
    monkeypatch.setattr(os, "rmdir", guard(os.rmdir))
    return refused


#: An entry of :func:`snapshot`: kind, permission bits, and bytes or symlink target.
Entry = tuple[str, int, bytes | str | None]


def snapshot(root: Path) -> dict[str, Entry]:
    """Every entry under ``root``: kind, permission bits, and bytes or symlink target."""
    found: dict[str, Entry] = {}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(current, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("symlink", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), Path(path).read_bytes())
    return found
