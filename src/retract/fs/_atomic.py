"""Async atomic writes: ``atomic_write``, ``atomic_write_bytes/text``, ``atomic_folder``.

Writes inside an ``atomic_write`` block go to a memory buffer; the whole commit (temp,
write, fsync, rename, directory fsync) is then one call in a worker thread under
retract's capacity limiter. A block that writes more than :data:`SPILL_BYTES` spills the
buffer to the temp file in between, so memory stays bounded.
"""

from __future__ import annotations

import codecs
import functools
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Literal

from .._async import checkpoint_if_cancelled, run_sync
from ._durable import (
    TempFile,
    commit_file,
    commit_folder,
    discard_file,
    discard_folder,
    prepare_folder,
    resolve_target,
    write_temp,
)

__all__ = (
    "SPILL_BYTES",
    "AtomicFile",
    "AtomicFolder",
    "AtomicWrite",
    "atomic_folder",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_permissions",
)

#: Buffered bytes above which a write goes to the temp file at once (one thread hop).
SPILL_BYTES = 4 * 1024 * 1024

Mode = Literal["w", "wt", "wb"]
StrPath = str | os.PathLike[str]


async def _checkpoint(discard: Callable[[], Awaitable[None]] | None = None) -> None:
    """Raise a cancellation that is already pending, before a commit or prepare starts.

    The worker calls run shielded from their first instant, so without this an already
    cancelled anyio scope, or a ``task.cancel()`` not yet delivered, would let the write
    go through. ``discard`` (shielded itself) removes what the block had already put on
    disk before the cancellation is raised.
    """
    try:
        await checkpoint_if_cancelled()
    except BaseException:
        if discard is not None:
            await discard()
        raise


def check_permissions(permissions: int | None) -> int | None:
    value: object = permissions  # checked at run time, whatever the annotation says
    if value is not None and (type(value) is not int or not 0 <= value <= 0o7777):
        raise ValueError(
            f"permissions must be an int from 0 to 0o7777, like 0o644, not {permissions!r}"
        )
    return permissions


