"""taskiq tasks whose executions are sessions: a failed task leaves nothing behind.

Run: ``uv run python examples/taskiq_tasks.py`` (needs the ``taskiq`` extra). It uses
taskiq's in-memory broker, so no Redis is needed: the tasks run in this process, as a
``taskiq worker`` would run them from a real broker (``ListQueueBroker`` with the same
code). Each task writes an export file through its session; the export whose upload
fails is undone, the other keeps its file.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from taskiq import InMemoryBroker, TaskiqDepends, TaskiqEvents, TaskiqState

from retract import Journal, Session, open_journal
from retract.integrations.taskiq import task_session

FOLDER = Path(tempfile.mkdtemp(prefix="retract-taskiq-"))
broker = InMemoryBroker()
journal_session = task_session(lambda context: context.state.journal)


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def open_the_journal(state: TaskiqState) -> None:
    """The worker opens the journal once; every task's session goes into it."""
    state.journal = await open_journal(FOLDER / "journal.db").open()


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def close_the_journal(state: TaskiqState) -> None:
    """And closes it when the worker stops."""
    await state.journal.aclose()


class UploadError(Exception):
    """The export could not be uploaded: the task fails, and is rolled back."""


@broker.task(task_name="examples.export")
async def export(name: str, session: Session = TaskiqDepends(journal_session)) -> str:  # noqa: B008  (taskiq's injection marker)
    """Write the export file, then upload it (the upload of "broken" fails)."""
    await session.fs.write_text(FOLDER / f"{name}.csv", "id,total\n1,42\n")
    if name == "broken":
        raise UploadError(f"the upload of {name}.csv was refused")
    return f"{name}.csv"


async def main() -> None:
    await broker.startup()
    try:
        for name in ("broken", "sales"):
            handle = await export.kiq(name)
            result = await handle.wait_result(timeout=30)
            outcome = f"error {result.error!r}" if result.is_err else f"ok {result.return_value}"
            print(f"task {name}: {outcome}; files: {files()}")
        journal: Journal = broker.state.journal
        for record in reversed(await journal.list_sessions()):
            error = f" ({record.error})" if record.error else ""
            print(f"session {record.context['task_name']}: {record.status.value}{error}")
    finally:
        await broker.shutdown()


def files() -> list[str]:
    return sorted(path.name for path in FOLDER.glob("*.csv"))


if __name__ == "__main__":
    # taskiq logs every failed task with its traceback; here the failure is the point.
    logging.getLogger("taskiq").setLevel(logging.CRITICAL)
    try:
        asyncio.run(main())
    finally:
        for leftover in sorted(FOLDER.rglob("*"), reverse=True):
            leftover.rmdir() if leftover.is_dir() else leftover.unlink()
        FOLDER.rmdir()
