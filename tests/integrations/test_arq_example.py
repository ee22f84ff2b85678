"""examples/arq_worker.py runs end to end, as a user would run it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "arq_worker.py"


def test_the_arq_example_rolls_back_the_first_try_and_keeps_the_second() -> None:
    """Try 1 asks for a retry and is rolled back; try 2 completes and its file stays."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    out = result.stdout
    if shutil.which("redis-server") is None:  # the example looks it up the same way
        assert "redis-server is not installed" in out
        return
    assert "try 1: wrote exports/march.try1.csv" in out
    assert "try 2: wrote exports/march.try2.csv" in out
    assert "job result: march.try2.csv" in out
    assert "session of try 1: rolled_back (Retry: <Retry defer 0.10s>)" in out
    assert "session of try 2: completed" in out
    assert "files in exports/: ['march.try2.csv']" in out
    assert out.rstrip().endswith("redis-server stopped")