class AtomicFile:
    """The file object of an ``atomic_write`` block; writes are buffered until commit.

    Nothing is visible at the target until the block ends without an error.
    """

    def __init__(
        self, path: Path, *, text: bool, encoding: str, errors: str, newline: str | None
    ) -> None:
        self.path = path
        self._text = text
        self._encoder = codecs.getincrementalencoder(encoding)(errors) if text else None
        self._newline = os.linesep if newline is None else newline
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._temp: TempFile | None = None
        self._target: str | None = None
        self._directory: str | None = None
        self._temp_dir: StrPath | None = None
        self._failed = False
        self.closed = False

    def __repr__(self) -> str:
        return f"<AtomicFile {str(self.path)!r} {'closed' if self.closed else 'open'}>"

    @property
    def name(self) -> str:
        """The target path as given."""
        return str(self.path)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {str(self.path)!r}")
        if self._failed:
            raise self._failed_error()

    def _failed_error(self) -> ValueError:
        return ValueError(
            f"an earlier write to {str(self.path)!r} failed and its data was lost, so this "
            "atomic write cannot be committed; leave the block (the target is untouched)"
        )

    def _encode(self, data: str | bytes | bytearray | memoryview) -> bytes:
        self._check_open()
        if self._encoder is not None:
            if not isinstance(data, str):
                raise TypeError(f"write() argument must be str, not {type(data).__name__}")
            if self._newline not in ("", "\n"):
                data = data.replace("\n", self._newline)
            return self._encoder.encode(data)
        if isinstance(data, str):
            raise TypeError(
                "a bytes-like object is required, not 'str' (open with mode 'w' for text)"
            )
        return bytes(data)

    async def write(self, data: str | bytes | bytearray | memoryview) -> int:
        """Buffer ``data``; return how many characters (text) or bytes were given.

        Reaches the disk only past :data:`SPILL_BYTES` of buffered data (then one thread
        hop). If the awaiting task is cancelled during a spill, the spill finishes first.
        """
        chunk = self._encode(data)
        if chunk:
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            if self._buffered >= SPILL_BYTES:
                await self.flush()
        # len() of a memoryview counts items, not bytes
        return len(data) if self._encoder is not None else len(chunk)

    async def writelines(self, lines: Iterable[str | bytes]) -> None:
        """Write each item of ``lines`` (no separators are added, as with files)."""
        for line in lines:
            await self.write(line)

    async def flush(self) -> None:
        """Move the buffered data to the temp file now (creating it if needed)."""
        self._check_open()
        if not self._chunks:
            return
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        await run_sync(self._spill, chunks)

    def _spill(self, chunks: list[bytes]) -> None:
        try:
            if self._target is None:
                self._target, self._directory = resolve_target(self.path, self._temp_dir)
            assert self._directory is not None  # noqa: S101
            # Stored from the worker thread, so a cancelled caller still knows the temp.
            self._temp = write_temp(self._temp, self._target, self._directory, chunks)
        except BaseException:
            # The chunks are gone: a caller that swallows this error must not be able to
            # commit a file that silently lacks them.
            self._failed = True
            raise

    def _tail(self) -> list[bytes]:
        if self._encoder is not None:
            last = self._encoder.encode("", final=True)
            if last:
                self._chunks.append(last)
        return self._chunks

    def _commit(self, overwrite: bool, durable: bool, permissions: int | None) -> None:
        if self._target is None:
            self._target, self._directory = resolve_target(self.path, self._temp_dir)
        assert self._directory is not None  # noqa: S101
        commit_file(
            self._temp,
            self._target,
            self._directory,
            self._tail(),
            overwrite=overwrite,
            durable=durable,
            permissions=permissions,
        )

    def _discard(self) -> None:
        if self._temp is not None:
            discard_file(self._temp)


class AtomicWrite:
    """The async context manager returned by :func:`atomic_write`."""

    def __init__(
        self,
        path: StrPath,
        mode: Mode = "w",
        *,
        overwrite: bool = False,
        durable: bool = True,
        encoding: str = "utf-8",
        errors: str = "strict",
        newline: str | None = None,
        permissions: int | None = None,
        temp_dir: StrPath | None = None,
    ) -> None:
        if mode not in ("w", "wt", "wb"):
            raise ValueError(f"mode must be 'w' (text) or 'wb' (bytes), not {mode!r}")
        if newline not in (None, "", "\n", "\r", "\r\n"):
            raise ValueError(f"illegal newline value: {newline!r}")
        codecs.lookup(encoding)  # LookupError now, not at the first write
        self._file = AtomicFile(
            Path(path), text=mode != "wb", encoding=encoding, errors=errors, newline=newline
        )
        self._file._temp_dir = temp_dir
        self._overwrite = overwrite
        self._durable = durable
        self._permissions = check_permissions(permissions)
        self._entered = False

    async def __aenter__(self) -> AtomicFile:
        if self._entered:
            raise RuntimeError("an atomic_write() context can be entered only once")
        self._entered = True
        return self._file

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        file = self._file
        file.closed = True
        if exc is not None or file._failed:
            await self._discard_temp()
            if exc is None:
                raise file._failed_error()
            return
        await _checkpoint(self._discard_temp)
        await run_sync(file._commit, self._overwrite, self._durable, self._permissions)

    async def _discard_temp(self) -> None:
        """Remove the temp a spill made, if any (in a worker thread, shielded)."""
        if self._file._temp is not None:
            await run_sync(self._file._discard)


