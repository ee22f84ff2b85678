"""``retract prune``, ``retract sweep`` and ``retract undo --drift``."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from retract import OperationState, SessionStatus, open_journal
from retract.fs._names import temp_name

from .conftest import Cli, FakeTerminal, add_session, states


def _ids(db: Path) -> list[str]:
    async def read() -> list[str]:
        async with open_journal(db) as journal:
            return [s.session_id for s in await journal.list_sessions()]

    return asyncio.run(read())


def _fs_session(db: Path, target: Path) -> str:
    async def write() -> str:
        async with open_journal(db) as journal:
            async with journal.start_session(script="fs") as session:
                await session.fs.write_text(target, "new")
            return session.session_id

    return asyncio.run(write())


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child exits at once)
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_prune_dry_run_lists_and_keeps(cli: Cli, db: Path) -> None:
    """``--dry-run`` names the sessions it would prune and deletes nothing."""
    session_id = add_session(db, [("t.ok", {})])
    result = cli("--db", str(db), "prune", "--older-than", "0", "--dry-run")
    assert result.code == 0
    assert session_id in result.out
    assert "would prune 1 session" in result.out
    assert _ids(db) == [session_id]


def test_prune_with_yes_deletes_ended_sessions(cli: Cli, db: Path) -> None:
    """``--yes`` prunes every ended session older than the age, without asking."""
    add_session(db, [("t.ok", {})])
    add_session(db, [("t.ok", {})], fail=True)
    result = cli("--db", str(db), "prune", "--older-than", "0s", "--yes")
    assert result.code == 0
    assert "pruned 2 sessions" in result.out
    assert _ids(db) == []


def test_prune_keeps_recent_sessions(cli: Cli, db: Path) -> None:
    """Sessions that ended less than the age ago stay."""
    session_id = add_session(db, [("t.ok", {})])
    result = cli("--db", str(db), "prune", "--older-than", "30d", "--yes")
    assert result.code == 0
    assert "pruned 0 sessions" in result.out
    assert _ids(db) == [session_id]


def test_prune_status_filter(cli: Cli, db: Path) -> None:
    """``--status`` limits the prune to those statuses."""
    kept = add_session(db, [("t.ok", {})])
    failed = add_session(db, [("t.ok", {})], fail=True)
    result = cli("--db", str(db), "prune", "--older-than", "0", "--status", "failed", "--yes")
    assert result.code == 0
    assert failed in result.out
    assert _ids(db) == [kept]


def test_prune_refuses_without_a_terminal(
    cli: Cli, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``--yes`` and without a terminal to ask, nothing is pruned (exit 2)."""
    session_id = add_session(db, [("t.ok", {})])
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115
    try:
        result = cli("--db", str(db), "prune", "--older-than", "0")
    finally:
        sys.stdin.close()
    assert result.code == 2
    assert "--yes" in result.err
    assert _ids(db) == [session_id]


@pytest.mark.parametrize("case", [("y\n", 0, 0), ("n\n", 1, 1)])
def test_prune_asks_on_a_terminal(
    cli: Cli, db: Path, monkeypatch: pytest.MonkeyPatch, case: tuple[str, int, int]
) -> None:
    """On a terminal the prune asks, and only "y" goes ahead."""
    answer, code, left = case
    add_session(db, [("t.ok", {})])
    monkeypatch.setattr(sys, "stdin", FakeTerminal(answer))
    result = cli("--db", str(db), "prune", "--older-than", "0")
    assert result.code == code
    assert "can no longer be undone" in result.err
    assert len(_ids(db)) == left


def test_prune_json(cli: Cli, db: Path) -> None:
    """``--json`` prints the pruned sessions as JSON."""
    session_id = add_session(db, [("t.ok", {})])
    result = cli("--db", str(db), "prune", "--older-than", "0", "--yes", "--json")
    assert [s["session_id"] for s in result.json()["pruned"]] == [session_id]


@pytest.mark.parametrize("age", ["3x", "-1d", "d", ""])
def test_prune_rejects_a_bad_age(cli: Cli, db: Path, age: str) -> None:
    """An age that is not a number with s, m, h, d or w is a usage error."""
    add_session(db, [("t.ok", {})])
    result = cli("--db", str(db), "prune", f"--older-than={age}")
    assert result.code == 2
    assert "expected an age like 30d" in result.err


