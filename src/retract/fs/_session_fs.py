"""``session.fs``: file operations that are performed, journaled and undoable."""

from __future__ import annotations

import codecs
import logging
import os
from typing import TYPE_CHECKING, Any

import anyio.lowlevel

from .._async import run_sync
from ..journal._encoding import new_id
from ._atomic import check_permissions
from ._ops import FsOp, copy_op, delete_op, mkdir_op, move_op, rmtree_op, write_op

if TYPE_CHECKING:
    from ..journal._session import Session

__all__ = ("SessionFs",)

logger = logging.getLogger("retract")

StrPath = str | os.PathLike[str]


def _check_mode(mode: int) -> int:
    value: object = mode  # checked at run time, whatever the annotation says
    if type(value) is not int or not 0 <= mode <= 0o7777:
        raise ValueError(f"mode must be an int from 0 to 0o7777, like 0o755, not {mode!r}")
    return mode


def _absolute(path: StrPath) -> str:
    # A string operation plus getcwd(): nothing that can block on a disk.
    return os.path.abspath(path)


class SessionFs:
    """Reversible file operations journaled into one session (``session.fs``).

    Each call checks its arguments, prepares what it can without touching the visible
    tree (a temp written and synced), journals a durable intent, makes the change, and
    records DONE with what it found. ``journal.undo_session`` reverts it with a built-in
    handler, after checking that the path did not change since (see ``drift``).

    Deletes and overwrites keep a before-image in the journal's image area
    (:attr:`Journal.images_dir`): a rename or hard link when that area is on the file's
    filesystem, a copy otherwise. Images are removed when the session is pruned.

    Paths are made absolute at call time. ``durable=False`` skips the fsyncs of files
    and directories (the journal rows keep the journal's own durability).

    If the awaiting task is cancelled, a change that has started finishes and is
    journaled as DONE before the cancellation is raised; a change that had not started
    leaves nothing behind (no temp, no image).
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def __repr__(self) -> str:
        return f"<SessionFs of {self._session!r}>"

    def _image(self) -> str:
        folder = self._session.journal.images_dir / self._session.session_id
        return os.fspath(folder / new_id())

    async def write_bytes(
        self,
        path: StrPath,
        data: bytes | bytearray | memoryview,
        *,
        overwrite: bool = True,
        durable: bool = True,
        permissions: int | None = None,
    ) -> None:
        """Write ``data`` to ``path`` atomically; an old file is kept for undo.

        Unlike :func:`~retract.atomic_write_bytes`, ``overwrite`` defaults to True: the
        old content is kept as a before-image, so the overwrite is reversible. A symlink
        is followed (the file it points to is replaced). Undo puts the old file back,
        or removes the new one if there was none.

        :raises FileAlreadyExistsError: ``overwrite=False`` and the file exists.
        :raises IsADirectoryError: ``path`` is a directory.
        """
        op = write_op(
            _absolute(path),
            bytes(data),
            self._image(),
            overwrite=overwrite,
            durable=durable,
            permissions=check_permissions(permissions),
        )
        await self._run(op)

    async def write_text(
        self,
        path: StrPath,
        text: str,
        *,
        encoding: str = "utf-8",
        errors: str = "strict",
        newline: str | None = None,
        overwrite: bool = True,
        durable: bool = True,
        permissions: int | None = None,
    ) -> None:
        """Write ``text`` to ``path`` atomically, like :meth:`write_bytes`."""
        if not isinstance(text, str):
            raise TypeError(f"write_text() needs a str, not {type(text).__name__}")
        if newline not in (None, "", "\n", "\r", "\r\n"):
            raise ValueError(f"illegal newline value: {newline!r}")
        separator = os.linesep if newline is None else newline
        if separator not in ("", "\n"):
            text = text.replace("\n", separator)
        data = codecs.encode(text, encoding, errors)
        await self.write_bytes(
            path, data, overwrite=overwrite, durable=durable, permissions=permissions
        )

    async def move(
        self, src: StrPath, dst: StrPath, *, overwrite: bool = False, durable: bool = True
    ) -> None:
        """Rename ``src`` (a file, symlink or directory) to ``dst``.

        An existing ``dst`` is refused unless ``overwrite=True``; it is then kept as a
        before-image. Undo moves it back and restores what it replaced.

        :raises FileNotFoundError: ``src`` or ``dst``'s directory does not exist.
        :raises FileAlreadyExistsError: ``dst`` exists and ``overwrite=False``.
        :raises CrossDeviceError: ``dst`` is on another filesystem (copy, then delete).
        """
        op = move_op(
            _absolute(src),
            _absolute(dst),
            self._image(),
            overwrite=overwrite,
            durable=durable,
        )
        await self._run(op)

    async def copy(
        self, src: StrPath, dst: StrPath, *, overwrite: bool = False, durable: bool = True
    ) -> None:
        """Copy a file (content, permission bits, times) or a directory tree to ``dst``.

        The copy is built in a temp next to ``dst`` and renamed in, so ``dst`` never
        holds a partial copy. Undo removes it and restores what it replaced.

        :raises FileNotFoundError: ``src`` or ``dst``'s directory does not exist.
        :raises FileAlreadyExistsError: ``dst`` exists and ``overwrite=False``.
        """
        op = copy_op(
            _absolute(src),
            _absolute(dst),
            self._image(),
            overwrite=overwrite,
            durable=durable,
        )
        await self._run(op)

    async def delete(
        self, path: StrPath, *, missing_ok: bool = False, durable: bool = True
    ) -> None:
        """Delete a file or symlink, keeping it as a before-image until the prune.

        :raises FileNotFoundError: it does not exist (unless ``missing_ok``: then
            nothing is journaled).
        :raises IsADirectoryError: it is a directory (use :meth:`rmtree`).
        """
        op = delete_op(_absolute(path), self._image(), missing_ok=missing_ok, durable=durable)
        await self._run(op)

    async def mkdir(
        self,
        path: StrPath,
        *,
        mode: int = 0o777,
        parents: bool = False,
        exist_ok: bool = False,
        durable: bool = True,
    ) -> None:
        """Create a directory (``parents=True``: and its missing parents).

        Undo removes the directories this call created, deepest first; one that is no
        longer empty counts as drift.

        :raises FileAlreadyExistsError: it exists (unless ``exist_ok``: then nothing
            is journaled).
        :raises FileNotFoundError: its parent is missing and ``parents=False``.
        """
        op = mkdir_op(
            _absolute(path),
            mode=_check_mode(mode),
            parents=parents,
            exist_ok=exist_ok,
            durable=durable,
        )
        await self._run(op)

    async def rmtree(self, path: StrPath, *, durable: bool = True) -> None:
        """Remove a directory tree, keeping it whole as a before-image until the prune.

        :raises FileNotFoundError: it does not exist.
        :raises NotADirectoryError: it is not a directory (use :meth:`delete`).
        """
        op = rmtree_op(_absolute(path), self._image(), durable=durable)
        await self._run(op)

    async def _run(self, op: FsOp) -> None:
        session = self._session
        session._check_open()
        # Worker-thread calls finish once started, even if cancelled; a cancellation
        # that is already pending (an anyio scope, a task.cancel()) stops us before.
        await anyio.lowlevel.checkpoint()
        prepared: list[dict[str, Any] | None] = []
        try:
            await run_sync(lambda: prepared.append(op.prepare()))
        except BaseException:
            if prepared and prepared[0] is not None:
                await _abandon(op, prepared[0])
            raise
        payload = prepared[0]
        if payload is None:
            return
        facts: list[dict[str, Any]] = []
        late: BaseException | None = None
        try:
            async with session.step(op.op_type, payload) as step:
                await anyio.lowlevel.checkpoint()  # cancelled meanwhile: nothing changes
                try:
                    await run_sync(lambda: facts.append(op.commit(payload)))
                except BaseException as exc:
                    known = getattr(exc, "retract_facts", None)
                    if known is not None:
                        step.update(known)  # stored with FAILED: undo knows what happened
                    if not facts:
                        raise
                    late = exc  # the change is complete: journal DONE, then raise
                step.update(facts[0])
        except BaseException:
            if not facts:
                await _abandon(op, payload)
            raise
        if late is not None:
            raise late


async def _abandon(op: FsOp, payload: dict[str, Any]) -> None:
    """Remove what a prepared operation left (its temp); never hides the real error."""
    if op.abandon is None:
        return
    try:
        await run_sync(op.abandon, payload)
    except Exception:
        logger.warning(
            "could not remove the temp of an abandoned %s; `retract sweep` will",
            op.op_type,
            exc_info=True,
        )
