"""The kill -9 fuzz: a child overwriting a file is killed at random instants.

The child (``_kill_worker.py``) overwrites one target in a loop with
``retract.atomic_write_bytes(..., overwrite=True)``, each version self-checking (length
and SHA-256 in a header) and from empty to 4 MiB. The parent SIGKILLs it after a random
number of completed writes plus a random delay, so kills land while a version is being
generated, spilled, written, fsynced, renamed or its directory fsynced. After each kill:

* the target is exactly one complete, valid version: the last one before this child or
  one this child wrote (never a torn or a missing file);
* nothing but the target and retract temps is in the directory;
* ``retract.fs.sweep(dir)`` removes every temp the dead child left, and only those.

``RETRACT_KILLS`` sets the number of kills (24 by default; ``nox -s crash_fs`` runs 200);
``RETRACT_SEED`` fixes the seed (the kill instants stay random). The torn-file and
leaked-temp counts are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from retract.fs import sweep
from tests.fs._helpers import names, temps
from tests.fs._kill_worker import TornVersionError, make_version, read_version

KILLS = int(os.environ.get("RETRACT_KILLS", "24"))
SEED = int(os.environ.get("RETRACT_SEED") or random.SystemRandom().randrange(2**32))
WORKER = Path(__file__).with_name("_kill_worker.py")
#: A child that sends nothing for this long has hung (a bug).
HANG_TIMEOUT = 60.0
#: Children run side by side, each lane in its own directory (mostly interpreter start-up).
LANES = 2
#: Sequence numbers of one child start at its kill index times this.
SEQUENCE_STRIDE = 1_000_000


@dataclass(slots=True)
class Child:
    """How one child ended and what it reported before the kill."""

    returncode: int
    killed: bool
    events: bytes
    stderr: str

    @property
    def writes(self) -> int:
        return self.events.count(b"W")


def run_and_kill(target: Path, scratch: Path, rng: random.Random, first: int) -> Child:
    """Start a child on ``target``; SIGKILL it after some writes and a random delay."""
    writes_before = rng.choice((0, 0, 1, 2, 3))
    delay = rng.choice((0.0, rng.uniform(0, 0.002), rng.uniform(0, 0.03)))
    read_fd, write_fd = os.pipe()
    config = {"target": str(target), "seed": rng.randrange(2**32), "first": first, "fd": write_fd}
    err_path = scratch / "child.err"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            pass_fds=(write_fd,),
        )
    os.close(write_fd)
    events = bytearray()
    killed = False
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], HANG_TIMEOUT)
            if not ready:
                raise TimeoutError(f"the child sent nothing for {HANG_TIMEOUT}s")
            chunk = os.read(read_fd, 1)
            if not chunk:
                break  # the child exited by itself (a failure)
            events += chunk
            if events.startswith(b"R") and events.count(b"W") >= writes_before:
                if delay:
                    time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
    finally:
        os.close(read_fd)
        if not killed and proc.poll() is None:
            proc.kill()  # only after a hang or an error here
        returncode = proc.wait()
    return Child(returncode, killed, bytes(events), err_path.read_text(errors="replace"))


@dataclass
class Tally:
    """What the kills left behind, over all lanes."""

    kills: int = 0
    torn: list[str] = field(default_factory=list)
    leaked: int = 0
    kills_leaking: int = 0
    strays: list[str] = field(default_factory=list)
    left_after_sweep: list[str] = field(default_factory=list)
    unchanged: int = 0
    writes: collections.Counter[int] = field(default_factory=collections.Counter)

    def summary(self) -> str:
        return (
            f"kill -9 fuzz: {self.kills} kills (RETRACT_SEED={SEED}): "
            f"torn targets {len(self.torn)}, leaked temps before sweep {self.leaked} "
            f"(after {self.kills_leaking} kills), temps left after sweep "
            f"{len(self.left_after_sweep)}, stray files {len(self.strays)}; "
            f"kills that left the previous version {self.unchanged}; "
            f"completed writes before the kill: {dict(sorted(self.writes.items()))}"
        )


async def kill_once(lane: Path, index: int, tally: Tally, previous: int) -> int:
    """One kill in ``lane``; check and sweep; return the version now in the target."""
    target = lane / "target.bin"
    rng = random.Random(SEED + index)
    first = (index + 1) * SEQUENCE_STRIDE
    child = await asyncio.to_thread(run_and_kill, target, lane.parent, rng, first)
    tag = f"kill {index} (RETRACT_SEED={SEED}, {child.writes} writes before it)"
    assert child.killed, f"{tag}: the child exited by itself ({child.returncode}):\n{child.stderr}"
    assert child.returncode == -signal.SIGKILL, f"{tag}: {child.returncode}"
    tally.kills += 1
    tally.writes[child.writes] += 1
    left = temps(lane)
    tally.leaked += len(left)
    tally.kills_leaking += bool(left)
    tally.strays += [f"{tag}: {name}" for name in names(lane) if name not in {*left, target.name}]
    version = previous
    try:
        version = read_version(target.read_bytes())
    except (TornVersionError, FileNotFoundError) as exc:
        tally.torn.append(f"{tag}: {exc}")
    else:
        if version == previous:
            tally.unchanged += 1
        elif not first <= version < first + SEQUENCE_STRIDE:
            tally.torn.append(f"{tag}: holds version {version}, neither {previous} nor new")
    report = await sweep(lane)
    assert sorted(p.name for p in report.removed) == left, f"{tag}: {report}"
    assert (report.kept, report.failed) == ([], []), f"{tag}: {report}"
    tally.left_after_sweep += [f"{tag}: {name}" for name in temps(lane)]
    return version


async def test_kill_9_never_tears_the_target(tmp_path: Path) -> None:
    """SIGKILL at random instants of overwrite loops leaves one valid version; sweep cleans."""
    tally = Tally()
    queue = iter(range(KILLS))

    async def lane(number: int) -> None:
        directory = tmp_path / f"lane{number}" / "work"
        directory.mkdir(parents=True)
        (directory / "target.bin").write_bytes(make_version(0, b"the initial version"))
        version = 0
        for index in queue:
            version = await kill_once(directory, index, tally, version)

    await asyncio.gather(*(lane(number) for number in range(LANES)))
    print(f"\n{tally.summary()}")
    assert tally.kills == KILLS
    assert tally.torn == [], tally.summary() + "\n" + "\n".join(tally.torn)
    assert tally.strays == [], tally.summary() + "\n" + "\n".join(tally.strays)
    assert tally.left_after_sweep == [], tally.summary()
