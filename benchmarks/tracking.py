"""Tracked containers against pydatatracker and psygnal, in one process, as ratios.

Run: ``uv run --group bench python benchmarks/tracking.py`` (``--quick`` for a smoke run).

pydatatracker, the predecessor, installs on Python 3.12+ only. On an older interpreter
this script runs itself again on 3.12 (``uv run --python 3.12 --group bench``, in the
environment ``.nox/bench-3.12``), so that retract, psygnal, pydatatracker and the plain
builtins are all measured in that one process. ``--without-pydatatracker`` stays on
the current interpreter and skips pydatatracker.

Targets (from issue 4):

1. ``TrackedDict.__setitem__`` with one subscriber (``d.subscribe()``, read by an
   ``async for`` consumer): at least 30x faster than pydatatracker's ``TrackedDict`` with one
   observer, at least 4x faster than psygnal's ``EventedDict`` with one callback, and at
   most 25x the cost of a plain ``dict`` set;
2. ``TrackedList.append`` with one subscriber: at least 20x faster than psygnal's
   ``EventedList.append`` with one callback;
3. retract's cost per write with 100,000 changes of history within 1.3x of the cost
   with none.

Method: a timed batch is 100 writes into a fresh container (16 keys created and the
subscriber or callback attached beforehand, untimed), so every library is measured at
the same short history: pydatatracker's writes get slower as its history grows (each
one scans its whole change list). A batch of the plain builtins covers 40 fresh
containers, so that every timed span is long next to the clock's own cost. The peers'
callbacks do nothing; retract's subscriber queues every change, and a consumer reads
them after the batch (untimed, reported apart). Within a round the contenders take
turns batch by batch, in an order that rotates, and the verdicts compare medians over
the rounds. Batches are timed in this thread's CPU time (``--wall``: wall-clock time),
so another process taking the CPU does not count. Every contender runs its own copy of
the timed loop, so the interpreter's specialization for one type never slows another
(a store into an exact dict is specialized, a subclass's is not).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import os
import shutil
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from retract import TrackedDict, TrackedList

_MISSING: str | None = None
try:
    import psygnal
    from psygnal.containers import EventedDict, EventedList
except ImportError as exc:  # pragma: no cover - the bench group is not installed
    _MISSING = exc.name or str(exc)

try:
    import pydatatracker
except ImportError:  # Python < 3.12, or the bench group is not installed
    pydatatracker = None

ROOT = Path(__file__).resolve().parent.parent
CHILD_FLAG = "RETRACT_BENCH_TRACKING_CHILD"  # set in the 3.12 run: never re-run twice
KEYS = [f"key{i}" for i in range(16)]
BATCH = 100  # timed writes per fresh container
HISTORY = 100_000  # scenario 3's long history, in changes

F = TypeVar("F", bound=Callable[..., Any])


class Clock:
    """What is timed: this thread's CPU time (``--wall``: the wall clock).

    On a shared machine another process can take the CPU in the middle of a batch; CPU
    time leaves that out and still counts what the batch itself does (its garbage
    collections included). Reading it costs a system call (about 1 us here), so a
    timed span always lasts 100 us or more.
    """

    now: Callable[[], float] = time.thread_time


Loop = Callable[[Any, Sequence[Any]], None]


# -- timed loops: each contender gets its own copy ------------------------------------


def _set_items(d: Any, pairs: Sequence[tuple[Any, Any]]) -> None:
    for key, value in pairs:
        d[key] = value


def _append_items(items: Any, values: Sequence[Any]) -> None:
    for value in values:
        items.append(value)


def _empty_loop(_target: Any, pairs: Sequence[tuple[Any, Any]]) -> None:
    for _key, _value in pairs:
        pass


def _own_copy(fn: F) -> F:
    """``fn`` with a code object of its own (specialization caches are per code object)."""
    code = fn.__code__.replace()
    assert code is not fn.__code__
    return types.FunctionType(code, fn.__globals__, fn.__name__)  # type: ignore[return-value]


# -- contenders -----------------------------------------------------------------------


@dataclass
class Contender:
    """A fresh container per batch, the timed loop over it, and an untimed check."""

    label: str
    make: Callable[[], tuple[Any, Any]]  # (container, its subscription or None)
    loop: Loop
    reference: bool = False  # printed with a * : not part of a target
    # fresh containers written in one timed span: more than 1 for the plain builtins,
    # so that a span is long next to the clock's own cost
    per_batch: int = 1


def _noop(*_args: Any) -> None:
    return None


def _plain_dict() -> tuple[Any, Any]:
    d = dict.fromkeys(KEYS, -1)
    return d, None


def _retract_dict(*, history: int | None = 10_000, how: str = "subscribe") -> tuple[Any, Any]:
    d: TrackedDict[str, int] = TrackedDict(history=history)
    for key in KEYS:
        d[key] = -1
    if how == "observer":
        d.tracking_add_observer(_noop)
    return d, (d.subscribe() if how == "subscribe" else None)


def _psygnal_dict() -> tuple[Any, Any]:
    d: Any = EventedDict()
    for key in KEYS:
        d[key] = -1
    d.events.changed.connect(_noop)
    return d, None


def _pydatatracker_dict() -> tuple[Any, Any]:
    d = pydatatracker.TrackedDict()
    for key in KEYS:
        d[key] = -1
    d.tracking_add_observer(_noop)
    return d, None


def _retract_list(*, subscribe: bool = True) -> tuple[Any, Any]:
    items: TrackedList[int] = TrackedList()
    return items, (items.subscribe() if subscribe else None)


def _psygnal_list(*, child_events: bool = True) -> tuple[Any, Any]:
    items: Any = EventedList(child_events=child_events)
    items.events.inserted.connect(_noop)
    return items, None


class Consumer:
    """Reads a batch's changes from its subscription, as a consumer task would."""

    def __init__(self) -> None:
        self.per_change: list[float] = []

    async def drain(self, sub: Any, expected: Sequence[Any]) -> None:
        started = Clock.now()
        seen = []
        if expected:
            async for change in sub:
                seen.append(change.new)
                if len(seen) == len(expected):
                    break
        self.per_change.append((Clock.now() - started) / max(1, len(expected)))
        assert seen == list(expected), "the subscriber missed or reordered changes"
        assert sub.qsize() == 0, "the subscriber got changes that were not made"
        sub.close()


