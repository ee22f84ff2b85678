"""The files of ``retract demo``: seeding, the four changes, their undo handlers, snapshots.

Everything here is blocking file I/O; ``_demo.py`` runs it in worker threads, and the
undo handlers are registered with ``blocking=True`` for the same reason. Paths in
payloads are relative to the demo's root directory, so ``show`` stays readable.

The demo skips fsync: its files are throwaway, and its point is the journal, not
durability (the journal itself still commits durably).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from .._errors import UndoSkipped
from ..journal import OperationRecord, OperationRegistry

__all__ = (
    "BACKUP_DIR",
    "FILES_DIR",
    "SEED",
    "Snapshot",
    "create_file",
    "delete_file",
    "edit_file",
    "make_registry",
    "missing_dirs",
    "move_file",
    "seed",
    "snapshot",
    "tree",
)

#: Where the demo's files live, under the root.
FILES_DIR = "files"
#: Before-images kept for undo, under the root (outside the files, so they never show).
BACKUP_DIR = ".retract-demo-backup"

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


# -- the changes (run inside session.step blocks) ---------------------------------------


def edit_file(root: Path, path: str, backup: str, content: bytes) -> None:
    """Keep a before-image of ``path`` at ``backup``, then replace its content."""
    target = root / path
    (root / backup).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(target, root / backup)
    _replace(target, content)


def missing_dirs(root: Path, path: str) -> list[str]:
    """The parent directories of ``path`` that do not exist yet, outermost first."""
    missing: list[str] = []
    parent = Path(path).parent
    while parent != Path() and not (root / parent).exists():
        missing.insert(0, parent.as_posix())
        parent = parent.parent
    return missing


def move_file(root: Path, src: str, dst: str, make_dirs: list[str]) -> None:
    """Create ``make_dirs``, then rename ``src`` to ``dst``."""
    for directory in make_dirs:
        (root / directory).mkdir(exist_ok=True)
    os.rename(root / src, root / dst)


def delete_file(root: Path, path: str, backup: str) -> None:
    """Delete ``path`` by moving it to ``backup``, where undo finds it again."""
    (root / backup).parent.mkdir(parents=True, exist_ok=True)
    os.rename(root / path, root / backup)


def create_file(root: Path, path: str, content: bytes) -> None:
    """Create ``path``; it must not exist."""
    with (root / path).open("xb") as file:
        file.write(content)


def _replace(target: Path, content: bytes) -> None:
    temp = target.with_name(f".{target.name}.retract-demo-tmp")
    temp.write_bytes(content)
    shutil.copymode(target, temp)
    os.replace(temp, target)


# -- their undo handlers ----------------------------------------------------------------


def make_registry(root: Path) -> OperationRegistry:
    """Undo handlers for the demo's operation types, resolving paths under ``root``.

    Each handler checks the files before acting, so that an operation whose effect is in
    doubt (a crash between intent and effect) is undone only as far as it happened.
    """
    registry = OperationRegistry()

    @registry.handler("demo.write", blocking=True)
    def undo_write(op: OperationRecord) -> None:
        backup = root / op.payload["backup"]
        if not backup.exists():
            raise UndoSkipped("no before-image: the file was never changed")
        # The before-image stays: restoring it twice (a retried undo) is harmless.
        _replace(root / op.payload["path"], backup.read_bytes())

    @registry.handler("demo.move", blocking=True)
    def undo_move(op: OperationRecord) -> None:
        src, dst = root / op.payload["src"], root / op.payload["dst"]
        moved = dst.exists() and not src.exists()
        if moved:
            os.rename(dst, src)
        elif not src.exists():
            raise FileNotFoundError(f"neither {src} nor {dst} exists; cannot move it back")
        for directory in reversed(op.payload["make_dirs"]):
            if (root / directory).is_dir() and not any((root / directory).iterdir()):
                (root / directory).rmdir()
        if not moved:
            raise UndoSkipped("the file was never moved")

    @registry.handler("demo.delete", blocking=True)
    def undo_delete(op: OperationRecord) -> None:
        path, backup = root / op.payload["path"], root / op.payload["backup"]
        if not backup.exists():
            raise UndoSkipped("the file was never deleted")
        if path.exists():
            raise FileExistsError(f"{path} exists again; not overwriting it")
        os.rename(backup, path)

    @registry.handler("demo.create", blocking=True)
    def undo_create(op: OperationRecord) -> None:
        path = root / op.payload["path"]
        if not path.exists():
            raise UndoSkipped("the file was never created")
        path.unlink()

    return registry