def test_prune_removes_before_images(cli: Cli, db: Path, tmp_path: Path) -> None:
    """Pruning a session deletes the before-images session.fs kept for it."""
    target = tmp_path / "file.txt"
    target.write_text("old")
    session_id = _fs_session(db, target)
    images = Path(f"{db}.images") / session_id
    assert any(images.iterdir())
    assert cli("--db", str(db), "prune", "--older-than", "0", "--yes").code == 0
    assert not images.exists()


def test_undo_drift_refuse_then_skip(cli: Cli, db: Path, tmp_path: Path) -> None:
    """A file changed since its write is refused by default and skipped with --drift skip."""
    target = tmp_path / "file.txt"
    target.write_text("old")
    session_id = _fs_session(db, target)
    target.write_text("edited by hand")
    refused = cli("--db", str(db), "undo", session_id, "--yes")
    assert refused.code == 3
    assert "DriftError" in refused.out
    assert "--drift force" in refused.out
    assert target.read_text() == "edited by hand"
    skipped = cli("--db", str(db), "undo", session_id, "--yes", "--drift", "skip")
    assert skipped.code == 0
    assert states(db, session_id) == (SessionStatus.ROLLED_BACK, [OperationState.SKIPPED])
    assert target.read_text() == "edited by hand"


def test_undo_drift_force_restores(cli: Cli, db: Path, tmp_path: Path) -> None:
    """``--drift force`` puts the old content back over a changed file."""
    target = tmp_path / "file.txt"
    target.write_text("old")
    session_id = _fs_session(db, target)
    target.write_text("edited by hand")
    assert cli("--db", str(db), "undo", session_id, "--yes", "--drift", "force").code == 0
    assert target.read_text() == "old"


def test_sweep_removes_abandoned_temps_only(cli: Cli, tmp_path: Path) -> None:
    """``retract sweep`` removes a dead writer's temp and leaves other files alone."""
    abandoned = tmp_path / temp_name("data.bin").replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    abandoned.write_bytes(b"partial")
    live = tmp_path / temp_name("other.bin")
    live.write_bytes(b"being written")
    lookalike = tmp_path / ".data.bin.retract-tmp"
    lookalike.write_bytes(b"not ours")
    result = cli("sweep", str(tmp_path))
    assert result.code == 0
    assert f"removed  {abandoned}" in result.out
    assert "1 abandoned temp removed, 0 restored, 1 kept" in result.out
    assert f"kept     {live} (its process (pid {os.getpid()}) is still running)" in result.out
    assert not abandoned.exists()
    assert live.exists()
    assert lookalike.exists()


def test_sweep_json_and_recursive(cli: Cli, tmp_path: Path) -> None:
    """``--recursive`` descends into subdirectories; ``--json`` reports the paths."""
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    abandoned = nested / temp_name("x").replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    abandoned.mkdir()
    assert cli("sweep", str(tmp_path), "--json").json()["removed"] == []
    result = cli("sweep", str(tmp_path), "--recursive", "--json")
    assert result.json()["removed"] == [str(abandoned)]
    assert not abandoned.exists()


def test_sweep_of_a_missing_directory_fails(cli: Cli, tmp_path: Path) -> None:
    """Sweeping something that is not a directory is a clear error (exit 1)."""
    result = cli("sweep", str(tmp_path / "missing"))
    assert result.code == 1
    assert "not a directory" in result.err


def test_prune_finds_a_custom_image_area(cli: Cli, db: Path, tmp_path: Path) -> None:
    """``--images-dir`` points prune at an image area given as ``images_dir=``."""
    target = tmp_path / "file.txt"
    target.write_text("old")
    area = tmp_path / "elsewhere"

    async def write() -> str:
        async with open_journal(db, images_dir=area) as journal:
            async with journal.start_session() as session:
                await session.fs.write_text(target, "new")
            return session.session_id

    session_id = asyncio.run(write())
    assert (area / session_id).is_dir()
    args = ("--db", str(db), "prune", "--older-than", "0", "--yes")
    assert cli(*args, "--images-dir", str(area)).code == 0
    assert not (area / session_id).exists()
