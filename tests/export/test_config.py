"""Observers and exporters from JSON and TOML files, with errors that say where."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from retract import ChangeCollector, TrackedDict
from retract.export import (
    ConfigError,
    JsonLinesExporter,
    ObserverSet,
    load_observers_from_json,
    load_observers_from_toml,
)


def write_json(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "observers.json"
    path.write_text(json.dumps(data))
    return path


async def test_a_json_file_builds_exporters_and_observers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each entry becomes what its kind says, with its fields as arguments."""
    path = write_json(
        tmp_path,
        {
            "observers": [
                {"kind": "jsonl", "path": "changes.jsonl", "fsync": True, "max_delay": 0},
                {"kind": "collector"},
                {"kind": "log", "level": "info"},
            ]
        },
    )
    observers = load_observers_from_json(path)
    assert isinstance(observers, ObserverSet)
    (exporter,) = observers.exporters
    assert isinstance(exporter, JsonLinesExporter)
    assert exporter.path == tmp_path / "changes.jsonl"  # relative to the file
    assert exporter.fsync is True
    collector = observers.observers[0]
    assert isinstance(collector, ChangeCollector)
    config: TrackedDict[str, int] = TrackedDict()
    with caplog.at_level(logging.INFO, logger="retract.changes"):
        async with observers:
            observers.attach(config, source="config")
            config["a"] = 1
    assert len(collector) == 1
    assert "add ['a'] None -> 1" in caplog.text
    line = json.loads((tmp_path / "changes.jsonl").read_text())
    assert (line["source"], line["new"]) == ("config", 1)


def test_the_toml_twin_reads_observers_tables(tmp_path: Path) -> None:
    """[[observers]] tables give the same as the JSON list."""
    path = tmp_path / "observers.toml"
    path.write_text(
        '[[observers]]\nkind = "jsonl"\npath = "out.jsonl"\nrotate_bytes = 1000\n\n'
        '[[observers]]\nkind = "collector"\n'
    )
    observers = load_observers_from_toml(path)
    (exporter,) = observers.exporters
    assert isinstance(exporter, JsonLinesExporter)
    assert exporter.rotate_bytes == 1000
    assert isinstance(observers.observers[0], ChangeCollector)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"observers": [{"kind": "smtp"}]}, r"observer #1 has kind 'smtp'; the kinds are .*jsonl"),
        ({"observers": [{"path": "x"}]}, r"observer #1 has kind None"),
        (
            {"observers": [{"kind": "jsonl", "path": "x", "fsyncc": True}]},
            r"observer #1 \(jsonl\): unknown field\(s\) 'fsyncc'; its fields are .*fsync",
        ),
        ({"observers": [{"kind": "jsonl"}]}, r"observer #1 \(jsonl\): missing a required"),
        (
            {"observers": [{"kind": "jsonl", "path": "x", "max_batch": 0}]},
            r"observer #1 \(jsonl\): max_batch must be an int > 0",
        ),
        (
            {"observers": [{"kind": "collector"}, {"kind": "log", "level": "LOUD"}]},
            r"observer #2 \(log\): level must be a logging level name",
        ),
        ({"observers": "jsonl"}, r'"observers" must be a list'),
        ({"observers": [3]}, r"observer #1 must be a table with a kind"),
        ({"exporters": []}, r"unknown top-level key\(s\) 'exporters'"),
        ({"observers": [{"kind": ["jsonl"]}]}, r"observer #1 has kind \['jsonl'\]"),
        (
            {"observers": [{"kind": "jsonl", "path": "x", "fsync": "no"}]},
            r"fsync must be True or False",
        ),
        (
            {"observers": [{"kind": "jsonl", "path": "x", "overflow": "bogus"}]},
            r"overflow must be",
        ),
        (
            {"observers": [{"kind": "kafka", "topic": "t", "producer_options": "acks=all"}]},
            r"producer_options must be a mapping",
        ),
        (
            {"observers": [{"kind": "s3", "bucket": "b", "endpoint_url": 5}]},
            r"endpoint_url must be a non-empty str",
        ),
    ],
)
def test_bad_entries_name_the_file_the_entry_and_the_field(
    tmp_path: Path, data: Any, message: str
) -> None:
    """Every mistake is a ConfigError saying where it is and what is expected."""
    path = write_json(tmp_path, data)
    with pytest.raises(ConfigError, match=message) as raised:
        load_observers_from_json(path)
    assert str(path) in str(raised.value)


def test_files_that_do_not_parse_are_config_errors(tmp_path: Path) -> None:
    """Broken JSON or TOML is a ConfigError naming the file (also a ValueError)."""
    broken = tmp_path / "observers.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_observers_from_json(broken)
    broken_toml = tmp_path / "observers.toml"
    broken_toml.write_text("[[observers]\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_observers_from_toml(broken_toml)


def test_a_missing_or_undecodable_file_is_a_config_error(tmp_path: Path) -> None:
    """Reading failures name the file too."""
    with pytest.raises(ConfigError, match="cannot be read"):
        load_observers_from_json(tmp_path / "missing.json")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_observers_from_toml(latin)


def test_a_bare_list_is_accepted(tmp_path: Path) -> None:
    """The JSON may be the list itself, without the "observers" key."""
    observers = load_observers_from_json(write_json(tmp_path, [{"kind": "collector"}]))
    assert len(observers.observers) == 1
    assert observers.exporters == []


def test_every_exporter_kind_is_built_from_its_fields(tmp_path: Path) -> None:
    """http, s3 and kafka entries give those exporters; telemetry a counting observer."""
    from prometheus_client import REGISTRY  # noqa: PLC0415

    from retract.export import HttpExporter, KafkaExporter, S3Exporter  # noqa: PLC0415

    path = write_json(
        tmp_path,
        [
            {"kind": "http", "url": "http://127.0.0.1:9/changes", "retries": 2},
            {"kind": "s3", "bucket": "audit", "prefix": "cfg/", "max_batch": 50},
            {"kind": "kafka", "topic": "changes", "bootstrap_servers": "127.0.0.1:9"},
            {"kind": "telemetry"},
        ],
    )
    observers = load_observers_from_json(path)
    http, s3, kafka = observers.exporters
    assert isinstance(http, HttpExporter)
    assert http.retries == 2
    assert isinstance(s3, S3Exporter)
    assert s3.max_batch == 50
    assert isinstance(kafka, KafkaExporter)
    (telemetry,) = observers.observers
    config: TrackedDict[str, int] = TrackedDict()
    config.tracking_add_observer(telemetry)
    before = REGISTRY.get_sample_value("retract_tracked_changes_total", {"action": "add"}) or 0
    config["a"] = 1
    after = REGISTRY.get_sample_value("retract_tracked_changes_total", {"action": "add"})
    assert after == before + 1


def test_live_objects_cannot_come_from_a_file(tmp_path: Path) -> None:
    """A client, producer or session field is refused as unknown."""
    path = write_json(tmp_path, [{"kind": "http", "url": "http://127.0.0.1:9/", "client": 1}])
    with pytest.raises(ConfigError, match=r"unknown field\(s\) 'client'"):
        load_observers_from_json(path)
