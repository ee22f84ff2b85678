"""Helpers shared by the tests of ``retract.fs``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
