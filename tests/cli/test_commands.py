"""``sessions``, ``show`` and ``recover``: their text and JSON output."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from retract import OperationState, Owner, SessionStatus, open_journal
from retract.journal._owner import current_owner

from .conftest import Cli, add_session, states

#: Above the largest pid_max Linux allows (2**22), so no process ever has it.
DEAD_PID = 4_194_305


def test_sessions_lists_newest_first(cli: Cli, db: Path) -> None:
    """The table has a header and one row per session, newest first, with its context."""
    first = add_session(db, [("t.ok", {})], script="one.py")
    second = add_session(db, [("t.ok", {})], fail=True, script="two.py")
    result = cli("--db", str(db), "sessions")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "CREATED", "ERROR", "CONTEXT"]
    assert lines[1].startswith(second)
    assert "failed" in lines[1]
    assert "RuntimeError: the script failed" in lines[1]
    assert "script=two.py" in lines[1]
    assert lines[2].startswith(first)
    assert "completed" in lines[2]


def test_sessions_json(cli: Cli, db: Path) -> None:
    """``--json`` prints every field, ISO 8601 UTC times and status strings."""
    session_id = add_session(db, [("t.ok", {})], script="x.py", args=["-v"])
    result = cli("--db", str(db), "sessions", "--json")
    assert result.code == 0
    assert result.err == ""
    (session,) = result.json()["sessions"]
    assert session["session_id"] == session_id
    assert session["status"] == "completed"
    assert session["context"] == {"script": "x.py", "args": ["-v"]}
    assert session["error"] is None
    assert session["undo_count"] == 0
    assert session["created_at"].endswith("Z")
    created = datetime.fromisoformat(session["created_at"])
    assert created.utcoffset() is not None
    assert created.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert session["owner"]["pid"] == os.getpid()


def test_sessions_limit_and_status(cli: Cli, db: Path) -> None:
    """``--limit`` caps the list and ``--status`` filters it."""
    ids = [add_session(db, [("t.ok", {})], fail=n == 1) for n in range(3)]
    limited = cli("--db", str(db), "sessions", "--limit", "2", "--json").json()["sessions"]
    assert [s["session_id"] for s in limited] == [ids[2], ids[1]]
    failed = cli("--db", str(db), "sessions", "--status", "failed", "--json").json()["sessions"]
    assert [s["session_id"] for s in failed] == [ids[1]]
    both = cli(
        "--db", str(db), "sessions", "--status", "failed", "--status", "completed", "--json"
    ).json()["sessions"]
    assert len(both) == 3
    assert len(cli("--db", str(db), "sessions", "--limit", "0", "--json").json()["sessions"]) == 3


def test_sessions_alias_and_empty_journal(cli: Cli, db: Path) -> None:
    """The unmake alias ``list-sessions`` works; an empty journal says so."""
    asyncio.run(_create_empty(db))
    result = cli("--db", str(db), "list-sessions")
    assert result.code == 0
    assert result.out.strip() == "no sessions"


async def _create_empty(db: Path) -> None:
    async with open_journal(db):
        pass


async def _many_sessions(db: Path, count: int) -> list[str]:
    async with open_journal(db) as journal:
        ids = []
        for _ in range(count):
            async with journal.start_session() as session:
                ids.append(session.session_id)
        return ids


def test_show_prints_session_and_operations_in_order(cli: Cli, db: Path) -> None:
    """``show`` prints the fields, then each operation with sequence, state, type, payload."""
    session_id = add_session(
        db, [("fs.move", {"src": "a.txt", "dst": "b.txt"}), ("t.ok", {"n": 2})], script="s.py"
    )
    result = cli("--db", str(db), "show", session_id)
    assert result.code == 0
    out = result.out
    assert f"session    {session_id}" in out
    assert "status     completed" in out
    assert "context    script=s.py" in out
    assert "operations (2, in order):" in out
    lines = [line.split(maxsplit=3) for line in out.splitlines() if line.startswith("    ")]
    assert lines == [
        ["1", "done", "fs.move", '{"src":"a.txt","dst":"b.txt"}'],
        ["2", "done", "t.ok", '{"n":2}'],
    ]


def test_show_json(cli: Cli, db: Path) -> None:
    """``show --json`` gives the session and its operations with full payloads."""
    session_id = add_session(db, [("t.ok", {"n": 1}), ("t.fail", {"n": 2})], steps=True)
    data = cli("--db", str(db), "show", session_id, "--json").json()
    assert data["session"]["session_id"] == session_id
    ops = data["operations"]
    assert [op["sequence"] for op in ops] == [1, 2]
    assert [op["op_type"] for op in ops] == ["t.ok", "t.fail"]
    assert [op["state"] for op in ops] == ["done", "done"]
    assert ops[1]["payload"] == {"n": 2}
    assert set(ops[0]) == {
        "op_id", "sequence", "op_type", "state", "payload", "error", "created_at", "updated_at"
    }  # fmt: skip
    assert ops[0]["created_at"].endswith("Z")


def test_show_accepts_a_unique_prefix(cli: Cli, db: Path) -> None:
    """A unique prefix of the id is enough; the alias ``show-session`` works too."""
    session_id = add_session(db, [("t.ok", {})])
    for command in ("show", "show-session"):
        result = cli("--db", str(db), command, session_id[:6], "--json")
        assert result.code == 0
        assert result.json()["session"]["session_id"] == session_id


def test_unknown_id_lists_recent_sessions(cli: Cli, db: Path) -> None:
    """An unknown id: exit 1, and the message lists recent ids."""
    ids = [add_session(db) for _ in range(2)]
    result = cli("--db", str(db), "show", "zzzz")
    assert result.code == 1
    assert "no session with id 'zzzz'" in result.err
    assert all(session_id in result.err for session_id in ids)
    assert result.out == ""


def test_ambiguous_prefix_lists_matches(cli: Cli, db: Path) -> None:
    """A prefix shared by several sessions: exit 1, and the message lists them."""
    ids = asyncio.run(_many_sessions(db, 40))
    by_first: dict[str, list[str]] = {}
    for session_id in ids:
        by_first.setdefault(session_id[0], []).append(session_id)
    prefix, shared = max(by_first.items(), key=lambda item: len(item[1]))
    assert len(shared) >= 2  # 40 ids over 16 hex digits always share one
    result = cli("--db", str(db), "show", prefix)
    assert result.code == 1
    assert "ambiguous" in result.err
    assert shared[0] in result.err or shared[-1] in result.err


def test_recover_marks_a_dead_owners_session_interrupted(cli: Cli, db: Path) -> None:
    """A RUNNING session whose owner pid does not exist becomes INTERRUPTED."""
    session_id = asyncio.run(_orphan(db))
    result = cli("--db", str(db), "recover")
    assert result.code == 0
    assert "recovered 1 session" in result.out
    assert session_id in result.out
    assert states(db, session_id) == (SessionStatus.INTERRUPTED, [])
    again = cli("--db", str(db), "recover")
    assert "nothing to recover" in again.out


def test_recover_json(cli: Cli, db: Path) -> None:
    """``recover --json`` lists the recovered sessions, or an empty list."""
    session_id = asyncio.run(_orphan(db))
    data = cli("--db", str(db), "recover", "--json").json()
    assert [s["session_id"] for s in data["recovered"]] == [session_id]
    assert data["recovered"][0]["status"] == "interrupted"
    assert cli("--db", str(db), "recover", "--json").json() == {"recovered": []}


async def _orphan(db: Path) -> str:
    """A RUNNING session owned by a process that is gone."""
    async with open_journal(db) as journal:
        owner = Owner(
            "dead-owner", DEAD_PID, socket.gethostname(), time.time() - 60, current_owner().machine
        )
        session_id = "0f0f0f0f-0000-4000-8000-000000000001"
        await journal.storage.create_session(session_id, json.dumps({}), owner, time.time())
        return session_id


def test_recover_after_sigkill(cli: Cli, db: Path) -> None:
    """A real process killed with SIGKILL mid-session is recovered as INTERRUPTED."""
    code = (
        "import asyncio, sys\n"
        "from retract import open_journal\n"
        "async def main():\n"
        "    async with open_journal(sys.argv[1]) as journal:\n"
        "        async with journal.start_session(script='victim') as session:\n"
        "            async with session.step('t.ok', {}):\n"
        "                print(session.session_id, flush=True)\n"
        "                await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True
    ) as victim:
        assert victim.stdout is not None
        session_id = victim.stdout.readline().strip()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    result = cli("--db", str(db), "recover", "--json")
    assert [s["session_id"] for s in result.json()["recovered"]] == [session_id]
    assert states(db, session_id) == (SessionStatus.INTERRUPTED, [OperationState.IN_DOUBT])
