"""The three tracked containers, in one place for the modules that build children."""

from ._dict import TrackedDict
from ._list import TrackedList
from ._set import TrackedSet

__all__ = ("TrackedDict", "TrackedList", "TrackedSet")
