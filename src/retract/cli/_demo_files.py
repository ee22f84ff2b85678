"""The files of ``retract demo``: seeding, snapshots and the before/after listing.

Everything here is blocking file I/O; ``_demo.py`` runs it in worker threads. The
changes themselves are ``session.fs`` operations, with ``durable=False``: the demo's
files are throwaway (the journal itself still commits durably).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

__all__ = ("FILES_DIR", "SEED", "Snapshot", "seed", "snapshot", "tree")

#: Where the demo's files live, under the root.
FILES_DIR = "files"

SEED: dict[str, bytes] = {
    "notes.txt": b"Meeting notes\n- ship the undo command\n- write the docs\n",
    "config.json": b'{\n  "mode": "debug",\n  "retries": 3\n}\n',
    "data/report.csv": b"day,visits\nmon,120\ntue,98\n",
    "old.log": b"".join(b"2024-01-%02d worker started\n" % day for day in range(1, 21)),
}

#: Relative path -> content, or None for a directory.
Snapshot = dict[str, bytes | None]


def seed(root: Path) -> None:
    """Create the demo's files under ``root/files``."""
    for name, content in SEED.items():
        path = root / FILES_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def snapshot(directory: Path) -> Snapshot:
    """Every file (with its bytes) and directory under ``directory``."""
    found: Snapshot = {}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        found[name] = None if path.is_dir() else path.read_bytes()
    return found


def tree(
    now: Mapping[str, bytes | None], before: Mapping[str, bytes | None] | None = None
) -> list[str]:
    """One line per entry: path, size, short sha256; marked against ``before``."""
    rows: list[tuple[str, str, str, str]] = []
    for name in sorted(set(now) | set(before or {})):
        content = now.get(name)
        if name not in now:
            rows.append((_label(name, (before or {})[name]), "", "", "gone"))
            continue
        mark = ""
        if before is not None:
            if name not in before:
                mark = "new"
            elif before[name] != content:
                mark = "changed"
        if content is None:
            rows.append((name + "/", "", "", mark))
        else:
            digest = hashlib.sha256(content).hexdigest()[:8]
            rows.append((name, f"{len(content)} B", digest, mark))
    width = max((len(row[0]) for row in rows), default=0)
    return [
        f"{path:<{width}}  {size:>6}  {digest:<8}  {mark}".rstrip()
        for path, size, digest, mark in rows
    ]


def _label(name: str, content: bytes | None) -> str:
    return name + "/" if content is None else name
