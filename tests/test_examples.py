"""The examples run end to end, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    return result.stdout


def test_quickstart_moves_and_moves_back() -> None:
    """The async quickstart moves the file, then the undo moves it back."""
    out = run("quickstart.py")
    assert "after the run:   ['b.txt']" in out
    assert "after the undo:  ['a.txt']" in out
    assert "rolled_back, 1 undone" in out


def test_undo_on_error_rolls_back_all_three_steps() -> None:
    """The third step fails and the first two (and the failed third) are rolled back."""
    out = run("undo_on_error.py")
    assert "3. failed: PaymentDeclinedError('card declined')" in out
    assert "rolled_back (PaymentDeclinedError: card declined)" in out
    assert out.count(" undone") == 3
    assert "accounts {} | files [] | outbox []" in out


def test_atomic_config_keeps_old_content_on_failure() -> None:
    """The atomic rewrite refuses a clobber, keeps the mode, and survives a failed block."""
    out = run("atomic_config.py")
    assert "1. second write refused: FileAlreadyExistsError" in out
    assert "2. rewritten, mode kept: 0o640" in out
    assert "config still: {'mode': 'release', 'workers': 4}" in out
    assert "files in the directory: ['config.json']" in out


def test_fs_session_undo_restores_the_tree() -> None:
    """Every session.fs change is undone and the tree matches, permission bits included."""
    out = run("fs_session.py")
    assert "undo: rolled_back, 6 operations undone" in out
    assert "restored byte for byte, modes included: True" in out
    assert "deploy.sh mode: 0o755" in out


def test_tracked_config_actors_subscriber_and_revert() -> None:
    """Both actors' changes reach the subscriber in order, and the revert restores all."""
    out = run("tracked_config.py")
    assert "#1 deployer replace mode: 'release'" in out
    assert "tuner    add     limits/memory: '4Gi'" in out
    assert "after revert:    {'mode': 'debug', 'replicas': 1, 'limits': {'cpu': '1'}}" in out
    assert "same as before:  True" in out


#: Examples whose end-to-end test lives beside their integration's tests.
ELSEWHERE = {
    "aiohttp_app.py": "tests/integrations/test_aiohttp_example.py",
    "arq_worker.py": "tests/integrations/test_arq_example.py",
    "fastapi_app.py": "tests/integrations/test_fastapi_example.py",
}


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_is_covered(example: str) -> None:
    """Each example file has a test (here, or named in ELSEWHERE), so none can rot."""
    if example in ELSEWHERE:
        test = Path(__file__).parent.parent / ELSEWHERE[example]
        assert example in test.read_text(), f"{test} does not run {example}"
    else:
        assert f'"{example}"' in Path(__file__).read_text()


def test_export_changes_reach_the_file_and_the_endpoint() -> None:
    """Both exporters get every change; the HTTP one retries the 503 it is given."""
    out = run("export_changes.py")
    assert "file: 4 changes" in out
    assert "http: 4 changes" in out
    assert "1 retried try" in out
    assert "#3 operator: add ['limits'] -> {'cpu': 2}" in out
    assert "the endpoint got seq [1, 2, 3, 4]" in out


def test_starlette_app_rolls_back_a_returned_500() -> None:
    """The middleware sees the 500 the endpoint returned and removes the upload."""
    out = run("starlette_app.py")
    assert "rejected upload: 500, files left: []" in out
    assert "good upload: 201, files: ['notes.txt']" in out
    assert "rolled_back (ResponseFailed: the response status was 500)" in out


def test_taskiq_tasks_roll_back_the_failed_export() -> None:
    """The task that fails leaves no file; the other keeps its export."""
    out = run("taskiq_tasks.py")
    assert "task broken: error UploadError" in out
    assert "files: []" in out
    assert "task sales: ok sales.csv; files: ['sales.csv']" in out
    assert "rolled_back (UploadError: the upload of broken.csv was refused)" in out
