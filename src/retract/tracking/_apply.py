"""Applying a Change to a tracked tree: replay, and (with its inverse) revert."""

from __future__ import annotations

from typing import Any

from ._attr import TrackedAttr
from ._change import Change
from ._containers import TrackedDict, TrackedList, TrackedSet

__all__ = ("apply", "container_at")


def container_at(root: Any, path: tuple[Any, ...]) -> Any:
    node = root
    for key in path:
        node = getattr(node, key) if isinstance(node, TrackedAttr) else node[key]
    return node


def apply(root: Any, change: Change) -> None:
    """Make ``change`` on the tree under ``root`` through its tracked methods.

    :raises LookupError: the path does not lead to a container of the change's kind.
    :raises ValueError: the change's action does not fit that container.
    """
    action = change.action
    if action == "assign":
        target = container_at(root, change.path)
        _check_kind(target, change)
        target._assign(change.new)
        return
    *parent_path, last = change.path
    target = container_at(root, tuple(parent_path))
    _check_kind(target, change)
    if isinstance(target, TrackedAttr):
        if action in ("add", "replace"):
            setattr(target, last, change.new)
        elif action == "remove":
            delattr(target, last)
        else:
            raise ValueError(f"an object has no {action!r} change")
    elif isinstance(target, TrackedSet):
        if action == "add":
            target.add(change.new)
        elif action == "remove":
            target.remove(change.old)
        else:
            raise ValueError(f"a set has no {action!r} change")
    elif isinstance(target, TrackedList):
        if action == "add":
            target.insert(last, change.new)
        elif action == "replace":
            target[last] = change.new
        elif action == "remove":
            del target[last]
        else:  # splice
            target[last : last + len(change.old)] = change.new
    elif action in ("add", "replace"):
        target[last] = change.new
    elif action == "remove":
        del target[last]
    else:
        raise ValueError(f"a dict has no {action!r} change")


def _check_kind(target: Any, change: Change) -> None:
    expected = {
        "dict": TrackedDict,
        "list": TrackedList,
        "set": TrackedSet,
        "object": TrackedAttr,
    }[change.kind]
    if not isinstance(target, expected):
        raise LookupError(
            f"change #{change.seq} is about a {change.kind} at {change.path!r}, but that "
            f"path leads to a {type(target).__name__} here"
        )
