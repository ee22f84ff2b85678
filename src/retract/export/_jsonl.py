"""JsonLinesExporter: changes appended to a file, one JSON object per line."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .._async import run_sync
from ._base import Exporter, RetryableExportError
from ._encode import dumps

__all__ = ("JsonLinesExporter",)

_write = os.write  # a name of this module's own, so that a test can fail it


class JsonLinesExporter(Exporter):
    """Append each batch of changes to ``path``, one JSON object per line.

    The encoding and the write run in a worker thread, never on the event loop, one
    batch at a time (several attached trees share the file). A batch is written whole
    or not at all: if a write fails part way (a full disk), the file is cut back to
    where the batch started and the batch is retried, so the file holds no half batch
    and no torn line (unless cutting it back fails too). If the file is removed or
    moved away (an outside log rotation), the next batch starts a new one at ``path``.

    :param path: the file; created (with its missing parents refused) when needed.
    :param fsync: flush each batch to disk with ``fsync`` before counting it exported.
    :param rotate_bytes: when a batch would grow the file past this size, the file is
        renamed to ``path.1`` first (``path.1`` to ``path.2``, and so on) and a new one
        started. None: never rotate.
    :param backups: rotated files kept (``path.1`` .. ``path.N``); older ones are removed.
    :param options: batching, buffering and retry options of :class:`Exporter`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        rotate_bytes: int | None = None,
        backups: int = 5,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if rotate_bytes is not None and not _is_count(rotate_bytes, 1):
            raise ValueError(f"rotate_bytes must be an int > 0 or None, not {rotate_bytes!r}")
        if not _is_count(backups, 1):
            raise ValueError(f"backups must be an int >= 1, not {backups!r}")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(
                f"the folder of {str(self.path)!r} does not exist; create it first"
            )
        if self.path.is_dir():
            raise IsADirectoryError(f"{str(self.path)!r} is a folder; give a file path")
        if not isinstance(fsync, bool):
            raise ValueError(f"fsync must be True or False, not {fsync!r}")
        self.fsync = fsync
        self.rotate_bytes = rotate_bytes
        self.backups = backups
        self._fd: int | None = None
        self._lock = threading.Lock()

    async def send(self, batch: list[dict[str, Any]]) -> None:
        try:
            await run_sync(self._write, batch)
        except OSError as error:
            raise RetryableExportError(f"writing to {str(self.path)!r} failed: {error}") from error

    async def close_sink(self) -> None:
        await run_sync(self._close)

    # -- in a worker thread ---------------------------------------------------------------

    def _close(self) -> None:
        with self._lock:
            self._drop_fd()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        text = "".join(dumps(record) + "\n" for record in batch)
        data = text.encode("utf-8", "backslashreplace")  # a lone surrogate: its JSON escape
        # One batch at a time: the trees attached to this exporter send from their own
        # tasks, so their writes may run in several worker threads at once.
        with self._lock:
            fd = self._open()
            start = os.fstat(fd).st_size
            if self.rotate_bytes is not None and start and start + len(data) > self.rotate_bytes:
                self._rotate()
                fd = self._open()
                start = 0
            try:
                view = memoryview(data)
                while view:
                    written = _write(fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            except OSError:
                try:  # not half a batch: the retry writes it whole
                    os.ftruncate(fd, start)
                except OSError:
                    self._drop_fd()  # reopened by the retry
                raise

    def _open(self) -> int:
        if self._fd is not None:
            # Removed, or moved away by an outside log rotation: start a new file at
            # the path rather than keep writing where nobody will look.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            held = os.fstat(self._fd)
            if current is None or (current.st_ino, current.st_dev) != (held.st_ino, held.st_dev):
                self._drop_fd()
        if self._fd is None:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666
            )
        return self._fd

    def _drop_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _rotate(self) -> None:
        self._drop_fd()
        name = str(self.path)
        oldest = f"{name}.{self.backups}"
        if os.path.exists(oldest):
            os.unlink(oldest)
        for index in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{name}.{index}"):
                os.rename(f"{name}.{index}", f"{name}.{index + 1}")
        os.rename(name, f"{name}.1")


def _is_count(value: object, least: int) -> bool:
    return type(value) is int and value >= least
