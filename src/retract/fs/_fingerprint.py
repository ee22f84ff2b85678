"""Fingerprints of files and trees, recorded by ``session.fs`` and checked by undo.

A file's fingerprint is its kind, size, permission bits, mtime and SHA-256; a
directory's adds a digest of its tree (names, kinds, sizes, modes and file mtimes, not
contents, so that fingerprinting a large tree stays cheap); a symlink's is its target.
Drift means the content or the permission bits differ; an mtime that moved while the
content stayed the same is not drift (a ``touch`` changes nothing undo would restore).
Everything here is blocking.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any

__all__ = ("drift", "fingerprint", "hash_bytes", "identity", "is_restored")

Fingerprint = dict[str, Any]
_CHUNK = 1024 * 1024


def hash_bytes(data: bytes) -> str:
    """SHA-256 of ``data`` as hex."""
    return hashlib.sha256(data).hexdigest()


def _hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _tree_digest(root: str) -> str:
    digest = hashlib.sha256()
    for current, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(current, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            kind = _kind(st.st_mode)
            line = f"{rel}\0{kind}\0{stat.S_IMODE(st.st_mode):o}"
            if kind == "file":
                line += f"\0{st.st_size}\0{st.st_mtime_ns}"
            elif kind == "symlink":
                line += f"\0{os.readlink(path)}"
            digest.update(os.fsencode(line) + b"\n")
    return digest.hexdigest()


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def fingerprint(path: str, *, content: bool = True) -> Fingerprint | None:
    """The fingerprint of ``path`` (not following a final symlink), or None if missing.

    :param content: hash a file's bytes and a directory's tree (False: metadata only).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = _kind(st.st_mode)
    found: Fingerprint = {"kind": kind, "mode": stat.S_IMODE(st.st_mode)}
    if kind == "file":
        found |= {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if content:
            found["sha256"] = _hash_file(path)
    elif kind == "symlink":
        found["target"] = os.readlink(path)
    elif kind == "dir" and content:
        found["tree"] = _tree_digest(path)
    return found


def drift(recorded: Fingerprint, path: str) -> list[str]:
    """How ``path`` differs from its ``recorded`` fingerprint; empty when it does not.

    Only what was recorded is compared, so an older, shorter record still works.
    """
    current = fingerprint(path, content=False)
    if current is None:
        return ["the path no longer exists"]
    changes: list[str] = []
    if current["kind"] != recorded.get("kind"):
        return [f"it is now a {current['kind']}, was a {recorded.get('kind')}"]
    if "mode" in recorded and current["mode"] != recorded["mode"]:
        changes.append(f"permission bits {recorded['mode']:o} -> {current['mode']:o}")
    if "size" in recorded and current.get("size") != recorded["size"]:
        changes.append(f"size {recorded['size']} -> {current.get('size')} bytes")
    elif "sha256" in recorded and _hash_file(path) != recorded["sha256"]:
        changes.append("content (SHA-256 differs)")
    if "target" in recorded and current.get("target") != recorded["target"]:
        changes.append(f"symlink target {recorded['target']!r} -> {current.get('target')!r}")
    if "tree" in recorded and _tree_digest(path) != recorded["tree"]:
        changes.append("the tree's entries, sizes, modes or file mtimes")
    return changes


def identity(path: str) -> Fingerprint | None:
    """Who ``path`` is (device and inode) and its metadata; None if missing.

    Recorded for what an operation takes away, so that a later undo can tell that an
    earlier, interrupted undo already put it back: a rename back keeps the inode, and a
    copy back across filesystems keeps kind, size, mode and mtime.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return {
        "dev": st.st_dev,
        "ino": st.st_ino,
        "kind": _kind(st.st_mode),
        "mode": stat.S_IMODE(st.st_mode),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


def is_restored(recorded: Fingerprint | None, path: str) -> bool:
    """Whether ``path`` is again the entry ``recorded`` by :func:`identity`."""
    current = identity(path)
    if recorded is None or current is None:
        return False
    if (current["dev"], current["ino"]) == (recorded["dev"], recorded["ino"]):
        return True
    keys = ["kind", "mode", "mtime_ns"]
    if current["kind"] != "dir":
        keys.append("size")
    return all(current[key] == recorded[key] for key in keys)
