"""examples/aiohttp_app.py runs end to end, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "aiohttp_app.py"


def test_aiohttp_example_rolls_back_the_failed_request(tmp_path: Path) -> None:
    """The failed request leaves no file and is rolled back; the good one keeps its file."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    out = result.stdout
    assert "failed request: 500, files left: []" in out
    assert "good request: 200, files: ['hello.txt']" in out
    assert "session /notes/offer: rolled_back (ResponseFailed: the response status was 500)" in out
    assert "session /notes/hello: completed" in out
