"""Exporters: what an attached exporter costs a tracked write, and its throughput.

Run: ``uv run python benchmarks/exporters.py`` (``--quick`` for a smoke run).

Targets (from issue 5):

1. A tracked write with an exporter attached (``JsonLinesExporter``) costs no more than
   1.2x a write with a plain subscriber: the exporter's I/O happens in its consumer
   task, not in the write.
2. Exporting 100,000 changes to JSON Lines takes under 2x the time of writing the same
   lines with a plain buffered file (``json.dumps`` per record, ``file.write``).

Method, target 1: batches of 100 overwrites of 16 keys into a ``TrackedDict``, timed in
this thread's CPU time; after each batch the loop runs until the exporter (or the plain
subscriber's consumer) has taken every change, untimed. The two contenders take turns
batch by batch, in an order that alternates; the verdict compares the medians of the
rounds. Target 2: 100,000 changes are made with the exporter attached (its queue
unbounded), then ``aclose()`` sends them all; timed is the process's CPU time (the
exporter encodes and writes in a worker thread) from the first change to the end of
``aclose()``, against the process's CPU time to write the same records with
``json.dumps`` to a buffered file and close it. Both write to the same folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from retract import TrackedDict
from retract.export import JsonLinesExporter, change_record

KEYS = [f"key{i}" for i in range(16)]
BATCH = 100


async def _drain(subscription: Any, count: int) -> None:
    for _ in range(count):
        await anext(subscription)


async def _exported(exporter: JsonLinesExporter, count: int) -> None:
    while exporter.exported < count:  # noqa: ASYNC110  (a counter its task bumps)
        await asyncio.sleep(0.0005)


def _set_items(d: Any, pairs: list[tuple[str, int]]) -> None:
    for key, value in pairs:
        d[key] = value


def _set_items_copy(d: Any, pairs: list[tuple[str, int]]) -> None:  # its own specialization
    for key, value in pairs:
        d[key] = value


async def scenario_1(rounds: int, batches: int, folder: Path) -> bool:
    pairs = [(KEYS[i % len(KEYS)], i) for i in range(BATCH)]
    times: dict[str, list[float]] = {"subscriber": [], "exporter": []}
    for round_no in range(rounds):
        plain: TrackedDict[str, int] = TrackedDict(dict.fromkeys(KEYS, 0))
        subscription = plain.subscribe()
        exported: TrackedDict[str, int] = TrackedDict(dict.fromkeys(KEYS, 0))
        path = folder / f"s1-{round_no}.jsonl"
        exporter = JsonLinesExporter(path, max_delay=0.001)
        exporter.attach(exported, source="bench")
        totals = {"subscriber": 0.0, "exporter": 0.0}
        for batch in range(batches):
            order = ["subscriber", "exporter"] if batch % 2 else ["exporter", "subscriber"]
            for name in order:
                started = time.thread_time()
                if name == "subscriber":
                    _set_items(plain, pairs)
                else:
                    _set_items_copy(exported, pairs)
                totals[name] += time.thread_time() - started
                if name == "subscriber":
                    await _drain(subscription, BATCH)
                else:
                    await _exported(exporter, (batch + 1) * BATCH)
        await exporter.aclose()
        subscription.close()
        path.unlink()
        for name, total in totals.items():
            times[name].append(total / (batches * BATCH))
    sub, exp = (statistics.median(times[name]) for name in ("subscriber", "exporter"))
    ratio = exp / sub
    ok = ratio <= 1.2
    print(f"\n1. d[key] = value, {BATCH}-write batches, {batches} per round; per write")
    print(f"   with a plain subscriber      {sub * 1e6:7.3f} us")
    print(f"   with a JsonLinesExporter     {exp * 1e6:7.3f} us")
    spread = [e / s for e, s in zip(times["exporter"], times["subscriber"], strict=True)]
    print(
        f"   {'PASS' if ok else 'MISS'} target 1: an attached exporter costs {ratio:.2f}x a "
        f"plain subscriber's write (target <= 1.2x; rounds {min(spread):.2f}-{max(spread):.2f}x)"
    )
    return ok


async def _export_run(count: int, path: Path) -> tuple[float, float]:
    config: TrackedDict[str, int] = TrackedDict(history=0)
    exporter = JsonLinesExporter(path, max_buffer=0, max_delay=0.001)
    exporter.attach(config, source="bench")
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        config[KEYS[i % len(KEYS)]] = i
    await exporter.aclose()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert exporter.exported == count, "the exporter lost changes"
    return cpu, wall


def _plain_run(records: list[dict[str, Any]], path: Path) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    with path.open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record) + "\n")
    return time.process_time() - cpu, time.perf_counter() - wall


async def scenario_2(rounds: int, count: int, folder: Path) -> bool:
    # The same records, for the plain file: made once by a tracked dict, as dicts.
    sample: TrackedDict[str, int] = TrackedDict(history=None)
    for i in range(count):
        sample[KEYS[i % len(KEYS)]] = i
    records = [change_record(change, "bench") for change in sample.tracking_changes()]
    del sample
    exported: list[tuple[float, float]] = []
    plain: list[tuple[float, float]] = []
    for round_no in range(rounds):
        for name in ("exporter", "plain") if round_no % 2 else ("plain", "exporter"):
            path = folder / f"s2-{name}.jsonl"
            if name == "exporter":
                exported.append(await _export_run(count, path))
            else:
                plain.append(_plain_run(records, path))
            size = path.stat().st_size
            path.unlink()
            assert size > count * 60, f"{name} wrote {size} bytes for {count} changes"
    exp_cpu = statistics.median(cpu for cpu, _ in exported)
    plain_cpu = statistics.median(cpu for cpu, _ in plain)
    exp_wall = statistics.median(wall for _, wall in exported)
    plain_wall = statistics.median(wall for _, wall in plain)
    ratio = exp_cpu / plain_cpu
    ok = ratio < 2
    print(f"\n2. {count:,} changes to JSON Lines; median of {rounds} rounds")
    print(
        f"   plain buffered file, json.dumps per line   CPU {plain_cpu:6.3f} s, "
        f"wall {plain_wall:6.3f} s"
    )
    print(
        f"   JsonLinesExporter, from the first change    CPU {exp_cpu:6.3f} s, "
        f"wall {exp_wall:6.3f} s  (the tracked writes themselves included)"
    )
    print(
        f"   {'PASS' if ok else 'MISS'} target 2: the exporter takes {ratio:.2f}x the plain "
        f"file's CPU time (target < 2x; wall clock {exp_wall / plain_wall:.2f}x)"
    )
    return ok


async def _main(args: argparse.Namespace) -> bool:
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="retract-bench-"))
    try:
        ok = await scenario_1(args.rounds, args.batches, folder)
        ok &= await scenario_2(max(3, args.rounds // 2), args.changes, folder)
    finally:
        if not args.dir:
            for leftover in folder.iterdir():
                leftover.unlink()
            folder.rmdir()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--dir", help="where the files go (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="1 round, small sizes")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batches, args.changes = 1, 5, 5_000
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.rounds} round(s), "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    ok = asyncio.run(_main(args))
    print(f"\nexit status {0 if ok else 1}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
