"""Journal throughput and undo against unmake, in the same process, printed as ratios.

Run: ``uv run --group bench python benchmarks/journal.py`` (``--quick`` for a smoke run).

Scenarios on SQLite (from issue 2; the default, ``--storage sqlite``):

1. sequential awaited ``record_operation`` at unmake's durability (WAL, synchronous=FULL,
   one commit per record), against unmake's sequential ``record_operation``;
2. 100 concurrent sessions x 100 records, every awaited record durable, against
   unmake's sequential rate;
3. undo of a 10,000-operation session with no-op handlers, progress recorded, against
   unmake's undo (which records no progress);
4. undo of a 1,000,000-operation session: peak memory growth while it streams.

Each pair is measured alternately several times and the medians are compared, because
the disk's fsync latency drifts.

``--storage postgres`` (issue 7) starts a throwaway PostgreSQL cluster with durable
settings (``fsync=on``, ``synchronous_commit=on``; ``tests/_pg_cluster.py``) and
measures the aggregate rate of durable records of 1, 2 and 4 worker processes, each
with its own journal on the same database and 50 concurrent sessions awaiting every
``record_operation``; beside it, the same shape on one SQLite file (``synchronous=FULL``)
and unmake's sequential rate, all in the same run, round after round (medians of
``--rounds``, 3 by default). The cluster is stopped and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import os
import queue
import resource
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

from retract import Journal, OperationRecord, OperationRegistry, open_journal

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


# -- several processes sharing one journal (--storage postgres) -----------------------

#: Seconds to wait for the workers to open their journals, and then to finish.
_READY_TIMEOUT = 300.0
_RUN_TIMEOUT = 1800.0


def _now() -> float:
    """A clock shared by all processes (CLOCK_MONOTONIC is system-wide on Linux)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Workload:
    """What each worker process runs: ``sessions`` sessions at once, ``records`` each."""

    kind: str  # "postgres" or "sqlite"
    location: str  # a postgresql:// URL or an SQLite file
    schema: str  # PostgreSQL only
    sessions: int
    records: int


def _shared_journal(kind: str, location: str, schema: str) -> Journal:
    if kind == "postgres":
        # the public name retract.journal.storage.PostgresStorage is resolved lazily
        # (module __getattr__), which type checkers see as `object`
        from retract.journal.storage._postgres import PostgresStorage  # noqa: PLC0415

        return Journal(PostgresStorage(location, schema=schema))
    # SQLite serializes writers across processes: give a waiting one plenty of time
    return open_journal(location, synchronous="FULL", busy_timeout=120.0)


async def _worker_run(work: Workload, barrier: threading.Barrier) -> tuple[float, float, float]:
    """Open the journal, warm it up, wait for the go, run the sessions.

    Returns (start, end, CPU seconds this process spent in between).
    """
    async with _shared_journal(work.kind, work.location, work.schema) as journal:
        async with journal.start_session(script="bench-warmup") as session:
            await session.record_operation("bench.noop", {"i": -1})

        async def one() -> None:
            async with journal.start_session(script="bench") as session:
                for i in range(work.records):
                    await session.record_operation("bench.noop", {"i": i})

        # Blocks the event loop on purpose: nothing else is running in it yet.
        barrier.wait(timeout=_READY_TIMEOUT)
        started, cpu = _now(), time.process_time()
        await asyncio.gather(*(one() for _ in range(work.sessions)))
        return started, _now(), time.process_time() - cpu


def _worker(work: Workload, barrier: threading.Barrier, results: Any) -> None:
    """A worker process: put (start, end, cpu, error) on ``results``."""
    try:
        started, ended, cpu = asyncio.run(_worker_run(work, barrier))
    except BaseException as exc:
        barrier.abort()  # the others (and the driver) stop waiting at once
        results.put((0.0, 0.0, 0.0, f"{type(exc).__name__}: {exc}"))
        raise
    results.put((started, ended, cpu, None))


class Measured(NamedTuple):
    rate: float  # aggregate records/s over the common window
    window: float  # seconds from the go to the end of the last worker
    cpu: float  # CPU seconds of the workers within their windows
    server_cpu: float  # CPU seconds of the PostgreSQL server around the window (or 0)


