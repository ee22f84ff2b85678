"""unmake's README quickstart, async: record a move, then undo it.

Run: ``uv run python examples/quickstart.py``. Everything happens in a temporary
directory, which is removed at the end. The unmake-style ``MoveUndo`` keeps its plain
``undo()``; registering it with ``blocking=True`` runs it in a worker thread, so the
event loop never waits on the filesystem.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import anyio

from retract import OperationRegistry, open_journal


class MoveUndo:
    """unmake-style undo object: built from the payload, reverts the move."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.src = payload["src"]
        self.dst = payload["dst"]

    def undo(self) -> None:
        """Move the file back (plain blocking code, run in a worker thread)."""
        Path(self.dst).rename(self.src)


async def text_files() -> list[str]:
    return sorted([path.name async for path in anyio.Path().glob("*.txt")])


async def main() -> None:
    async with open_journal("history.db") as journal:
        # Record a run
        async with journal.start_session(script="dangerous_script.py", args=["--force"]) as session:
            await anyio.Path("a.txt").rename("b.txt")
            await session.record_operation("fs.move", {"src": "a.txt", "dst": "b.txt"})
        print("after the run:  ", await text_files())

        # Register reconstruction logic for undo
        registry = OperationRegistry()
        registry.register("fs.move", MoveUndo, blocking=True)

        # Undo all operations in reverse order
        session_id = (await journal.list_sessions(limit=1))[0].session_id
        report = await journal.undo_session(session_id, registry)
        print("after the undo: ", await text_files())
        print(f"session {session_id}: {report.status.value}, {report.undone} undone")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        Path("a.txt").write_text("hello\n")
        asyncio.run(main())
