"""``retract demo``: end to end, in-process and as a real process, and its undo handlers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retract.cli import _demo_files as files

from .conftest import Cli

_KEPT = re.compile(r"kept the demo directory: (\S+)")


def _kept(out: str) -> Path:
    match = _KEPT.search(out)
    assert match is not None, out
    return Path(match.group(1))


def test_demo_restores_every_file(cli: Cli) -> None:
    """The demo exits 0, says "restored: yes", and leaves no temporary directory."""
    result = cli("demo")
    assert result.code == 0, result.err
    assert "restored: yes" in result.out
    assert "kept the demo directory" not in result.out
    root = Path(re.search(r"files:\s+(\S+)", result.out).group(1)).parent  # type: ignore[union-attr]
    assert not root.exists()


def test_demo_output_walks_through_each_stage(cli: Cli) -> None:
    """The output shows the steps, the journal as ``show`` prints it, and the undo report."""
    out = cli("demo").out
    for text in ("fs.write", "fs.mkdir", "fs.move", "fs.delete"):
        assert text in out
    assert "operations (5, in order):" in out
    assert "rolled back" in out
    assert "5 undone, 0 skipped, 0 failed; 0 left to undo" in out
    assert "archive/notes.txt" in out
    assert "new" in out
    assert "gone" in out


def test_demo_keep_leaves_identical_files(cli: Cli) -> None:
    """With ``--keep`` the directory stays, and its files are byte for byte the seed."""
    result = cli("demo", "--keep")
    assert result.code == 0
    root = _kept(result.out)
    try:
        assert files.snapshot(root / files.FILES_DIR) == {
            "config.json": files.SEED["config.json"],
            "data": None,
            "data/report.csv": files.SEED["data/report.csv"],
            "notes.txt": files.SEED["notes.txt"],
            "old.log": files.SEED["old.log"],
        }
        assert (root / "journal.db").exists()
    finally:
        shutil.rmtree(root)


def test_demo_with_memory_journal(cli: Cli) -> None:
    """``--db :memory:`` works for the demo."""
    result = cli("demo", "--db", ":memory:")
    assert result.code == 0
    assert "journal: :memory:" in result.out


def test_demo_with_db_keeps_the_session(cli: Cli, db: Path) -> None:
    """``--db PATH`` journals the demo session there; it ends rolled back."""
    assert cli("demo", "--db", str(db)).code == 0
    (session,) = cli("--db", str(db), "sessions", "--json").json()["sessions"]
    assert session["status"] == "rolled_back"
    assert session["context"]["command"] == "retract demo"


def test_demo_as_a_real_process(tmp_path: Path) -> None:
    """``python -m retract demo`` runs in a fresh process and restores the files."""
    done = subprocess.run(
        [sys.executable, "-m", "retract", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "restored: yes" in done.stdout
    assert done.stderr == ""


def test_console_script_runs_the_demo(tmp_path: Path) -> None:
    """The installed ``retract`` console script runs the demo too."""
    script = Path(sys.executable).parent / "retract"
    if not script.exists():
        pytest.skip("the retract console script is not installed in this environment")
    done = subprocess.run(
        [str(script), "demo"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "restored: yes" in done.stdout


def test_demo_leaves_no_before_images_or_temps(cli: Cli) -> None:
    """After the undo, the image area holds no files and the work tree no temps."""
    result = cli("demo", "--keep")
    root = _kept(result.out)
    try:
        images = root / "journal.db.images"
        leftovers = [p for p in images.rglob("*") if not p.is_dir()] if images.exists() else []
        assert leftovers == []
        assert list((root / files.FILES_DIR).rglob(".*")) == []
    finally:
        shutil.rmtree(root)


def test_tree_marks_changes() -> None:
    """The tree marks new, changed and gone entries against the earlier snapshot."""
    before = {"a": b"1", "b": b"2", "d": None}
    now = {"a": b"1", "b": b"22", "c": b"3"}
    lines = {line.split()[0]: line for line in files.tree(now, before)}
    assert lines["a"].split()[-1] != "changed"
    assert lines["b"].endswith("changed")
    assert lines["c"].endswith("new")
    assert lines["d/"].endswith("gone")
