"""Cancelling atomic writes: the target is old or new, no temp remains, no thread runs on.

Every way an asyncio application cancels is tried: ``task.cancel()``,
``asyncio.timeout``, ``asyncio.wait_for``, a failing ``asyncio.TaskGroup`` sibling, and
anyio's ``move_on_after`` and cancel scopes. The state is observed *at the moment the
cancellation reaches the awaiting code* (in an ``except`` right around the atomic call),
so a call that returned while its worker thread was still changing files would be seen
with a temp on disk or a worker still counted as running.

Two kinds of test:

* random instants: the cancel lands after a random delay, with fsyncs and temp writes
  slowed down so the windows (block, spill, commit, folder swap) are wide;
* gated instants: the worker thread is held inside one phase (a spill, the commit, the
  folder's creation or swap) until the cancellation has been delivered, so the phase
  that matters most is hit every time.

``RETRACT_SEED`` fixes the seed of the random delays; ``RETRACT_CANCEL_TRIALS`` (10 by
default) sets the trials per mechanism and kind of write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import pytest

from retract import atomic_folder, atomic_write, atomic_write_bytes
from retract.fs import _atomic, _durable
from tests.fs._helpers import names, temps, tree

SEED = int(os.environ.get("RETRACT_SEED") or random.SystemRandom().randrange(2**32))
TRIALS = int(os.environ.get("RETRACT_CANCEL_TRIALS", "10"))

OLD_BYTES = b"old content\n" * 20
NEW_BYTES = bytes(range(256)) * 3
OLD_TREE: dict[str, bytes | None] = {"a": b"old a", "sub": None, "sub/b": b"old b"}
NEW_TREE: dict[str, bytes | None] = {"c": b"new c", "sub": None, "sub/d": b"new d", "e": b"e"}
#: The blocking calls of ``_atomic`` that run in worker threads (counted while running).
WORKER_CALLS = (
    "commit_file",
    "write_temp",
    "discard_file",
    "resolve_target",
    "prepare_folder",
    "discard_folder",
    "commit_folder",
)


class Boom(Exception):
    """A TaskGroup sibling failing on purpose (which cancels the write)."""


# -- what one kind of write does and how its result looks ---------------------------------


class Scene:
    """One kind of atomic write, with the old state to start from and the new one."""

    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def target(self) -> Path:
        """The file or folder written."""
        raise NotImplementedError

    def reset(self, exists: bool) -> None:
        """Put the old state (or nothing, if not ``exists``) in place."""
        raise NotImplementedError

    async def write(self) -> None:
        """The atomic write that is cancelled."""
        raise NotImplementedError

    def state(self) -> str:
        """Which state the target is in: old, new, absent, or what else it holds."""
        raise NotImplementedError


class FileScene(Scene):
    """atomic_write of NEW_BYTES in 48-byte writes, each followed by an await."""

    name = "file"

    @property
    def target(self) -> Path:
        return self.root / "t.bin"

    def reset(self, exists: bool) -> None:
        self.target.unlink(missing_ok=True)
        if exists:
            self.target.write_bytes(OLD_BYTES)

    async def write(self) -> None:
        async with atomic_write(self.target, "wb", overwrite=True) as f:
            for start in range(0, len(NEW_BYTES), 48):
                await f.write(NEW_BYTES[start : start + 48])
                await asyncio.sleep(0)

    def state(self) -> str:
        if not self.target.exists():
            return "absent"
        data = self.target.read_bytes()
        if data == OLD_BYTES:
            return "old"
        if data == NEW_BYTES:
            return "new"
        return f"torn ({len(data)} bytes)"


class SpillingFileScene(FileScene):
    """The same write with SPILL_BYTES at 64: most writes spill to the temp file."""

    name = "spilling-file"


class FolderScene(Scene):
    """atomic_folder(overwrite=True) filled with NEW_TREE, an await after each file."""

    name = "folder"

    @property
    def target(self) -> Path:
        return self.root / "out"

    def reset(self, exists: bool) -> None:
        if self.target.exists():
            _durable.discard_folder(str(self.target))
        if exists:
            write_tree(self.target, OLD_TREE)

    async def write(self) -> None:
        async with atomic_folder(self.target, overwrite=True) as tmp:
            for relative, data in NEW_TREE.items():
                if data is None:
                    (tmp / relative).mkdir()
                else:
                    (tmp / relative).write_bytes(data)
                await asyncio.sleep(0)

    def state(self) -> str:
        if not self.target.exists():
            return "absent"
        found = tree(self.target)
        if found == OLD_TREE:
            return "old"
        if found == NEW_TREE:
            return "new"
        return f"mixed {found}"


def write_tree(root: Path, layout: dict[str, bytes | None]) -> None:
    root.mkdir()
    for relative, data in layout.items():
        if data is None:
            (root / relative).mkdir()
        else:
            (root / relative).write_bytes(data)


SCENES: dict[str, type[Scene]] = {
    scene.name: scene for scene in (FileScene, SpillingFileScene, FolderScene)
}


# -- watching the worker threads -----------------------------------------------------------


@dataclass
class Workers:
    """Counts the blocking calls of ``_atomic`` running in worker threads right now."""

    running: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.running += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.running -= 1

        return counted


def count_workers(monkeypatch: pytest.MonkeyPatch) -> Workers:
    """Wrap the worker calls of ``_atomic`` (after any other patch of them) in a counter."""
    workers = Workers()
    for name in WORKER_CALLS:
        monkeypatch.setattr(_atomic, name, workers.wrap(getattr(_atomic, name)))
    return workers


@dataclass(frozen=True)
class Observation:
    """What the awaiting code saw when the call returned or raised."""

    state: str
    temps: tuple[str, ...]
    running: int
    raised: str | None


class Recorder:
    """Runs the write and observes the files the instant it returns or raises."""

    def __init__(self, scene: Scene, workers: Workers) -> None:
        self.scene = scene
        self.workers = workers
        self.seen: list[Observation] = []

    def observe(self, raised: BaseException | None) -> Observation:
        return Observation(
            state=self.scene.state(),
            temps=tuple(temps(self.scene.root)),
            running=self.workers.running,
            raised=None if raised is None else type(raised).__name__,
        )

    async def run(self) -> None:
        try:
            await self.scene.write()
        except BaseException as exc:
            self.seen.append(self.observe(exc))
            raise
        self.seen.append(self.observe(None))


# -- when to cancel ------------------------------------------------------------------------


class Trigger(Protocol):
    """When a mechanism cancels: ``wait()`` returns at that instant; ``release()`` after."""

    async def wait(self) -> None: ...

    def release(self) -> None: ...


@dataclass
class Delay:
    """Cancel after ``seconds``."""

    seconds: float

    async def wait(self) -> None:
        await asyncio.sleep(self.seconds)

    def release(self) -> None:
        """Nothing is held back."""


class Gate:
    """Holds the first worker thread that reaches ``block()`` until the cancel was sent."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.entered = asyncio.Event()
        self.released = threading.Event()
        self.armed = True
        self.lock = threading.Lock()

    def block(self) -> None:
        with self.lock:
            if not self.armed:
                return
            self.armed = False
        self.loop.call_soon_threadsafe(self.entered.set)
        # bounded, so a broken test fails instead of hanging
        self.released.wait(timeout=30)

    async def wait(self) -> None:
        await self.entered.wait()

    def release(self) -> None:
        self.released.set()