async def _interleaved(
    contenders: dict[str, Contender],
    items: Sequence[Any],
    *,
    rounds: int,
    batches: int,
    consumer: Consumer,
    expected: Sequence[Any],
    before_round: Callable[[], None] | None = None,
    after_round: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per write, one figure per round and contender.

    Each contender times ``batches`` batches per round; the contenders take turns
    batch by batch, in an order that rotates after every batch.
    """
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    turn = 0
    for _ in range(rounds):
        if before_round is not None:
            before_round()
        totals = dict.fromkeys(names, 0.0)
        for _ in range(batches):
            shift = turn % len(names)
            turn += 1
            for name in names[shift:] + names[:shift]:
                contender = contenders[name]
                made = [contender.make() for _ in range(contender.per_batch)]
                loop = contender.loop
                started = Clock.now()
                for target, _sub in made:
                    loop(target, items)
                totals[name] += Clock.now() - started
                for _target, sub in made:
                    if sub is not None:
                        await consumer.drain(sub, expected)
        for name in names:
            writes = batches * contenders[name].per_batch * len(items)
            times[name].append(totals[name] / writes)
        if after_round is not None:
            after_round()
    return times


def _check_peers() -> None:
    """The peers' callbacks really fire for the writes that are timed."""
    calls: list[Any] = []
    d: Any = EventedDict({"k": 1})
    d.events.changed.connect(lambda *args: calls.append(args))
    d["k"] = 2
    items: Any = EventedList()
    items.events.inserted.connect(lambda *args: calls.append(args))
    items.append(3)
    assert calls == [("k", 1, 2), (0, 3)], calls
    if pydatatracker is not None:
        tracked = pydatatracker.TrackedDict({"k": 1})
        tracked.tracking_add_observer(calls.append)
        tracked["k"] = 2
        assert len(calls) == 3, calls


# -- reporting ------------------------------------------------------------------------


def _us(seconds: float) -> str:
    micro = seconds * 1e6
    return f"{micro:,.3f} us" if micro < 10 else f"{micro:,.1f} us"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _within(num: Sequence[float], den: Sequence[float]) -> str:
    pairs = sorted(a / b for a, b in zip(num, den, strict=True))
    return f"within a round {pairs[0]:.2f}-{pairs[-1]:.2f}x"


def _table(contenders: dict[str, Contender], times: dict[str, list[float]], base: str) -> None:
    base_median = statistics.median(times[base])
    for name, contender in contenders.items():
        values = times[name]
        label = contender.label + ("*" if contender.reference else "")
        median = statistics.median(values)
        print(
            f"   {label:<42} {_us(median):>11}  ({_us(min(values))}-{_us(max(values))})"
            f"  {median / base_median:7.1f}x {contenders[base].label}"
        )


# -- the scenarios --------------------------------------------------------------------


async def scenario_1(rounds: int, batches: int, *, with_pdt: bool) -> bool:
    pairs = [(KEYS[i % len(KEYS)], i) for i in range(BATCH)]
    contenders = {
        "dict": Contender("plain dict", _plain_dict, _own_copy(_set_items), per_batch=40),
        "loop": Contender(
            "the loop alone", _plain_dict, _own_copy(_empty_loop), reference=True, per_batch=40
        ),
        "retract": Contender("retract, 1 subscriber", _retract_dict, _own_copy(_set_items)),
        "observer": Contender(
            "retract, 1 observer callback",
            lambda: _retract_dict(how="observer"),
            _own_copy(_set_items),
            reference=True,
        ),
        "bare": Contender(
            "retract, no subscriber",
            lambda: _retract_dict(how="none"),
            _own_copy(_set_items),
            reference=True,
        ),
        "psygnal": Contender(
            "psygnal EventedDict, 1 callback", _psygnal_dict, _own_copy(_set_items)
        ),
    }
    if with_pdt:
        contenders["pdt"] = Contender(
            "pydatatracker TrackedDict, 1 observer", _pydatatracker_dict, _own_copy(_set_items)
        )
    consumer = Consumer()
    expected = [value for _key, value in pairs]
    # warm-up: imports, the interpreter's specialization, the allocator's pools
    await _interleaved(contenders, pairs, rounds=1, batches=2, consumer=consumer, expected=expected)
    consumer.per_change.clear()
    times = await _interleaved(
        contenders, pairs, rounds=rounds, batches=batches, consumer=consumer, expected=expected
    )
    print(
        f"\n1. d[key] = value: {BATCH} overwrites of {len(KEYS)} keys per fresh dict, "
        f"{batches} dicts per round; time per write: median of the rounds (range)"
    )
    _table(contenders, times, "dict")
    print(
        "   * reference, not a target. retract's consumer then reads each change in "
        f"{_us(statistics.median(consumer.per_change))} (`async for` over the "
        "subscription; untimed above)"
    )
    med = {name: statistics.median(values) for name, values in times.items()}
    mine = med["retract"]
    ok = True
    if with_pdt:
        ratio = med["pdt"] / mine
        ok &= ratio >= 30
        print(
            f"   {_verdict(ratio >= 30)} target 1a: retract {ratio:.1f}x faster than "
            f"pydatatracker (target >= 30x; {_within(times['pdt'], times['retract'])})"
        )
    else:
        print("   SKIP target 1a: pydatatracker not measured (it needs Python 3.12+)")
    ratio = med["psygnal"] / mine
    ok &= ratio >= 4
    print(
        f"   {_verdict(ratio >= 4)} target 1b: retract {ratio:.1f}x faster than psygnal "
        f"(target >= 4x; {_within(times['psygnal'], times['retract'])})"
    )
    ratio = mine / med["dict"]
    net = (mine - med["loop"]) / (med["dict"] - med["loop"])
    ok &= ratio <= 25
    print(
        f"   {_verdict(ratio <= 25)} target 1c: retract {ratio:.1f}x the time of a plain "
        f"dict set (target <= 25x; {_within(times['retract'], times['dict'])}; "
        f"{net:.0f}x without the loop's own cost)"
    )
    return ok


async def scenario_2(rounds: int, batches: int) -> bool:
    values = list(range(BATCH))
    contenders = {
        "list": Contender("plain list", lambda: ([], None), _own_copy(_append_items), per_batch=40),
        "retract": Contender("retract, 1 subscriber", _retract_list, _own_copy(_append_items)),
        "bare": Contender(
            "retract, no subscriber",
            lambda: _retract_list(subscribe=False),
            _own_copy(_append_items),
            reference=True,
        ),
        "psygnal": Contender(
            "psygnal EventedList, 1 callback", _psygnal_list, _own_copy(_append_items)
        ),
        "nochild": Contender(
            "psygnal, child_events=False",
            lambda: _psygnal_list(child_events=False),
            _own_copy(_append_items),
            reference=True,
        ),
    }
    consumer = Consumer()
    await _interleaved(contenders, values, rounds=1, batches=2, consumer=consumer, expected=values)
    times = await _interleaved(
        contenders, values, rounds=rounds, batches=batches, consumer=consumer, expected=values
    )
    print(
        f"\n2. items.append(value): {BATCH} appends per fresh list, {batches} lists per "
        "round; time per append"
    )
    _table(contenders, times, "list")
    print(
        "   * reference, not a target: psygnal without its default look for signals in "
        "every inserted value (child_events=True is the default)"
    )
    ratio = statistics.median(times["psygnal"]) / statistics.median(times["retract"])
    ok = ratio >= 20
    print(
        f"   {_verdict(ok)} target 2: retract {ratio:.1f}x faster than psygnal "
        f"(target >= 20x; {_within(times['psygnal'], times['retract'])})"
    )
    return ok


def _filled(history: int | None, changes: int) -> TrackedDict[str, int]:
    d: TrackedDict[str, int] = TrackedDict(history=history)
    for i in range(changes):
        d[KEYS[i % len(KEYS)]] = i
    return d


async def scenario_3(rounds: int, batches: int, history: int, *, with_pdt: bool) -> bool:
    pairs = [(KEYS[i % len(KEYS)], i) for i in range(BATCH)]
    held: dict[str, TrackedDict[str, int]] = {}

    def before_round() -> None:
        # Built anew every round and dropped after it, so that the process does not
        # carry them into the next round.
        held["long"] = _filled(None, history)
        held["full"] = _filled(10_000, 10_000)
        assert len(held["long"].tracking_changes()) == history

    def after_round() -> None:
        assert len(held["long"].tracking_changes()) == history + batches * BATCH
        assert len(held["full"].tracking_changes()) == 10_000
        held.clear()
        gc.collect()

    def attached(name: str) -> Callable[[], tuple[Any, Any]]:
        return lambda: (held[name], held[name].subscribe())

    contenders = {
        "none": Contender(
            "history=None, none yet", lambda: _retract_dict(history=None), _own_copy(_set_items)
        ),
        "long": Contender(
            f"history=None, {history:,} changes", attached("long"), _own_copy(_set_items)
        ),
        "full": Contender(
            "history=10_000 (the default), full",
            attached("full"),
            _own_copy(_set_items),
            reference=True,
        ),
    }
    consumer = Consumer()
    expected = [value for _key, value in pairs]
    times = await _interleaved(
        contenders,
        pairs,
        rounds=rounds,
        batches=batches,
        consumer=consumer,
        expected=expected,
        before_round=before_round,
        after_round=after_round,
    )
    print(
        f"\n3. retract: d[key] = value with 1 subscriber, {BATCH}-write batches, {batches} "
        "per round; time per write by history length"
    )
    _table(contenders, times, "none")
    print("   * reference, not a target: the default bound, where every write drops the oldest")
    if with_pdt:
        _pydatatracker_history(history, max(3, min(rounds, 5)))
    ratio = statistics.median(times["long"]) / statistics.median(times["none"])
    ok = ratio <= 1.3
    print(
        f"   {_verdict(ok)} target 3: {history:,} changes of history cost {ratio:.2f}x the "
        f"time per write of none (target <= 1.3x; {_within(times['long'], times['none'])})"
    )
    return ok


def _pydatatracker_history(history: int, rounds: int) -> None:
    """Reference: pydatatracker's writes as its history grows, up to the same length.

    Writing 100,000 changes through it would take hours (each write scans its whole
    change list), so the list is filled directly with entries like the ones its writes
    make, in steps; 10 writes are timed at each length, against 10 on a fresh dict.
    """
    d, _ = _pydatatracker_dict()
    entries = d._tracking_changes
    lengths = sorted({n for n in (1_000, 10_000, history) if n <= history})
    loops = {n: _own_copy(_set_items) for n in lengths}
    loop_fresh = _own_copy(_set_items)
    pairs = [(KEYS[i % len(KEYS)], i) for i in range(10)]
    fresh: list[float] = []
    at: dict[int, list[float]] = {n: [] for n in lengths}
    for _ in range(rounds):
        new, _ = _pydatatracker_dict()
        started = Clock.now()
        loop_fresh(new, pairs)
        fresh.append((Clock.now() - started) / len(pairs))
    for n in lengths:
        entries.extend(
            pydatatracker.ChangeLogEntry(
                d._tracking_uuid,
                capture_stack=False,
                action="update",
                value=i,
                location=KEYS[i % len(KEYS)],
                method="__setitem__",
                locked=False,
                type="TrackedDict",
                actor=None,
            )
            for i in range(n - len(entries))
        )
        for _ in range(rounds):
            del entries[n:]  # the same length for every sample
            started = Clock.now()
            loops[n](d, pairs)
            at[n].append((Clock.now() - started) / len(pairs))
    base = statistics.median(fresh)
    steps = ", ".join(
        f"{n:,}: {_us(statistics.median(at[n]))} ({statistics.median(at[n]) / base:,.0f}x)"
        for n in lengths
    )
    print(
        f"   * reference: pydatatracker per write, {_us(base)} on a fresh dict; with N entries "
        f"in its change list (filled directly) {steps}"
    )


# -- driver ---------------------------------------------------------------------------


def _rerun_on_312(argv: list[str]) -> int:
    """Run this script again on Python 3.12, where pydatatracker installs."""
    uv = shutil.which("uv")
    if uv is None:
        print("pydatatracker needs Python 3.12 and uv is not on PATH (or: --without-pydatatracker)")
        return 2
    location = ROOT / ".nox" / "bench-3.12"
    env = os.environ | {
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_PROJECT_ENVIRONMENT": str(location),
        "VIRTUAL_ENV": str(location),
        CHILD_FLAG: "1",
    }
    env.pop("UV_PYTHON", None)
    pyenv = shutil.which("pyenv")
    if pyenv:
        # pyenv's shims show only the selected interpreters: add 3.12 (as noxfile.py does)
        versions = subprocess.run(
            [pyenv, "versions", "--bare"], capture_output=True, text=True, check=False
        ).stdout.split()
        selected = [v for v in env.get("PYENV_VERSION", "").split(":") if v]
        wanted = [v for v in versions if v.startswith("3.12.")]
        env["PYENV_VERSION"] = ":".join(dict.fromkeys(selected + wanted))
    command = [uv, "run", "--python", "3.12", "--group", "bench", "python", __file__, *argv]
    print(
        f"pydatatracker needs Python 3.12+ (this is {sys.version.split()[0]}): the whole "
        f"benchmark runs there, in {location.relative_to(ROOT)}",
        flush=True,
    )
    return subprocess.run(command, env=env, cwd=ROOT, check=False).returncode


def _versions(with_pdt: bool) -> str:
    compiled = "compiled" if psygnal._compiled else "pure Python"
    text = f"psygnal {importlib.metadata.version('psygnal')} ({compiled})"
    if with_pdt:
        text += f", pydatatracker {importlib.metadata.version('pydatatracker')}"
        if pydatatracker.__version__ != importlib.metadata.version("pydatatracker"):
            text += f" (it says {pydatatracker.__version__})"
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 5 batches")
    parser.add_argument("--rounds", type=int, default=9, help="rounds per scenario (medians)")
    parser.add_argument("--batches", type=int, default=40, help="batches per round and contender")
    parser.add_argument(
        "--history", type=int, default=HISTORY, help="scenario 3's long history, in changes"
    )
    parser.add_argument(
        "--wall", action="store_true", help="time with the wall clock instead of CPU time"
    )
    parser.add_argument(
        "--without-pydatatracker",
        action="store_true",
        help="stay on this interpreter and skip pydatatracker (it needs Python 3.12+)",
    )
    args = parser.parse_args(argv)
    if _MISSING is not None:
        print(f"{_MISSING} is not installed: uv run --group bench python benchmarks/tracking.py")
        return 2
    with_pdt = not args.without_pydatatracker
    if with_pdt and pydatatracker is None:
        if sys.version_info < (3, 12) and CHILD_FLAG not in os.environ:
            return _rerun_on_312(argv)
        print("pydatatracker is not installed: uv run --python 3.12 --group bench ...")
        return 2
    rounds = 1 if args.quick else args.rounds
    batches = 5 if args.quick else args.batches
    if args.wall:
        Clock.now = time.perf_counter
    _check_peers()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {_versions(with_pdt)}, "
        f"{rounds} round(s), {'wall-clock' if args.wall else 'CPU'} time, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    started = time.monotonic()
    ok = asyncio.run(_main(rounds, batches, args.history, with_pdt=with_pdt))
    print(
        f"\nload average at the end {os.getloadavg()[0]:.2f}, "
        f"{time.monotonic() - started:.0f} s; exit status {0 if ok else 1}"
    )
    return 0 if ok else 1


async def _main(rounds: int, batches: int, history: int, *, with_pdt: bool) -> bool:
    ok = await scenario_1(rounds, batches, with_pdt=with_pdt)
    ok &= await scenario_2(rounds, batches)
    ok &= await scenario_3(rounds, batches, history, with_pdt=with_pdt)
    return ok


if __name__ == "__main__":
    sys.exit(main())
