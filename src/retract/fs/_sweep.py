"""``retract.fs.sweep``: remove the temps that killed processes left behind."""

from __future__ import annotations

import os

from .._async import run_sync
from ._names import SweepReport, sweep_sync

__all__ = ("sweep",)


async def sweep(
    directory: str | os.PathLike[str], *, recursive: bool = False, min_age: float | None = None
) -> SweepReport:
    """Remove retract temps in ``directory`` whose writing process is gone.

    Only names retract itself gives its temps are touched
    (``.<name>.retract-<host>-<pid>-<random>.tmp``, ``.swap`` and ``.old``), and only
    when the process that made them no longer runs on this host: a temp that a live
    writer still owns is kept (``kept_reasons`` says why). With ``min_age`` (seconds),
    temps older than that are handled even if their pid is alive (for pid reuse, or temps
    from another host on a shared filesystem); never pass one shorter than your longest
    write.

    A ``.swap`` (``.old`` from earlier builds) is a folder's old tree that a swap without
    the kernel's exchange flag had parked when its process died: if the folder is
    missing, the swap is renamed back (``restored``); if the folder is there, the swap
    is removed. One whose folder name may be cut short in the temp name is left for you
    (``failed`` says what to do).

    :param recursive: also sweep the subdirectories (symlinks are not followed).
    :return: what was removed, restored, kept (and why) and could not be handled.
    :raises NotADirectoryError: ``directory`` is not a directory.

    Runs in a worker thread; if the awaiting task is cancelled, the sweep finishes first.
    """
    if min_age is not None and min_age < 0:
        raise ValueError(f"min_age must be seconds >= 0 or None, not {min_age!r}")
    return await run_sync(_sweep, directory, recursive, min_age)


def _sweep(
    directory: str | os.PathLike[str], recursive: bool, min_age: float | None
) -> SweepReport:
    return sweep_sync(directory, recursive=recursive, min_age=min_age)