async def release_once_cancelling(task: asyncio.Task[Any], trigger: Trigger) -> None:
    """Release the trigger once ``task`` has a cancellation pending (or is done)."""
    while not task.done() and task.cancelling() == 0:  # noqa: ASYNC110  (no event to wait on)
        await asyncio.sleep(0)
    trigger.release()


# -- the ways to cancel --------------------------------------------------------------------

#: The write to cancel (a coroutine function, so a mechanism can make it a task).
Work = Callable[[], Coroutine[Any, Any, None]]
Mechanism = Callable[[Work, Trigger], Awaitable[None]]


async def by_task_cancel(work: Work, trigger: Trigger) -> None:
    """task.cancel() on the task running the write."""
    task = asyncio.create_task(work())
    waiter = asyncio.create_task(trigger.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if not task.done():
        task.cancel()
    trigger.release()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def by_asyncio_timeout(work: Work, trigger: Trigger) -> None:
    """asyncio.timeout() around the write, expiring at the trigger."""
    host = asyncio.current_task()
    assert host is not None
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(None) as timeout:

            async def expire() -> None:
                await trigger.wait()
                timeout.reschedule(loop.time())
                await release_once_cancelling(host, trigger)

            watcher = asyncio.create_task(expire())
            try:
                await work()
            finally:
                watcher.cancel()
                trigger.release()
    except TimeoutError:
        pass


async def by_wait_for(work: Work, trigger: Trigger) -> None:
    """asyncio.wait_for() with a timeout (random delays only)."""
    assert isinstance(trigger, Delay)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(work(), trigger.seconds)


async def by_task_group(work: Work, trigger: Trigger) -> None:
    """An asyncio.TaskGroup whose other task fails at the trigger."""

    async def sibling() -> None:
        await trigger.wait()
        raise Boom

    releaser: asyncio.Task[None] | None = None
    try:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(work())
            releaser = asyncio.create_task(release_once_cancelling(task, trigger))
            group.create_task(sibling())
    except* Boom:
        pass
    finally:
        trigger.release()
        if releaser is not None:
            releaser.cancel()


async def by_anyio_scope(work: Work, trigger: Trigger) -> None:
    """An anyio cancel scope cancelled from another task at the trigger."""
    async with anyio.create_task_group() as group:

        async def cancel() -> None:
            await trigger.wait()
            group.cancel_scope.cancel()
            trigger.release()

        group.start_soon(cancel)
        try:
            await work()
        finally:
            group.cancel_scope.cancel()
            trigger.release()


async def by_anyio_move_on_after(work: Work, trigger: Trigger) -> None:
    """anyio.move_on_after() around the write (random delays only)."""
    assert isinstance(trigger, Delay)
    with anyio.move_on_after(trigger.seconds):
        await work()


MECHANISMS: dict[str, Mechanism] = {
    "task.cancel": by_task_cancel,
    "asyncio.timeout": by_asyncio_timeout,
    "asyncio.wait_for": by_wait_for,
    "asyncio.TaskGroup": by_task_group,
    "anyio.CancelScope": by_anyio_scope,
    "anyio.move_on_after": by_anyio_move_on_after,
}
#: The mechanisms that can cancel at an instant chosen by a gate, not only by a delay.
GATED = ("task.cancel", "asyncio.timeout", "asyncio.TaskGroup", "anyio.CancelScope")
#: The mechanisms whose cancellation pierces anyio shields (plain asyncio task.cancel()).
NATIVE = ("task.cancel", "asyncio.timeout", "asyncio.wait_for", "asyncio.TaskGroup")


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def slow_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slow down fsyncs and temp writes by up to 2 ms each, so cancels land inside them."""
    pause = random.Random(SEED)
    real_fsync, real_write_all = os.fsync, _durable.write_all
    lock = threading.Lock()

    def nap(longest: float) -> None:
        with lock:
            seconds = pause.uniform(0, longest)
        time.sleep(seconds)

    def fsync(fd: int) -> None:
        nap(0.002)
        real_fsync(fd)

    def write_all(fd: int, chunks: Any) -> None:
        nap(0.001)
        real_write_all(fd, chunks)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(_durable, "write_all", write_all)


def make_scene(name: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> Scene:
    if name == SpillingFileScene.name:
        monkeypatch.setattr(_atomic, "SPILL_BYTES", 64)
    return SCENES[name](root)


def check(observation: Observation, scene: Scene, *, exists: bool, tag: str) -> None:
    """The invariants that hold whenever the awaiting code regains control."""
    before = "old" if exists else "absent"
    assert observation.state in (before, "new"), f"{tag}: the target is {observation.state}"
    assert observation.temps == (), f"{tag}: temps left: {observation.temps}"
    assert observation.running == 0, f"{tag}: returned while a worker thread still ran"
    if observation.raised is None:
        assert observation.state == "new", f"{tag}: returned normally but wrote nothing"
    assert names(scene.root) in ([], [scene.target.name]), f"{tag}: {names(scene.root)}"


# -- random instants -----------------------------------------------------------------------


@pytest.mark.parametrize("scene_name", list(SCENES))
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
async def test_cancel_at_random_instants(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    slow_worker: None,
    mechanism: str,
    scene_name: str,
) -> None:
    """Cancelled anywhere (block, spill, commit), a write leaves old or new and no temp."""
    scene = make_scene(scene_name, tmp_path, monkeypatch)
    workers = count_workers(monkeypatch)
    rng = random.Random(f"{SEED}-{mechanism}-{scene_name}")
    # How long an uncancelled write takes here: the delays are spread over that.
    scene.reset(exists=True)
    started = time.perf_counter()
    await scene.write()
    horizon = (time.perf_counter() - started) * 1.2
    outcomes: dict[str, int] = {}
    for trial in range(TRIALS):
        tag = f"{mechanism} / {scene_name}, trial {trial} (RETRACT_SEED={SEED})"
        exists = rng.random() < 0.8
        scene.reset(exists)
        delay = 0.0 if trial == 0 else rng.uniform(0, horizon)
        recorder = Recorder(scene, workers)
        await MECHANISMS[mechanism](recorder.run, Delay(delay))
        if not recorder.seen:
            # wait_for(..., 0) cancels the write before its first step: it never ran
            seen = Observation(scene.state(), tuple(temps(tmp_path)), workers.running, "never ran")
        else:
            assert len(recorder.seen) == 1, f"{tag}: the write ran {len(recorder.seen)} times"
            [seen] = recorder.seen
        check(seen, scene, exists=exists, tag=tag)
        # Nothing changes after the call came back: it had settled the outcome.
        assert scene.state() == seen.state, f"{tag}: the target changed afterwards"
        assert temps(tmp_path) == [], f"{tag}: a temp appeared afterwards"
        key = f"{seen.state}{'' if seen.raised is None else ' after ' + seen.raised}"
        outcomes[key] = outcomes.get(key, 0) + 1
    print(f"\n{mechanism} / {scene_name}: {outcomes} (RETRACT_SEED={SEED})")


# -- gated instants ------------------------------------------------------------------------


def hold_in_fsync(monkeypatch: pytest.MonkeyPatch, gate: Gate) -> None:
    """Hold the first fsync (in a commit) until the cancellation was delivered."""
    real = os.fsync

    def fsync(fd: int) -> None:
        gate.block()
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def hold_in_spill(monkeypatch: pytest.MonkeyPatch, gate: Gate) -> None:
    """Hold the first write to the temp file (a spill) until the cancellation arrived."""
    real = _durable.write_all

    def write_all(fd: int, chunks: Any) -> None:
        gate.block()
        real(fd, chunks)

    monkeypatch.setattr(_durable, "write_all", write_all)


def hold_after_prepare(monkeypatch: pytest.MonkeyPatch, gate: Gate) -> None:
    """Hold the folder's creation (its temp folder exists) until the cancellation arrived."""
    real = _durable.prepare_folder

    def prepare_folder(*args: Any, **kwargs: Any) -> tuple[str, str, int]:
        prepared = real(*args, **kwargs)
        gate.block()
        return prepared

    monkeypatch.setattr(_atomic, "prepare_folder", prepare_folder)


#: phase -> (scene, how to hold the worker there, the state the cancel must leave)
PHASES: dict[str, tuple[str, Callable[[pytest.MonkeyPatch, Gate], None], str]] = {
    "file commit": ("file", hold_in_fsync, "new"),
    "file spill": ("spilling-file", hold_in_spill, "old"),
    "spilled file commit": ("spilling-file", hold_in_fsync, "new"),
    "folder creation": ("folder", hold_after_prepare, "old"),
    "folder swap": ("folder", hold_in_fsync, "new"),
}


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("mechanism", GATED)
async def test_cancel_while_the_worker_is_inside_a_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mechanism: str, phase: str
) -> None:
    """A cancel during a worker call waits for it: a commit lands, a spill is discarded."""
    scene_name, hold, expected = PHASES[phase]
    scene = make_scene(scene_name, tmp_path, monkeypatch)
    gate = Gate()
    hold(monkeypatch, gate)
    workers = count_workers(monkeypatch)
    scene.reset(exists=True)
    recorder = Recorder(scene, workers)
    await MECHANISMS[mechanism](recorder.run, gate)
    tag = f"{mechanism} during the {phase}"
    assert not gate.armed, f"{tag}: the worker never reached the {phase}"
    [seen] = recorder.seen
    check(seen, scene, exists=True, tag=tag)
    assert seen.state == expected, f"{tag}: the target is {seen.state}"
    if mechanism in NATIVE:
        # the cancellation is never swallowed, even though the commit went through
        assert seen.raised == "CancelledError", f"{tag}: {seen.raised}"
    assert scene.state() == expected
    assert temps(tmp_path) == []