def atomic_write(
    path: StrPath,
    mode: Mode = "w",
    *,
    overwrite: bool = False,
    durable: bool = True,
    encoding: str = "utf-8",
    errors: str = "strict",
    newline: str | None = None,
    permissions: int | None = None,
    temp_dir: StrPath | None = None,
) -> AtomicWrite:
    """Write a file atomically: readers see the old content or all of the new, never part.

    ::

        async with atomic_write("result.json", "w", overwrite=True) as f:
            await f.write(text)

    The block's writes are buffered; when it ends without an error, one worker-thread
    call writes a temp file next to the target (exclusive create, a recognisable hidden
    name), fsyncs it, renames it onto the target and fsyncs the directory. A block that
    raises leaves the target untouched and no temp behind.

    - ``mode``: ``"w"`` (text, encoded with ``encoding``/``errors``, newlines as
      ``open()`` translates them) or ``"wb"`` (bytes).
    - ``overwrite=False`` (the default) refuses an existing target, atomically
      (``renameat2`` RENAME_NOREPLACE on Linux).
    - ``durable=False`` skips both fsyncs: still atomic, not crash-durable.
    - ``permissions``: the new file's mode bits. By default an overwritten file keeps
      its bits (and owner, where the process may set it); a new file gets 0o666 less
      the umask, like ``open()``.
    - ``temp_dir``: where the temp goes instead of the target's directory (it must be on
      the same filesystem).
    - A symlink target is followed: the file it points to is replaced, the link stays.

    :raises FileAlreadyExistsError: the target exists and ``overwrite=False``.
    :raises CrossDeviceError: ``temp_dir`` is on another filesystem.
    :raises DurabilityError: the new content is in place but the directory fsync failed.
    :raises IsADirectoryError: the target is a directory.
    :raises FileNotFoundError: the target's directory does not exist.
    :raises PermissionError: the directory is not writable.
    :raises OSError: the file name is too long, or the disk failed (a failed fsync).

    Cancellation: one inside the block, or one already pending when the block ends (a
    cancelled anyio scope, a ``task.cancel()`` not yet delivered), discards the write;
    the target is untouched and no temp remains. One that arrives once the commit has
    started waits for it: the commit finishes (the target then holds the new content)
    and the cancellation is raised after it. Either way the call never returns before
    the outcome is settled.
    """
    return AtomicWrite(
        path,
        mode,
        overwrite=overwrite,
        durable=durable,
        encoding=encoding,
        errors=errors,
        newline=newline,
        permissions=permissions,
        temp_dir=temp_dir,
    )


async def atomic_write_bytes(
    path: StrPath,
    data: bytes | bytearray | memoryview,
    *,
    overwrite: bool = False,
    durable: bool = True,
    permissions: int | None = None,
    temp_dir: StrPath | None = None,
) -> None:
    """Write ``data`` to ``path`` atomically, in one worker-thread call.

    Same guarantees, errors and cancellation behaviour as :func:`atomic_write`.
    """
    given: object = data  # checked at run time, whatever the annotation says
    if isinstance(given, str):
        raise TypeError("a bytes-like object is required, not 'str' (use atomic_write_text)")
    # The data is all here: no buffer object, just the one worker-thread call.
    chunk = bytes(data)
    check_permissions(permissions)
    await checkpoint_if_cancelled()
    write = functools.partial(
        _write_now,
        path,
        temp_dir,
        chunk,
        overwrite=overwrite,
        durable=durable,
        permissions=permissions,
    )
    await run_sync(write)


def _write_now(
    path: StrPath,
    temp_dir: StrPath | None,
    chunk: bytes,
    *,
    overwrite: bool,
    durable: bool,
    permissions: int | None,
) -> None:
    target, directory = resolve_target(path, temp_dir)
    commit_file(
        None,
        target,
        directory,
        (chunk,),
        overwrite=overwrite,
        durable=durable,
        permissions=permissions,
    )


