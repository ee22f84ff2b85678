"""The progress bar, in isolation: when it draws, how often, and what it looks like."""

from __future__ import annotations

import io

from retract.cli._progress import ProgressBar

from .conftest import FakeTerminal


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_never_draws_when_not_a_terminal() -> None:
    """On a pipe or file nothing is written, however long the undo."""
    stream = io.StringIO()
    clock = Clock()
    bar = ProgressBar(stream, clock=clock)
    for done in range(1, 1001):
        clock.now += 1
        bar(done, 1000)
    bar.close()
    assert stream.getvalue() == ""
    assert not bar.enabled


def test_short_fast_undo_draws_nothing() -> None:
    """A few operations finishing within the delay leave the terminal untouched."""
    stream = FakeTerminal()
    clock = Clock()
    bar = ProgressBar(stream, clock=clock)
    for done in range(1, 11):
        clock.now += 0.01
        bar(done, 10)
    bar.close()
    assert stream.getvalue() == ""


def test_many_operations_draw_at_once() -> None:
    """More than the threshold: the first call already draws."""
    stream = FakeTerminal()
    bar = ProgressBar(stream, clock=Clock())
    bar(1, 201)
    assert stream.getvalue() == "\r\x1b[Kundoing   1/201 [..............................]   0%"


def test_slow_undo_draws_after_the_delay() -> None:
    """Few but slow operations: drawn once the undo has run longer than the delay."""
    stream = FakeTerminal()
    clock = Clock()
    bar = ProgressBar(stream, clock=clock)
    bar(1, 4)
    assert stream.getvalue() == ""
    clock.now += 0.6
    bar(2, 4)
    assert stream.getvalue().endswith("undoing 2/4 [###############...............]  50%")


def test_redraws_are_throttled_but_the_end_is_drawn() -> None:
    """Within one interval only the first update and the final one are drawn."""
    stream = FakeTerminal()
    clock = Clock()
    bar = ProgressBar(stream, clock=clock, interval=0.1)
    for done in range(1, 1001):
        clock.now += 0.00001
        bar(done, 1000)
    drawn = stream.getvalue().split("\r\x1b[K")[1:]
    assert [frame.split()[1] for frame in drawn] == ["1/1000", "1000/1000"]


def test_close_erases_the_line_once() -> None:
    """close() clears a drawn bar, and is idempotent."""
    stream = FakeTerminal()
    bar = ProgressBar(stream, clock=Clock())
    bar(300, 300)
    bar.close()
    bar.close()
    assert stream.getvalue().endswith("100%\r\x1b[K")
    assert stream.getvalue().count("\r\x1b[K") == 2


def test_render_is_plain_text() -> None:
    """The rendered bar has the label, counts, bar and percentage, no control codes."""
    bar = ProgressBar(io.StringIO(), label="undoing", bar_width=10)
    assert bar.render(3, 12) == "undoing  3/12 [##........]  25%"
    assert bar.render(0, 0) == "undoing 0/0 [##########] 100%"
