"""TrackedAttr: a base class whose attribute assignments are recorded as changes."""

from __future__ import annotations

from typing import Any

from .._errors import ContainerLockedError
from ._base import MISSING, Tracked, detach
from ._change import Kind
from ._plain import plain
from ._tracker import DEFAULT_HISTORY, Tracker

__all__ = ("TrackedAttr",)


class _TrackedAttrMeta(type):
    """Tracking starts once ``__init__`` has returned (also a dataclass's generated one)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__call__(*args, **kwargs)
        if isinstance(obj, TrackedAttr):
            object.__setattr__(obj, "_paused", False)
        return obj


class TrackedAttr(Tracked, metaclass=_TrackedAttrMeta):
    """Subclass it (a dataclass too) to record every public attribute assignment.

    ::

        @dataclass
        class Server(TrackedAttr):
            host: str
            port: int = 80


        server = Server("db1")
        server.port = 5432  # Change(path=("port",), action="replace", old=80, new=5432)

    Assignments made while ``__init__`` runs are the object's starting state, not
    changes. Names starting with ``_`` are not tracked. Plain dicts, lists and sets
    assigned to attributes become tracked children. :meth:`lock_attribute` refuses
    assignments to one attribute; :meth:`lock` to all. Class attributes set the
    options the containers take as arguments: ``tracking_history`` (changes kept;
    None: unbounded), ``tracking_capture_snapshots`` and ``tracking_capture_stack``.
    """

    _kind: Kind = "object"
    _paused: bool
    _attr_locks: set[str]
    tracking_history: int | None = DEFAULT_HISTORY
    tracking_capture_snapshots: bool = False
    tracking_capture_stack: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__new__(cls)
        tracker = Tracker(
            obj,
            history=cls.tracking_history,
            capture_snapshots=cls.tracking_capture_snapshots,
            capture_stack=cls.tracking_capture_stack,
        )
        # Set before __init__ runs (a dataclass's __init__ never calls ours).
        vars(obj).update(
            _parent=None,
            _key=None,
            _locked=False,
            _paused=True,
            _attr_locks=set(),
            _tracker=tracker,
        )
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        if isinstance(value, dict | list | set):
            value = self._adopt(name, value)
        if self._paused:
            object.__setattr__(self, name, value)
            return
        self._check_attribute(name)
        old = getattr(self, name, MISSING)  # slots and properties too
        object.__setattr__(self, name, value)
        if old is MISSING:
            self._record((name,), "add", None, plain(value))
        else:
            detach(old)
            self._record((name,), "replace", plain(old), plain(value))

    def __delattr__(self, name: str) -> None:
        if name.startswith("_") or self._paused:
            object.__delattr__(self, name)
            return
        self._check_attribute(name)
        old = getattr(self, name, MISSING)  # slots and properties too
        object.__delattr__(self, name)  # AttributeError as usual when missing
        detach(old)
        self._record((name,), "remove", plain(old), None)

    def _check_attribute(self, name: str) -> None:
        if self._locked:
            self._refuse_locked()
        if name in self._attr_locks:
            raise ContainerLockedError(
                f"attribute {name!r} of this {type(self).__name__} is locked; call "
                f"unlock_attribute({name!r}) before assigning it"
            )

    def lock_attribute(self, name: str) -> None:
        """Refuse assignments to (and deletion of) attribute ``name``."""
        self._attr_locks.add(name)

    def unlock_attribute(self, name: str) -> None:
        """Allow assignments to attribute ``name`` again."""
        self._attr_locks.discard(name)

    def attribute_locked(self, name: str) -> bool:
        """Whether attribute ``name`` is locked (by itself or by :meth:`lock`)."""
        return self._locked or name in self._attr_locks

    def to_plain(self) -> dict[str, Any]:
        """The public attributes in ``vars()`` as a dict of plain deep copies."""
        return {name: plain(value) for name, value in vars(self).items() if name[:1] != "_"}

    def _refuse_locked(self) -> None:
        raise ContainerLockedError(
            f"this {type(self).__name__} is locked; call unlock() before changing it"
        )