# -- a cancellation already pending --------------------------------------------------------

#: A body given ``cancel()``, which makes a cancellation pending without delivering it.
Body = Callable[[Callable[[], object]], Awaitable[None]]


async def run_with_pending_cancel(how: str, body: Body) -> bool:
    """Run ``body`` in a task of its own; return whether the cancellation was raised.

    ``cancel`` is ``task.cancel()`` on that task (asyncio) or ``cancel()`` of an anyio
    cancel scope around the body (anyio): either is delivered at the next checkpoint.
    """

    async def run() -> bool:
        if how == "asyncio":
            task = asyncio.current_task()
            assert task is not None
            await body(task.cancel)
            return False
        with anyio.CancelScope() as scope:
            await body(scope.cancel)
        return scope.cancelled_caught

    task = asyncio.create_task(run())
    await asyncio.wait({task})
    return task.cancelled() or task.result()


@pytest.mark.parametrize("how", ["asyncio", "anyio"])
async def test_pending_cancel_discards_a_write(tmp_path: Path, how: str) -> None:
    """A cancellation pending before the commit starts discards the write."""
    target = tmp_path / "t.bin"
    target.write_bytes(OLD_BYTES)

    async def body(cancel: Callable[[], object]) -> None:
        cancel()
        await atomic_write_bytes(target, NEW_BYTES, overwrite=True)

    assert await run_with_pending_cancel(how, body)
    assert target.read_bytes() == OLD_BYTES
    assert names(tmp_path) == ["t.bin"]


