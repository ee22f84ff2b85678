"""The built-in undo handlers of ``session.fs`` operations, with drift checks.

Before undo touches a path it compares it with the fingerprint the operation recorded.
If it changed since (content, size, permission bits, kind, or something new in a place
undo must fill), the drift policy decides: ``"refuse"`` (the default) raises
:class:`~retract.DriftError` and touches nothing for that step, ``"skip"`` leaves it and
marks the operation SKIPPED, ``"force"`` restores anyway. The policy is chosen per undo
(``journal.undo_session(..., drift="skip")``, ``retract undo --drift skip``).

Operations whose commit never reported (a crash, FAILED or IN_DOUBT) are resolved from
the disk: a before-image is always kept *before* the change, so its presence tells
whether the change can have happened.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal

from .._async import run_sync
from .._errors import DriftError, UndoSkipped
from ._durable import fsync_dir, remove_path
from ._fingerprint import drift, fingerprint, is_restored
from ._images import place_back
from ._rename import rename_noreplace

if TYPE_CHECKING:
    from ..journal._records import OperationRecord
    from ..journal._registry import OperationRegistry

__all__ = ("DRIFT_POLICIES", "DriftPolicy", "drift_policy", "register_fs_handlers")

logger = logging.getLogger("retract")

DriftPolicy = Literal["refuse", "skip", "force"]
DRIFT_POLICIES: tuple[DriftPolicy, ...] = ("refuse", "skip", "force")
#: The policy of the undo running in this context (set by ``Journal.undo_session``).
drift_policy: ContextVar[DriftPolicy] = ContextVar("retract_drift_policy", default="refuse")

Payload = dict[str, Any]
_NEVER = "the operation never took effect; nothing to undo"


def _guard(policy: DriftPolicy, path: str, changes: list[str], what: str) -> None:
    """Apply the drift policy to ``changes`` found at ``path``; return to go on."""
    if not changes:
        return
    found = f"{path} changed after {what}: {'; '.join(changes)}"
    if policy == "force":
        logger.warning("%s; restoring anyway (drift='force')", found)
        return
    if policy == "skip":
        raise UndoSkipped(f"{found}; left as it is (drift='skip')")
    raise DriftError(
        errno.ESTALE,
        f"{found}. Undo refused and left it untouched. Inspect it, then undo again with "
        "drift='force' (CLI: --drift force) to restore it anyway, or drift='skip' to "
        "leave it as it is",
        path,
        changes,
    )


def _same(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are one entry (hard links); symlinks are not followed."""
    try:
        first, second = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _matches(image: str, path: str) -> bool:
    """Whether ``path`` holds what the before-image holds (kind, bits, bytes or tree).

    Then undo has nothing to restore: the change never happened (the image is a link or
    a copy across filesystems of the untouched original) or it changed nothing.
    """
    kept = fingerprint(image)
    return kept is not None and not drift(kept, path)


def _sync(*paths: str) -> None:
    for directory in dict.fromkeys(os.path.dirname(p) for p in paths):
        if os.path.isdir(directory):
            fsync_dir(directory)


def _image_gone(path: str, image: str) -> FileNotFoundError:
    return FileNotFoundError(
        errno.ENOENT,
        f"cannot restore {path}: its before-image {image} is gone (was the session "
        "pruned, or the image area removed?)",
    )


def _finish_copy_back(image: str, path: str) -> bool:
    """True when ``path`` already holds the image's content: drop the image.

    Restoring across filesystems copies the image in, then removes it; an undo cut
    short between the two leaves both, and a rerun must not take the restored file for
    drift.
    """
    if os.path.lexists(image) and os.path.lexists(path) and _matches(image, path):
        remove_path(image)
        return True
    return False


