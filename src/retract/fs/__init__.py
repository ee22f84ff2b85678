"""Atomic, durable file and folder writes, and the sweep for abandoned temps."""

from ._atomic import SPILL_BYTES as SPILL_BYTES
from ._atomic import AtomicFile as AtomicFile
from ._atomic import AtomicFolder as AtomicFolder
from ._atomic import AtomicWrite as AtomicWrite
from ._atomic import atomic_folder as atomic_folder
from ._atomic import atomic_write as atomic_write
from ._atomic import atomic_write_bytes as atomic_write_bytes
from ._atomic import atomic_write_text as atomic_write_text
from ._names import SweepReport as SweepReport
from ._names import is_temp_name as is_temp_name
from ._rename import has_native_renames as has_native_renames
from ._sweep import sweep as sweep

__all__ = (
    "SPILL_BYTES",
    "AtomicFile",
    "AtomicFolder",
    "AtomicWrite",
    "SweepReport",
    "atomic_folder",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "has_native_renames",
    "is_temp_name",
    "sweep",
)