def processes_rate(
    work: Workload, processes: int, server_cpu: Callable[[], float] = lambda: 0.0
) -> Measured:
    """Aggregate records/s of ``processes`` workers each running ``work``.

    Measured over the common window: from the go (all workers opened and warmed, behind
    a barrier) to the end of the last worker.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    results = context.Queue()
    workers = [
        context.Process(
            target=_worker,
            args=(work, barrier, results),
            daemon=True,
            name=f"bench-{work.kind}-{index}",
        )
        for index in range(processes)
    ]
    outcomes: list[tuple[float, float, float, str | None]] = []
    try:
        for worker in workers:
            worker.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # a worker failed:
            barrier.wait(timeout=_READY_TIMEOUT)  # its error is on the queue
        server_before = server_cpu()  # at the go (reading /proc takes a few ms)
        deadline = time.monotonic() + _RUN_TIMEOUT
        while len(outcomes) < processes:
            try:
                outcomes.append(results.get(timeout=1.0))
            except queue.Empty as exc:
                if time.monotonic() > deadline or not any(w.is_alive() for w in workers):
                    raise RuntimeError(
                        f"{processes - len(outcomes)} {work.kind} worker(s) ended without a result"
                    ) from exc
        server_used = server_cpu() - server_before  # includes the workers' disconnects
        for worker in workers:
            worker.join(timeout=60)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=10)
        results.close()
    errors = [error for _, _, _, error in outcomes if error is not None]
    if errors:
        raise RuntimeError(f"{work.kind} worker failed: {errors[0]}")
    started = min(start for start, _, _, _ in outcomes)
    ended = max(end for _, end, _, _ in outcomes)
    cpu = sum(used for _, _, used, _ in outcomes)
    window = ended - started
    total = processes * work.sessions * work.records
    return Measured(total / window, window, cpu, server_used)


async def _pg_describe(dsn: str) -> str:
    import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415  (postgres extra)

    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        names = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")
        shown = [f"{name}={await conn.fetchval(f'SHOW {name}')}" for name in names]
        await conn.execute("CREATE DATABASE bench TEMPLATE template0")
        return f"PostgreSQL {version} ({', '.join(shown)})"
    finally:
        await conn.close()


async def _pg_prepare(url: str, schema: str) -> None:
    """Create the journal's schema before the workers open it."""
    from retract.journal.storage._postgres import PostgresStorage  # noqa: PLC0415

    async with Journal(PostgresStorage(url, schema=schema)):
        pass


async def _pg_count_and_drop(url: str, schema: str) -> int:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(url)
    try:
        count = int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".operations'))  # noqa: S608
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        return count
    finally:
        await conn.close()


async def _sqlite_prepare(path: Path) -> None:
    async with open_journal(path, synchronous="FULL"):
        pass


def _sqlite_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM operations").fetchone()[0])


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _spread(rates: list[float]) -> str:
    return f"{min(rates):,.0f}-{max(rates):,.0f}"


