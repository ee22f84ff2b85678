"""The heartbeat that keeps this process's sessions leased in a storage shared by hosts.

A pid check cannot see another host. In a :class:`~.storage.LeaseStorage` every RUNNING
or UNDOING session carries its owner's lease, and the owner must renew it: while a
journal on such a storage is open, a task renews the leases of the sessions this
process works on (``active.leased``) every third of the lease, so a lease lapses only
when the process died, or went two whole renewal periods without reaching the database
or running its event loop. Then another process's ``recover()`` may take the session
over; the next renewal finds that out and says so in the log, and the storage refuses
every further write of ours to it (:class:`~retract.SessionTakenOverError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .._errors import JournalClosedError
from ._owner import active, current_owner
from .storage._protocol import LeaseStorage

__all__ = ("Heartbeat",)

logger = logging.getLogger("retract")


class Heartbeat:
    """Renews the leases of this process's sessions in one storage, until stopped."""

    def __init__(self, storage: LeaseStorage) -> None:
        self.storage = storage
        self.interval = storage.lease_timeout / 3
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start renewing (from a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"retract lease heartbeat {self.storage.location}"
            )

    async def stop(self) -> None:
        """Stop renewing and wait until the task is gone. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except JournalClosedError:
                return

    async def beat(self) -> set[str]:
        """Renew once.

        :return: the sessions this process still works on that another process took
            over (each also logged as an error).
        """
        held = set(active.leased)
        if not held:
            return set()
        try:
            gone = await self.storage.renew_leases(current_owner().token, held)
        except (JournalClosedError, asyncio.CancelledError):
            raise
        except Exception as exc:
            logger.warning(
                "could not renew the leases of %d session(s) in %s (%s); trying again "
                "in %.3gs. If this goes on past the lease (%.3gs), other processes may "
                "take them over",
                len(held),
                self.storage.location,
                exc,
                self.interval,
                self.storage.lease_timeout,
            )
            return set()
        lost = gone & active.leased
        active.leased.difference_update(lost)  # said once; the storage refuses the rest
        for session_id in sorted(lost):
            logger.error(
                "session %s was taken over by another process: this process did not renew "
                "its lease in time (a blocked event loop or a lost connection for longer "
                "than %.3gs?); its further writes to it are refused",
                session_id,
                self.storage.lease_timeout,
            )
        return lost