async def atomic_write_text(
    path: StrPath,
    text: str,
    *,
    overwrite: bool = False,
    durable: bool = True,
    encoding: str = "utf-8",
    errors: str = "strict",
    newline: str | None = None,
    permissions: int | None = None,
    temp_dir: StrPath | None = None,
) -> None:
    """Write ``text`` to ``path`` atomically, in one worker-thread call.

    Same guarantees, errors and cancellation behaviour as :func:`atomic_write`.
    """
    async with atomic_write(
        path,
        "w",
        overwrite=overwrite,
        durable=durable,
        encoding=encoding,
        errors=errors,
        newline=newline,
        permissions=permissions,
        temp_dir=temp_dir,
    ) as f:
        await f.write(text)


class AtomicFolder:
    """The async context manager returned by :func:`atomic_folder`."""

    def __init__(
        self, path: StrPath, *, overwrite: bool, durable: bool, temp_dir: StrPath | None
    ) -> None:
        self._path = path
        self._overwrite = overwrite
        self._durable = durable
        self._temp_dir = temp_dir
        self._prepared: tuple[str, str, int] | None = None
        self._entered = False

    async def __aenter__(self) -> Path:
        if self._entered:
            raise RuntimeError("an atomic_folder() context can be entered only once")
        self._entered = True
        await _checkpoint()  # a cancellation already pending creates nothing
        try:
            await run_sync(self._prepare)
        except BaseException:
            # A cancellation is raised only after the worker finished: a folder it made
            # must not outlive it.
            if self._prepared is not None:
                await run_sync(discard_folder, self._prepared[1])
            raise
        assert self._prepared is not None  # noqa: S101
        return Path(self._prepared[1])

    def _prepare(self) -> None:
        # Stored from the worker thread, so it is known even if the caller was cancelled.
        self._prepared = prepare_folder(self._path, self._temp_dir, overwrite=self._overwrite)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._prepared is not None  # noqa: S101
        target, folder, fresh_mode = self._prepared
        if exc is not None:
            await run_sync(discard_folder, folder)
            return
        await _checkpoint(lambda: run_sync(discard_folder, folder))
        await run_sync(_commit_folder, folder, target, fresh_mode, self._overwrite, self._durable)


def _commit_folder(
    folder: str, target: str, fresh_mode: int, overwrite: bool, durable: bool
) -> None:
    commit_folder(folder, target, fresh_mode, overwrite=overwrite, durable=durable)


def atomic_folder(
    path: StrPath,
    *,
    overwrite: bool = False,
    durable: bool = True,
    temp_dir: StrPath | None = None,
) -> AtomicFolder:
    """Build a folder in a temp place, then swap it in atomically.

    ::

        async with atomic_folder("out/", overwrite=True) as tmp:  # tmp: pathlib.Path
            (tmp / "result.json").write_text(text)

    Entering creates a hidden temp folder next to the target (one worker-thread call).
    When the block ends without an error, every file in it is fsynced, the folder is
    renamed onto the target (RENAME_NOREPLACE; with ``overwrite=True`` and an existing
    target, RENAME_EXCHANGE swaps the two atomically and the old tree is then removed)
    and the parent directory is fsynced. A new folder honours the umask; a replaced one
    keeps the old folder's permission bits unless the block changed the temp's.

    A missing target with ``overwrite=True`` is simply created. Where the kernel lacks
    the rename flags, the swap falls back to plain renames, which leave a short window
    in which the target is missing.

    :raises FileAlreadyExistsError: the target exists and ``overwrite=False`` (at entry,
        and again at the swap if it appeared meanwhile).
    :raises NotADirectoryError: the target exists and is not a directory.
    :raises CrossDeviceError: ``temp_dir`` is on another filesystem.
    :raises DurabilityError: the new folder is in place but the parent fsync failed.

    Cancellation behaves as in :func:`atomic_write`: a cancellation already pending at
    entry creates nothing; one inside the block, or already pending when the block ends,
    leaves the target untouched and removes the temp folder; the swap, once started,
    finishes before the cancellation is raised. A block that raises also leaves the
    target untouched and removes the temp folder.
    """
    return AtomicFolder(path, overwrite=overwrite, durable=durable, temp_dir=temp_dir)
