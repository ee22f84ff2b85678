"""Tracked containers: dicts, lists and sets that record, publish and revert changes."""

from ._attr import TrackedAttr as TrackedAttr
from ._change import Change as Change
from ._change import tracking_actor as tracking_actor
from ._collector import ChangeCollector as ChangeCollector
from ._containers import TrackedDict as TrackedDict
from ._containers import TrackedList as TrackedList
from ._containers import TrackedSet as TrackedSet
from ._subscribe import Subscription as Subscription
from ._subscribe import async_queue_observer as async_queue_observer
from ._tracker import DEFAULT_HISTORY as DEFAULT_HISTORY
from ._tracker import ChangeHistory as ChangeHistory

__all__ = (
    "DEFAULT_HISTORY",
    "Change",
    "ChangeCollector",
    "ChangeHistory",
    "Subscription",
    "TrackedAttr",
    "TrackedDict",
    "TrackedList",
    "TrackedSet",
    "async_queue_observer",
    "tracking_actor",
)