def undo_write(p: Payload, policy: DriftPolicy) -> str | None:
    """Put the old file back (or remove the new one); the reason when nothing was done."""
    target, image = p["path"], p["image"]
    remove_path(p["temp"])
    if not p.get("committed"):
        if os.path.lexists(image) and (_same(target, image) or _matches(image, target)):
            remove_path(image)  # kept (linked or copied), but the file is as it was
            return _NEVER
        if not os.path.lexists(image) and (p["existed"] or not os.path.lexists(target)):
            return _NEVER  # the image is kept before any replace: nothing was replaced
        recorded, existed = p["new"], os.path.lexists(image)
    else:
        recorded, existed = p["after"], p["existed"]
        # An earlier undo that was cancelled or killed may have finished this one.
        if existed and not os.path.lexists(image):
            if is_restored(p.get("before"), target):
                return None
            raise _image_gone(target, image)
        if existed and _finish_copy_back(image, target):
            return None
        if not existed and not os.path.lexists(target):
            return None  # already removed: what undo wants
    _guard(policy, target, drift(recorded, target), "the write")
    if existed:
        place_back(image, target, replace=True, durable=True)
    else:
        remove_path(target)
        _sync(target)
    return None


def undo_move(p: Payload, policy: DriftPolicy) -> str | None:
    """Move ``dst`` back to ``src`` and restore what the move replaced."""
    if "moved" not in p or "image" not in p:
        return _undo_plain_move(p)
    src, dst, image = p["src"], p["dst"], p["image"]
    if not p.get("committed") and os.path.lexists(src):
        _restore_untouched(dst, image, policy)
        return _NEVER
    if os.path.lexists(src) and not drift(p["moved"], src) and _moved_back(p):
        return None
    _guard(policy, dst, drift(p["moved"], dst), "the move")
    if os.path.lexists(src):
        _guard(policy, src, ["something new exists at the source path"], "the move")
        remove_path(src)
    if os.path.lexists(dst):
        rename_noreplace(dst, src)
    if os.path.lexists(image):
        place_back(image, dst, replace=False, durable=True)
    _sync(src, dst)
    return None


def _moved_back(p: Payload) -> bool:
    """With the entry back at ``src``: whether an earlier undo did it; finish it if so."""
    dst, image = p["dst"], p["image"]
    if not p["replaced"]:
        return not os.path.lexists(dst)
    if os.path.lexists(image):
        if not os.path.lexists(dst):
            place_back(image, dst, replace=False, durable=True)
            return True
        return _finish_copy_back(image, dst)
    return is_restored(p.get("before"), dst)


def _undo_plain_move(p: Payload) -> str | None:
    """Undo an unmake-style ``fs.move`` record (``{"src", "dst"}``, no image)."""
    try:
        src, dst = os.path.abspath(p["src"]), os.path.abspath(p["dst"])
    except (KeyError, TypeError):
        raise _foreign("fs.move", p) from None
    if not os.path.lexists(dst):
        if os.path.lexists(src):
            return f"{dst} is gone and {src} exists: already moved back"
        raise FileNotFoundError(errno.ENOENT, f"cannot move {dst} back to {src}: both are gone")
    try:
        rename_noreplace(dst, src)
    except FileExistsError:
        raise FileExistsError(
            errno.EEXIST, f"cannot move {dst} back to {src}: {src} exists again"
        ) from None
    _sync(src, dst)
    return None


def _restore_untouched(dst: str, image: str, policy: DriftPolicy) -> None:
    """Undo the image-keeping step of a move or copy that never replaced ``dst``."""
    if not os.path.lexists(image):
        return
    if not os.path.lexists(dst):
        place_back(image, dst, replace=False, durable=True)  # moved aside, never replaced
    elif _same(dst, image) or _matches(image, dst):
        remove_path(image)  # a link or a copy of the untouched dst
    else:
        # The image is whole (it is made under a temp name), so dst either lost part of
        # itself when its removal across filesystems was cut short, or changed since.
        changes = ["it differs from the before-image kept of it (a removal cut short?)"]
        _guard(policy, dst, changes, "the operation")
        place_back(image, dst, replace=True, durable=True)


def undo_copy(p: Payload, policy: DriftPolicy) -> str | None:
    """Remove the copy and restore what it replaced."""
    dst, image = p["dst"], p["image"]
    remove_path(p["temp"])
    if not p.get("committed"):
        kept = os.path.lexists(image)
        untouched = not os.path.lexists(dst) or (
            kept and (_same(dst, image) or _matches(image, dst))
        )
        if untouched or (p["replaced"] and not kept):
            _restore_untouched(dst, image, policy)
            return _NEVER
    elif p["replaced"]:
        # An earlier undo that was cancelled or killed may have finished this one.
        if not os.path.lexists(image):
            if is_restored(p.get("before"), dst):
                return None
            raise _image_gone(dst, image)
        if _finish_copy_back(image, dst):
            return None
    elif not os.path.lexists(dst):
        return None  # already removed: what undo wants
    _guard(policy, dst, drift(p["copied"], dst), "the copy")
    remove_path(dst)
    if os.path.lexists(image):
        place_back(image, dst, replace=False, durable=True)
    _sync(dst)
    return None


