"""examples/fastapi_app.py runs end to end, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "fastapi_app.py"


def test_fastapi_example_rolls_back_the_failed_order_only() -> None:
    """The failed request leaves no file and is rolled back; the good one keeps its file."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "failed request: 500, files left: []",
        "good request: 200, files: ['order-2.json']",
        "session /orders/1: rolled_back (OutOfStockError: 1 x chair)",
        "session /orders/2: completed",
    ]
