"""JsonLinesExporter: whole lines, whole batches, rotation, and clear errors."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from retract import TrackedDict, TrackedList, TrackedSet
from retract.export import JsonLinesExporter
from retract.export import _jsonl as jsonl_module


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_each_change_is_one_json_line(tmp_path: Path) -> None:
    """Every change becomes a line with all its fields; sets become sorted lists."""
    path = tmp_path / "changes.jsonl"
    config: TrackedDict[str, Any] = TrackedDict()
    async with JsonLinesExporter(path, max_delay=0) as exporter:
        exporter.attach(config, source="config")
        config["mode"] = "release"
        config["tags"] = {"b", "a"}
        del config["mode"]
    records = lines(path)
    assert [(r["action"], r["path"]) for r in records] == [
        ("add", ["mode"]),
        ("add", ["tags"]),
        ("remove", ["mode"]),
    ]
    assert records[1]["new"] == ["a", "b"]
    assert records[2]["old"] == "release"
    assert set(records[0]) == {
        "source", "seq", "path", "action", "old", "new", "actor", "timestamp", "kind"
    }  # fmt: skip
    assert exporter.exported == 3


async def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    """A second exporter on the same file appends after what is there."""
    path = tmp_path / "changes.jsonl"
    path.write_text('{"earlier": true}\n')
    items: TrackedList[int] = TrackedList()
    async with JsonLinesExporter(path, max_delay=0, fsync=True) as exporter:
        exporter.attach(items)
        items.append(1)
    assert lines(path) == [{"earlier": True}, *lines(path)[1:]]
    assert lines(path)[1]["new"] == 1


async def test_values_json_cannot_hold_are_written_anyway(tmp_path: Path) -> None:
    """Tuple keys become their repr, NaN becomes null, sets of mixed types a list."""
    path = tmp_path / "changes.jsonl"
    config: TrackedDict[str, Any] = TrackedDict()
    tags: TrackedSet[Any] = TrackedSet()
    async with JsonLinesExporter(path, max_delay=0) as exporter:
        exporter.attach(config)
        exporter.attach(tags)
        config["grid"] = {(1, 2): "x"}
        config["ratio"] = float("nan")
        tags.add(1)
        tags.add("a")
    by_path = {tuple(r["path"]): r for r in lines(path)}
    assert by_path[("grid",)]["new"] == {"(1, 2)": "x"}
    assert by_path[("ratio",)]["new"] is None
    assert {by_path[(1,)]["new"], by_path[("a",)]["new"]} == {1, "a"}


async def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    """Past rotate_bytes the file moves to .1 (then .2...); backups bounds how many."""
    path = tmp_path / "changes.jsonl"
    items: TrackedList[str] = TrackedList()
    async with JsonLinesExporter(path, max_delay=0, rotate_bytes=400, backups=2) as exporter:
        exporter.attach(items)
        for i in range(30):
            items.append("x" * 50 + str(i))
            await _drained(exporter, i + 1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["changes.jsonl", "changes.jsonl.1", "changes.jsonl.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 400
    newest = [r["new"] for r in lines(path)]
    assert newest[-1] == "x" * 50 + "29"
    kept = lines(tmp_path / "changes.jsonl.2") + lines(tmp_path / "changes.jsonl.1") + lines(path)
    seqs = [r["seq"] for r in kept]
    assert seqs == list(range(seqs[0], 31))  # the oldest files went, the rest in order


async def _drained(exporter: JsonLinesExporter, count: int) -> None:
    import asyncio  # noqa: PLC0415

    async with asyncio.timeout(5):
        while exporter.exported < count:  # noqa: ASYNC110  (a counter another task bumps)
            await asyncio.sleep(0.001)


async def test_a_failed_write_leaves_no_half_batch_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails part way is cut back, retried, and lands whole, once."""
    path = tmp_path / "changes.jsonl"
    real_write = os.write
    calls = {"n": 0}

    def flaky_write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            real_write(fd, bytes(data[:7]))  # a torn start of a line...
            raise OSError(28, "No space left on device")  # ...then the disk is full
        return real_write(fd, data)

    monkeypatch.setattr(jsonl_module, "_write", flaky_write)
    items: TrackedList[int] = TrackedList()
    async with JsonLinesExporter(path, max_delay=0.05, backoff=0.001) as exporter:
        exporter.attach(items)
        items.extend([1, 2, 3])
    assert [r["new"] for r in lines(path)] == [[1, 2, 3]]
    assert (exporter.failures, exporter.lost) == (1, 0)


