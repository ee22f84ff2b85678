"""A throwaway PostgreSQL cluster, for the benchmarks and the test suite alike.

``initdb`` in a fresh temporary directory, the server on a free port of 127.0.0.1 only,
trust authentication for ``postgres``, run as the ``postgres`` user when we are root
(root may not run ``initdb``). The benchmarks run it with the durability settings ON
(:data:`DURABLE`: every commit flushed to disk), because they compare durable records
with SQLite at ``synchronous=FULL`` and with unmake (``benchmarks/journal.py --storage
postgres``); the tests (``tests/_postgres.py``) with them off, for speed.

:meth:`Cluster.stop` stops the server (``pg_ctl stop -m immediate``), reaps it, deletes
its directory and returns the ids of its processes that are still alive (none, normally).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import free_port

__all__ = ("DURABLE", "FAST", "Cluster", "find_binaries", "start_cluster")

_PROGRAMS = ("initdb", "postgres", "pg_ctl")
_START_TIMEOUT = 60.0
#: Durable: the server's defaults, spelled out so that the benchmark prints what it ran.
DURABLE = {
    "listen_addresses": "127.0.0.1",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "200",
    "log_min_messages": "warning",
}
#: For tests: nothing flushed (a crash of the throwaway server loses nothing we keep).
FAST = {**DURABLE, "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
SETTINGS = DURABLE  # what the benchmark prints


def find_binaries(env: str = "RETRACT_BENCH_POSTGRES_BIN") -> Path | None:
    """The directory of ``initdb``, ``postgres`` and ``pg_ctl``, newest version first.

    :param env: an environment variable that may name the directory first.
    """
    candidates: list[Path] = []
    if os.environ.get(env):
        candidates.append(Path(os.environ[env]))
    if (initdb := shutil.which("initdb")) is not None:
        candidates.append(Path(initdb).resolve().parent)

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in _PROGRAMS):
            return directory
    return None


def _children(pid: int) -> set[int]:
    """Ids of the live processes whose parent is ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the command name (field 2) may hold spaces and parentheses: split after it
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has ended


@dataclass
class Cluster:
    """A running throwaway cluster; :meth:`stop` ends it and removes its files."""

    root: Path
    bin_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    run_as: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        """The superuser's URL on the maintenance database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """The superuser's URL on ``database``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def cpu_seconds(self) -> float:
        """CPU time of the server so far: the postmaster, its live and its ended children."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in {self.process.pid} | _children(self.process.pid):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                # utime, stime (fields 14, 15), and for the postmaster the reaped
                # children's cutime, cstime (16, 17); here numbered from field 3
                last = 15 if pid == self.process.pid else 13
                total += sum(int(value) for value in fields[11:last])
        return total / tick

    def stop(self) -> list[int]:
        """Stop the server at once, reap it, delete the directory.

        Returns the ids of the server's processes still alive afterwards (empty when
        everything ended, as it should).
        """
        if self.stopped:
            return []
        self.stopped = True
        pids = {self.process.pid} | _children(self.process.pid)
        try:
            if self.process.poll() is None:
                subprocess.run(
                    [self.bin_dir / "pg_ctl", "stop", "-D", self.data, "-m", "immediate", "-w"],
                    cwd=self.root,
                    capture_output=True,
                    timeout=60,
                    check=False,
                    **self.run_as,
                )
                try:
                    self.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=15)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
        deadline = time.monotonic() + 10
        while (left := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return sorted(left)


def _run_as() -> dict[str, Any]:
    """Popen arguments to run the server as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return {}
    import pwd  # noqa: PLC0415  (POSIX only, and only needed as root)

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root, which may not run initdb, and there is no 'postgres' user "
            "to run the server as: create one, or run as another user"
        ) from None
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def start_cluster(
    bin_dir: Path, *, settings: dict[str, str] = DURABLE, hba_first: str = ""
) -> Cluster:
    """Create and start a cluster in a fresh temporary directory; wait until it is ready.

    :param settings: the server's ``-c`` settings (:data:`DURABLE` or :data:`FAST`).
    :param hba_first: ``pg_hba.conf`` lines put before the default ones (first match wins).
    """
    run_as = _run_as()
    root = Path(tempfile.mkdtemp(prefix="retract-pg-"))
    try:
        if run_as:
            os.chown(root, run_as["user"], run_as["group"])
        initdb = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres"]
        subprocess.run(
            [*initdb, "--auth=trust", "-E", "UTF8", "--locale=C"],
            cwd=root,
            capture_output=True,
            check=True,
            timeout=300,
            **run_as,
        )
        if hba_first:
            hba = root / "data" / "pg_hba.conf"
            hba.write_text(hba_first + hba.read_text())
        for _ in range(5):  # another program may take the free port before the server does
            cluster = _start_server(root, bin_dir, free_port(), run_as, settings)
            if cluster is not None:
                return cluster
        raise RuntimeError(f"PostgreSQL did not start: see {root / 'server.log'}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _start_server(
    root: Path, bin_dir: Path, port: int, run_as: dict[str, Any], settings: dict[str, str]
) -> Cluster | None:
    """Start the server on ``port``; None if the port was taken meanwhile."""
    given = {**settings, "port": str(port), "unix_socket_directories": str(root)}
    options = [arg for name, value in given.items() for arg in ("-c", f"{name}={value}")]
    log = root / "server.log"
    with log.open("ab") as sink:
        if run_as:
            os.chown(log, run_as["user"], run_as["group"])
        process = subprocess.Popen(
            [bin_dir / "postgres", "-D", root / "data", *options],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C is not sent to the server
            **run_as,
        )
    cluster = Cluster(root, bin_dir, port, process, run_as)
    atexit.register(cluster.stop)  # if the program ends without its finally blocks
    pid_file = root / "data" / "postmaster.pid"
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            cluster.stopped = True
            text = log.read_text(errors="replace")
            if "could not bind" in text or "already in use" in text:
                return None
            raise RuntimeError(f"PostgreSQL exited at start:\n{text}")
        with contextlib.suppress(OSError):
            lines = pid_file.read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":  # what pg_ctl -w waits for
                return cluster
        time.sleep(0.02)
    cluster.stop()
    raise RuntimeError(f"PostgreSQL was not ready after {_START_TIMEOUT:g}s")
