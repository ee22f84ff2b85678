"""A progress bar for long undos, drawn on a terminal's stderr and nowhere else."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from ._console import is_terminal

__all__ = ("ProgressBar",)

_CLEAR_LINE = "\r\x1b[K"


class ProgressBar:
    """``undoing  1234/5000 [#######.............]  24%``, redrawn in place.

    Use it as the ``progress`` callback of :meth:`~retract.Journal.undo_session` and call
    :meth:`close` afterwards. It draws only when ``stream`` is a terminal, and only for
    long undos: more than ``threshold`` operations, or still running after ``delay``
    seconds. Redraws are throttled to one per ``interval`` seconds, so the callback stays
    cheap when handlers are fast.

    :param clock: a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        label: str = "undoing",
        threshold: int = 200,
        delay: float = 0.5,
        interval: float = 0.1,
        bar_width: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.enabled = is_terminal(stream)
        self.visible = False
        self._label = label
        self._threshold = threshold
        self._delay = delay
        self._interval = interval
        self._bar_width = bar_width
        self._clock = clock
        self._started = clock()
        self._drawn_at: float | None = None

    def __call__(self, done: int, total: int) -> None:
        """Record progress: ``done`` operations handled out of ``total``."""
        if not self.enabled:
            return
        now = self._clock()
        if not self.visible and total <= self._threshold and now - self._started < self._delay:
            return
        finished = done >= total
        if self._drawn_at is not None and now - self._drawn_at < self._interval and not finished:
            return
        self._drawn_at = now
        self.visible = True
        self.stream.write(_CLEAR_LINE + self.render(done, total))
        self.stream.flush()

    def render(self, done: int, total: int) -> str:
        """The bar's text for ``done`` out of ``total`` (no control characters)."""
        fraction = min(done / total, 1.0) if total > 0 else 1.0
        filled = int(fraction * self._bar_width)
        bar = "#" * filled + "." * (self._bar_width - filled)
        digits = len(str(total))
        return f"{self._label} {done:>{digits}}/{total} [{bar}] {fraction:4.0%}"

    def close(self) -> None:
        """Erase the bar, so that the report starts on a clean line. Idempotent."""
        if self.visible:
            self.stream.write(_CLEAR_LINE)
            self.stream.flush()
            self.visible = False