def undo_removal(p: Payload, policy: DriftPolicy) -> str | None:
    """Put a deleted file or removed tree back from its before-image."""
    path, image = p["path"], p["image"]
    recorded = p.get("deleted") or p["removed"]
    if not os.path.lexists(image):
        if not p.get("committed"):
            return _NEVER
        if is_restored(p.get("before"), path):
            return None  # put back by an earlier undo that was cancelled or killed
        raise _image_gone(path, image)
    if os.path.lexists(path):
        if not p.get("committed") and _matches(image, path):
            remove_path(image)  # a copy made across filesystems; the original stayed
            return _NEVER
        if p.get("committed") and _finish_copy_back(image, path):
            return None
        # Not committed: the original may have been partly removed after its (whole)
        # image was copied across filesystems; say what differs.
        changes = [] if p.get("committed") else drift(recorded, path)
        _guard(policy, path, changes or ["something new exists at the path"], "the removal")
    place_back(image, path, replace=policy == "force", durable=True)
    return None


def undo_mkdir(p: Payload, policy: DriftPolicy) -> str | None:
    """Remove the directories the operation created, deepest first."""
    created: list[str] = p["created"] if "created" in p else p["create"]
    removed = False
    for folder in reversed(created):
        if not os.path.lexists(folder):
            continue
        if not os.path.isdir(folder) or os.path.islink(folder):
            _guard(policy, folder, ["it is no longer a directory"], "mkdir")
        elif entries := os.listdir(folder):
            _guard(policy, folder, [f"it is not empty ({len(entries)} entries)"], "mkdir")
        remove_path(folder)
        removed = True
    if removed:
        _sync(*created)
    return None if removed or p.get("committed") else _NEVER


_HANDLERS: dict[str, Callable[[Payload, DriftPolicy], str | None]] = {
    "fs.write": undo_write,
    "fs.move": undo_move,
    "fs.copy": undo_copy,
    "fs.delete": undo_removal,
    "fs.rmtree": undo_removal,
    "fs.mkdir": undo_mkdir,
}


#: Keys every payload written by ``session.fs`` has, per type (fs.move is checked by its
#: handler, which also undoes unmake-style records).
_REQUIRED = {
    "fs.write": ("path", "temp", "image", "existed", "new"),
    "fs.copy": ("src", "dst", "temp", "image", "replaced", "copied"),
    "fs.delete": ("path", "image", "deleted"),
    "fs.rmtree": ("path", "image", "removed"),
    "fs.mkdir": ("path", "create"),
}


def _foreign(op_type: str, payload: Payload) -> ValueError:
    return ValueError(
        f"this {op_type} operation was not written by session.fs (its payload "
        f"{sorted(payload)} lacks what the built-in handler needs); register your own "
        f"handler for {op_type!r} (registry.register or @registry.handler), which "
        "replaces the built-in one"
    )


def _make_handler(
    op_type: str, fn: Callable[[Payload, DriftPolicy], str | None]
) -> Callable[..., Any]:
    required = _REQUIRED.get(op_type, ())

    async def handle(op: OperationRecord) -> None:
        payload = op.payload
        if any(key not in payload for key in required):
            raise _foreign(op_type, payload)
        reason = await run_sync(fn, payload, drift_policy.get())
        if reason is not None:
            raise UndoSkipped(reason)

    handle.__name__ = handle.__qualname__ = fn.__name__
    handle.__doc__ = fn.__doc__
    return handle


def register_fs_handlers(registry: OperationRegistry) -> None:
    """Register the undo handlers of every ``session.fs`` operation type."""
    for op_type, fn in _HANDLERS.items():
        registry.handler(op_type)(_make_handler(op_type, fn))
