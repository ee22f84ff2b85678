"""Exporters: tracked changes shipped in batches by an async task, off the write path.

``JsonLinesExporter`` needs nothing more; ``HttpExporter`` needs the ``http`` extra
(httpx), ``S3Exporter`` the ``s3`` one (aiobotocore), ``KafkaExporter`` the ``kafka``
one (aiokafka); ``telemetry_observer`` and ``journal_metrics`` the ``prometheus`` one,
``otel_observer`` and ``otel_journal_metrics`` the ``otel`` one. Each library is
imported only when the exporter or observer is made.
"""

from ._base import Exporter as Exporter
from ._base import ExporterOptions as ExporterOptions
from ._base import ExportError as ExportError
from ._base import RetryableExportError as RetryableExportError
from ._config import ConfigError as ConfigError
from ._config import ObserverSet as ObserverSet
from ._config import load_observers_from_json as load_observers_from_json
from ._config import load_observers_from_toml as load_observers_from_toml
from ._encode import change_record as change_record
from ._http import HttpExporter as HttpExporter
from ._jsonl import JsonLinesExporter as JsonLinesExporter
from ._kafka import KafkaExporter as KafkaExporter
from ._otel import otel_journal_metrics as otel_journal_metrics
from ._otel import otel_observer as otel_observer
from ._prometheus import JournalCollector as JournalCollector
from ._prometheus import journal_metrics as journal_metrics
from ._prometheus import telemetry_observer as telemetry_observer
from ._s3 import S3Exporter as S3Exporter

__all__ = (
    "ConfigError",
    "ExportError",
    "Exporter",
    "ExporterOptions",
    "HttpExporter",
    "JournalCollector",
    "JsonLinesExporter",
    "KafkaExporter",
    "ObserverSet",
    "RetryableExportError",
    "S3Exporter",
    "change_record",
    "journal_metrics",
    "load_observers_from_json",
    "load_observers_from_toml",
    "otel_journal_metrics",
    "otel_observer",
    "telemetry_observer",
)