@pytest.mark.parametrize("how", ["asyncio", "anyio"])
async def test_pending_cancel_discards_a_spilled_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A cancellation pending when the block ends discards the write and its spilled temp."""
    monkeypatch.setattr(_atomic, "SPILL_BYTES", 64)
    target = tmp_path / "t.bin"
    target.write_bytes(OLD_BYTES)

    async def body(cancel: Callable[[], object]) -> None:
        async with atomic_write(target, "wb", overwrite=True) as f:
            await f.write(NEW_BYTES)
            assert temps(tmp_path) != []
            cancel()

    assert await run_with_pending_cancel(how, body)
    assert target.read_bytes() == OLD_BYTES
    assert names(tmp_path) == ["t.bin"]


@pytest.mark.parametrize("how", ["asyncio", "anyio"])
async def test_pending_cancel_makes_no_temp_folder(tmp_path: Path, how: str) -> None:
    """A cancellation pending at entry stops atomic_folder before the block runs."""
    ran: list[bool] = []

    async def body(cancel: Callable[[], object]) -> None:
        cancel()
        async with atomic_folder(tmp_path / "out"):
            ran.append(True)

    assert await run_with_pending_cancel(how, body)
    assert ran == []
    assert names(tmp_path) == []


@pytest.mark.parametrize("how", ["asyncio", "anyio"])
async def test_pending_cancel_discards_a_filled_folder(tmp_path: Path, how: str) -> None:
    """A cancellation pending when the folder block ends keeps the old tree, drops the temp."""
    target = tmp_path / "out"
    write_tree(target, OLD_TREE)

    async def body(cancel: Callable[[], object]) -> None:
        async with atomic_folder(target, overwrite=True) as tmp:
            (tmp / "new").write_bytes(b"new")
            cancel()

    assert await run_with_pending_cancel(how, body)
    assert tree(target) == OLD_TREE
    assert names(tmp_path) == ["out"]