async def test_a_folder_that_does_not_exist_is_refused_up_front(tmp_path: Path) -> None:
    """The exporter says which folder is missing, before any change is lost."""
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        JsonLinesExporter(tmp_path / "missing" / "changes.jsonl")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        JsonLinesExporter(tmp_path)


@pytest.mark.parametrize(
    ("option", "value"), [("rotate_bytes", 0), ("rotate_bytes", 1.5), ("backups", 0)]
)
def test_bad_file_options_are_value_errors(tmp_path: Path, option: str, value: Any) -> None:
    """rotate_bytes and backups say what they accept."""
    with pytest.raises(ValueError, match=f"{option} must be"):
        JsonLinesExporter(tmp_path / "c.jsonl", **{option: value})


async def test_two_trees_share_one_file_without_tearing_it(tmp_path: Path) -> None:
    """Batches of several trees are written one at a time: every line whole, none lost."""
    path = tmp_path / "changes.jsonl"
    trees: list[TrackedList[int]] = [TrackedList() for _ in range(4)]
    async with JsonLinesExporter(path, max_delay=0.001, max_batch=7, rotate_bytes=3000) as exporter:
        for index, tree in enumerate(trees):
            exporter.attach(tree, source=f"t{index}")
        for i in range(300):
            for tree in trees:
                tree.append(i)
            if i % 10 == 0:
                await asyncio.sleep(0)
    kept = list(tmp_path.iterdir())
    records = [r for p in kept for r in lines(p)]  # every line parses
    assert exporter.lost == 0
    assert exporter.exported == 1200
    assert len(records) <= 1200
    by_source: dict[str, list[int]] = {}
    for record in records:
        by_source.setdefault(record["source"], []).append(record["seq"])
    for seqs in by_source.values():
        assert len(seqs) == len(set(seqs))


async def test_a_file_removed_meanwhile_is_started_again(tmp_path: Path) -> None:
    """After the file is deleted (or rotated away), the next batch makes a new one."""
    path = tmp_path / "changes.jsonl"
    items: TrackedList[int] = TrackedList()
    async with JsonLinesExporter(path, max_delay=0) as exporter:
        exporter.attach(items)
        items.append(1)
        await _drained(exporter, 1)
        path.rename(tmp_path / "changes.jsonl.old")
        items.append(2)
    assert [r["new"] for r in lines(path)] == [2]
    assert [r["new"] for r in lines(tmp_path / "changes.jsonl.old")] == [1]


async def test_a_lone_surrogate_is_written_as_its_json_escape(tmp_path: Path) -> None:
    """A str from a non-UTF-8 file name does not cost the batch: it is escaped."""
    path = tmp_path / "changes.jsonl"
    name = os.fsdecode(b"caf\xe9.txt")  # a lone surrogate, as os.listdir gives it
    config: TrackedDict[str, Any] = TrackedDict()
    async with JsonLinesExporter(path, max_delay=0) as exporter:
        exporter.attach(config)
        config["file"] = name
        config["other"] = "ok"
    assert [r["new"] for r in lines(path)] == [name, "ok"]
    assert exporter.lost == 0


def test_fsync_must_be_a_bool(tmp_path: Path) -> None:
    """fsync="no" would mean yes: it is refused."""
    with pytest.raises(ValueError, match="fsync must be True or False"):
        JsonLinesExporter(tmp_path / "c.jsonl", fsync="no")  # type: ignore[arg-type]
