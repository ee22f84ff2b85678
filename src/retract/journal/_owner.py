"""Who owns a session, and whether that owner is still alive.

A session records the process that runs it. :meth:`Journal.recover` uses this to find
sessions whose process died: same host and pid space, and either the pid is gone, the
pid is a zombie, or the pid now belongs to a process that started later (pid reuse). An
owner on another host, or in another container of this host, cannot be checked from
here and is left alone.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

from ._records import Owner, SessionRecord, SessionStatus

__all__ = ("ActiveSessions", "active", "current_owner", "owner_alive", "session_held")

_PROC = Path("/proc")
# Start times are derived from clock ticks (10 ms) and the boot time (1 s); two readings
# of the same process agree exactly, a reused pid differs by far more than this.
_START_TOLERANCE = 1.0


def _boot_time() -> float | None:
    try:
        for line in (_PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if unavailable."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> float | None:
    """The POSIX time a process started, from /proc; None where /proc is unavailable."""
    fields = _stat_fields(pid)
    boot = _boot_time()
    if fields is None or boot is None:
        return None
    # fields[0] is field 3 (state); starttime is field 22 in proc(5).
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _machine() -> str | None:
    """The kernel boot id and the pid namespace: where a pid means this process."""
    try:
        boot = (_PROC / "sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink(_PROC / "self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}"


class _Identity:
    """This process's identity, made again in a forked child."""

    owner: Owner

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        pid = os.getpid()
        started = process_start_time(pid)
        self.owner = Owner(
            token=uuid.uuid4().hex,
            pid=pid,
            host=socket.gethostname(),
            started_at=time.time() if started is None else started,
            machine=_machine(),
        )


_identity = _Identity()
os.register_at_fork(after_in_child=_identity.reset)


def current_owner() -> Owner:
    """The :class:`Owner` describing this process."""
    return _identity.owner


def owner_alive(owner: Owner) -> bool | None:
    """Whether the owner process is still running.

    :return: True or False on this host; None when the owner is on another host, or in
        another pid namespace of this host (a container), where liveness cannot be
        checked.
    """
    me = current_owner()
    if owner.token == me.token:
        return True
    if owner.host != me.host or owner.machine != me.machine:
        return None
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    fields = _stat_fields(owner.pid)
    if fields is None:
        # No /proc (macOS, BSD): the pid exists, which is all we can tell.
        return True
    if fields[0] in {"Z", "X"}:
        return False  # a zombie: dead, waiting for its parent to reap it
    started = process_start_time(owner.pid)
    return started is None or abs(started - owner.started_at) <= _START_TOLERANCE


class ActiveSessions:
    """The sessions this process is working on right now: blocks running, undos running.

    Process-wide (not per Journal), so that two journals on one file in one process
    still refuse to undo the same session twice. It lets this process tell its own
    live sessions from ones whose end it failed to write (a storage error): those are
    RUNNING or UNDOING under our owner token but nobody here is working on them.
    """

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.undoing: set[str] = set()
        # Those of them whose row says so (created, or claimed for undo): the leases
        # the journal renews in a storage shared across hosts.
        self.leased: set[str] = set()

    def reset(self) -> None:
        # A forked child works on none of its parent's sessions.
        self.running.clear()
        self.undoing.clear()
        self.leased.clear()


active = ActiveSessions()
os.register_at_fork(after_in_child=active.reset)


def session_held(session: SessionRecord) -> bool | None:
    """Whether someone is still working on a RUNNING or UNDOING session.

    :return: for this process, whether the session's block or undo is running here;
        otherwise :func:`owner_alive` of its owner (None: another host, unknown).
    """
    owner = session.owner
    if owner is None:
        return False
    if owner.token == current_owner().token:
        working = active.undoing if session.status is SessionStatus.UNDOING else active.running
        return session.session_id in working
    return owner_alive(owner)
