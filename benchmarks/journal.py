"""Journal throughput and undo against unmake, in the same process, printed as ratios.

Run: ``uv run --group bench python benchmarks/journal.py`` (``--quick`` for a smoke run).

Scenarios (from issue 2):

1. sequential awaited ``record_operation`` at unmake's durability (WAL, synchronous=FULL,
   one commit per record), against unmake's sequential ``record_operation``;
2. 100 concurrent sessions x 100 records, every awaited record durable, against
   unmake's sequential rate;
3. undo of a 10,000-operation session with no-op handlers, progress recorded, against
   unmake's undo (which records no progress);
4. undo of a 1,000,000-operation session: peak memory growth while it streams.

Each pair is measured alternately several times and the medians are compared, because
the disk's fsync latency drifts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from retract import OperationRecord, OperationRegistry, open_journal

try:
    import unmake
except ImportError:  # pragma: no cover - the bench group is not installed
    unmake = None


def _median_rate(samples: list[float]) -> float:
    return statistics.median(samples)


# -- unmake -------------------------------------------------------------------------


def unmake_sequential(directory: Path, n: int) -> float:
    manager = unmake.HistoryManager(unmake.SQLiteStorage(directory / "unmake-seq.db"))
    with manager.start_session(script="bench") as session:
        started = time.perf_counter()
        for i in range(n):
            session.record_operation("bench.noop", {"i": i})
        return n / (time.perf_counter() - started)


class _NoopUndo:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload

    def undo(self) -> None:
        return None


def unmake_undo(directory: Path, n: int) -> float:
    manager = unmake.HistoryManager(unmake.SQLiteStorage(directory / "unmake-undo.db"))
    storage = manager.storage
    with manager.start_session(script="bench") as session:
        for i in range(n):
            storage.append_operation(
                session_id=session.session_id, op_type="bench.noop", payload={"i": i}
            )
    registry = unmake.OperationRegistry()
    registry.register("bench.noop", _NoopUndo)
    started = time.perf_counter()
    manager.undo_session(session.session_id, registry)
    return n / (time.perf_counter() - started)


# -- retract ------------------------------------------------------------------------


def _registry() -> OperationRegistry:
    registry = OperationRegistry()

    @registry.handler("bench.noop")
    async def noop(op: OperationRecord) -> None:
        return None

    return registry


async def retract_sequential(directory: Path, n: int) -> float:
    path = directory / f"seq-{time.monotonic_ns()}.db"
    async with open_journal(path) as journal, journal.start_session(script="bench") as session:
        await session.record_operation("bench.noop", {"i": -1})  # warm caches
        started = time.perf_counter()
        for i in range(n):
            await session.record_operation("bench.noop", {"i": i})
        return n / (time.perf_counter() - started)


async def retract_concurrent(directory: Path, sessions: int, records: int) -> float:
    async with open_journal(directory / f"conc-{time.monotonic_ns()}.db") as journal:

        async def one() -> None:
            async with journal.start_session(script="bench") as session:
                for i in range(records):
                    await session.record_operation("bench.noop", {"i": i})

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(sessions)))
        return sessions * records / (time.perf_counter() - started)


async def _fill(journal: Any, n: int) -> str:
    async with journal.start_session(script="bench") as session:
        batch = 10_000
        for start in range(0, n, batch):
            await session.record_operations(
                ("bench.noop", {"i": i}) for i in range(start, min(n, start + batch))
            )
        return str(session.session_id)


async def retract_undo(directory: Path, n: int) -> float:
    async with open_journal(
        directory / f"undo-{time.monotonic_ns()}.db", registry=_registry()
    ) as journal:
        session_id = await _fill(journal, n)
        started = time.perf_counter()
        report = await journal.undo_session(session_id)
        elapsed = time.perf_counter() - started
        assert report.undone == n, report
        return n / elapsed


async def retract_big_undo(directory: Path, n: int) -> tuple[float, float]:
    """Return (ops/s, peak RSS growth in MiB while the undo ran)."""
    async with open_journal(
        directory / f"big-{time.monotonic_ns()}.db", registry=_registry(), synchronous="NORMAL"
    ) as journal:
        session_id = await _fill(journal, n)
        gc.collect()
        before = _rss_mib()
        started = time.perf_counter()
        report = await journal.undo_session(session_id)
        elapsed = time.perf_counter() - started
        assert report.undone == n, report
        # ru_maxrss is the peak of the whole process, so filling the journal counts too:
        # the figure can only overstate what the undo used.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return n / elapsed, peak - before


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- driver -------------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, float]) -> float:
    return asyncio.run(coro)


def _pair(
    label: str,
    ours: Callable[[], float],
    theirs: Callable[[], float],
    rounds: int,
    target: float,
) -> bool:
    our_rates: list[float] = []
    their_rates: list[float] = []
    for _ in range(rounds):
        their_rates.append(theirs())
        our_rates.append(ours())
    mine, base = _median_rate(our_rates), _median_rate(their_rates)
    ratio = mine / base
    verdict = "ok" if ratio >= target else "BELOW TARGET"
    print(
        f"{label:<52} retract {mine:>10,.0f}/s  unmake {base:>8,.0f}/s  "
        f"ratio {ratio:6.2f}x  (target >= {target:g}x: {verdict})"
    )
    if rounds > 1:
        # The spread shows how noisy this machine is right now; the verdict uses medians.
        pairs = sorted(ours / theirs for ours, theirs in zip(our_rates, their_rates, strict=True))
        print(
            f"{'':<4}rounds: retract {min(our_rates):,.0f}-{max(our_rates):,.0f}/s, "
            f"unmake {min(their_rates):,.0f}-{max(their_rates):,.0f}/s, "
            f"ratio within a round {pairs[0]:.2f}-{pairs[-1]:.2f}x"
        )
    return ratio >= target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big", type=int, default=1_000_000, help="size of the streamed undo")
    args = parser.parse_args(argv)
    if unmake is None:
        print("unmake is not installed: uv run --group bench python benchmarks/journal.py")
        return 2
    rounds = 1 if args.quick else args.rounds
    seq_n = 200 if args.quick else 1000
    undo_n = 10_000
    big_n = 20_000 if args.quick else args.big
    ok = True
    with tempfile.TemporaryDirectory(prefix="retract-bench-") as tmp:
        directory = Path(tmp)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, dir {directory}")
        ok &= _pair(
            f"1. sequential record_operation, FULL ({seq_n})",
            lambda: _run(retract_sequential(directory, seq_n)),
            lambda: unmake_sequential(directory, seq_n),
            rounds,
            2.0,
        )
        ok &= _pair(
            "2. 100 sessions x 100 records concurrent vs seq.",
            lambda: _run(retract_concurrent(directory, 100, 100)),
            lambda: unmake_sequential(directory, seq_n),
            rounds,
            30.0,
        )
        ok &= _pair(
            f"3. undo {undo_n:,} no-op ops, progress recorded",
            lambda: _run(retract_undo(directory, undo_n)),
            lambda: unmake_undo(directory, undo_n),
            rounds,
            1.0,
        )
        rate, growth = asyncio.run(retract_big_undo(directory, big_n))
        verdict = "ok" if growth < 200 else "ABOVE TARGET"
        label = f"4. undo {big_n:,} ops streamed"
        print(
            f"{label:<52} retract {rate:>10,.0f}/s  peak RSS growth "
            f"{growth:.1f} MiB (target < 200 MiB: {verdict})"
        )
        ok &= growth < 200
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