def postgres_main(args: argparse.Namespace) -> int:
    """Issue 7: P processes x 50 sessions on PostgreSQL and SQLite, against unmake."""
    # The test suite's throwaway cluster, run with durable settings.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests import _pg_cluster  # noqa: PLC0415

    bin_dir = _pg_cluster.find_binaries()
    if bin_dir is None:
        print("PostgreSQL server binaries (initdb, postgres, pg_ctl) not found")
        return 2
    rounds = 1 if args.quick else (args.rounds or 3)
    sessions = args.sessions
    records = args.records or (20 if args.quick else 400)
    seq_n = 200 if args.quick else 1000
    counts = [int(part) for part in args.processes.split(",")]
    target = 20.0
    unmake_rates: list[float] = []
    pg: dict[int, list[Measured]] = {p: [] for p in counts}
    lite: dict[int, list[Measured]] = {p: [] for p in counts}
    cpus = os.cpu_count() or 1
    shape = (sessions, records)
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    cluster = None
    try:
        cluster = _pg_cluster.start_cluster(bin_dir)
        described = asyncio.run(_pg_describe(cluster.dsn))
        url = cluster.url("bench")
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {described}, "
            f"SQLite {sqlite3.sqlite_version} (synchronous=FULL, WAL), load average "
            + "/".join(f"{load:.2f}" for load in os.getloadavg())
        )
        print(
            f"P processes x {sessions} sessions x {records} awaited records each; "
            f"unmake: {seq_n} sequential records; {rounds} round(s)"
        )
        with tempfile.TemporaryDirectory(prefix="retract-bench-") as tmp:
            directory = Path(tmp)
            for round_ in range(rounds):
                unmake_rates.append(unmake_sequential(directory, seq_n))
                line = [f"round {round_ + 1}: unmake {unmake_rates[-1]:,.0f}/s"]
                for p in counts:
                    expected = p * (sessions * records + 1)  # + each worker's warm-up
                    schema = f"bench_r{round_}_p{p}"
                    asyncio.run(_pg_prepare(url, schema))
                    work = Workload("postgres", url, schema, *shape)
                    pg[p].append(processes_rate(work, p, cluster.cpu_seconds))
                    found = asyncio.run(_pg_count_and_drop(url, schema))
                    assert found == expected, (found, expected)
                    path = directory / f"shared-r{round_}-p{p}.db"
                    asyncio.run(_sqlite_prepare(path))
                    lite[p].append(processes_rate(Workload("sqlite", str(path), "", *shape), p))
                    found = _sqlite_count(path)
                    assert found == expected, (found, expected)
                    pair = pg[p][-1].rate, lite[p][-1].rate
                    line.append(f"{p}P pg {pair[0]:,.0f}/s sqlite {pair[1]:,.0f}/s")
                print(", ".join(line), flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if cluster is not None:
            left = cluster.stop()
            if left:
                print(f"WARNING: PostgreSQL processes still alive: {left}")
            else:
                print("cluster stopped and removed; none of its processes is left")
    base = statistics.median(unmake_rates)
    print()
    print(f"unmake sequential record_operation: {base:,.0f}/s (rounds {_spread(unmake_rates)}/s)")
    print(
        f"{'processes':>9} | {'PostgreSQL rec/s (rounds)':>26} {'CPU w+s':>9} | "
        f"{'SQLite rec/s (rounds)':>26} {'CPU w':>5} | {'PG/SQLite':>9}"
    )
    medians: dict[str, dict[int, float]] = {"PostgreSQL": {}, "SQLite": {}}
    for p in counts:
        cells = []
        for name, measured in (("PostgreSQL", pg[p]), ("SQLite", lite[p])):
            rates = [m.rate for m in measured]
            medians[name][p] = statistics.median(rates)
            # CPU seconds used per second of window, as a share of all cpus
            busy = statistics.median(m.cpu / m.window / cpus for m in measured)
            server = statistics.median(m.server_cpu / m.window / cpus for m in measured)
            cpu = f"{busy:.0%}+{server:.0%}" if name == "PostgreSQL" else f"{busy:.0%}"
            width = 9 if name == "PostgreSQL" else 5
            cells.append(f"{f'{medians[name][p]:,.0f} ({_spread(rates)})':>26} {cpu:>{width}}")
        versus = medians["PostgreSQL"][p] / medians["SQLite"][p]
        print(f"{p:>9} | {cells[0]} | {cells[1]} | {versus:>8.2f}x")
    print(
        f"(CPU w+s: CPU time of the workers + of the PostgreSQL server, as a share of {cpus} "
        "cpus x the window; medians)"
    )
    first, last = counts[0], counts[-1]
    for name, by_count in medians.items():
        scaling = by_count[last] / by_count[first]
        print(f"scaling {first}->{last} processes, {name}: {scaling:.2f}x")
    ratio = medians["PostgreSQL"][last] / base
    verdict = "PASS" if ratio >= target else "MISS"
    within = sorted(m.rate / u for m, u in zip(pg[last], unmake_rates, strict=True))
    print(
        f"{last} processes on PostgreSQL vs unmake sequential: {ratio:.1f}x "
        f"(within a round {within[0]:.1f}-{within[-1]:.1f}x; target >= {target:g}x: {verdict})"
    )
    return 0 if ratio >= target else 1


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
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per scenario (5; 3 with postgres)"
    )
    parser.add_argument("--big", type=int, default=1_000_000, help="size of the streamed undo")
    parser.add_argument(
        "--storage",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="sqlite: scenarios 1-4; postgres: several processes sharing one journal",
    )
    parser.add_argument(
        "--sessions", type=int, default=50, help="postgres mode: concurrent sessions per process"
    )
    parser.add_argument(
        "--records", type=int, default=None, help="postgres mode: records per session (400)"
    )
    parser.add_argument(
        "--processes",
        default="1,2,4",
        help="postgres mode: the numbers of worker processes, comma-separated",
    )
    args = parser.parse_args(argv)
    if unmake is None:
        print("unmake is not installed: uv run --group bench python benchmarks/journal.py")
        return 2
    if args.storage == "postgres":
        return postgres_main(args)
    rounds = 1 if args.quick else (args.rounds or 5)
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
