"""``retract.fs.sweep``: abandoned temps go, everything else stays.

Temp names are ``.<target>.retract-<host>-<pid>-<8 hex>.<tmp|swap|old>`` (see
``retract.fs._names``); the tests craft such names with a dead pid (a child that has
exited and been reaped), a live one, or another host's hash. A ``swap`` (or an ``old``
of earlier builds) is a target parked by the exchange fallback: it is restored or
removed, never simply deleted.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from retract.fs import SweepReport, _names, is_temp_name, sweep
from retract.fs._names import temp_name
from tests.fs._helpers import (
    HOST,
    OTHER_HOST,
    dead_pid,
    names,
    refuse_like_non_root,
    temp_name_for,
)


@pytest.fixture(scope="module")
def dead() -> int:
    """A pid whose process has exited and been reaped."""
    return dead_pid()


@pytest.fixture
def live_child() -> Iterator[int]:
    """The pid of a running child process (not this one)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def make_file(path: Path, data: str = "x") -> Path:
    path.write_text(data)
    return path


def make_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "f").write_text("x")
    return path


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look ``seconds`` old."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


# -- names -------------------------------------------------------------------------------


def test_temp_name_has_the_documented_shape() -> None:
    """temp_name() makes a hidden name with the target, host hash, our pid and a token."""
    name = temp_name("report.json")
    assert name.startswith(f".report.json.retract-{HOST}-{os.getpid()}-")
    assert name.endswith(".tmp")
    assert is_temp_name(name)
    assert temp_name("report.json", "swap").endswith(".swap")
    assert is_temp_name(temp_name("report.json", "swap"))
    assert temp_name("report.json") != name


def test_crafted_names_match_like_real_ones() -> None:
    """The names these tests craft are recognised exactly like temp_name()'s."""
    assert is_temp_name(temp_name_for("a.txt", pid=123))
    assert is_temp_name(temp_name_for("a.txt", pid=123, host=OTHER_HOST, kind="swap"))
    assert is_temp_name(temp_name_for("a.txt", pid=123, host=OTHER_HOST, kind="old"))


def test_temp_name_shortens_long_targets() -> None:
    """A 255-byte target name gives a temp name within the 255-byte limit."""
    name = temp_name("\u00e9" * 127 + "x")
    assert len(os.fsencode(name)) <= 255
    assert is_temp_name(name)


LOOKALIKES = [
    "a.txt",
    ".a.txt.tmp",
    "a.txt.retract-{host}-{pid}-0123abcd.tmp",  # not hidden
    ".a.txt.retract-{host}-{pid}-0123abcd.new",  # unknown kind
    ".a.txt.retract-{host}-{pid}-0123abcd.swapped",
    ".a.txt.retract-{host}-{pid}-0123abcd.tmp.bak",
    ".a.txt.retract-{host}-{pid}-0123abcd.tmp\n",  # `$` would match this
    ".a.txt.retract-{host}-{pid}-0123ABCD.tmp",  # upper-case token
    ".a.txt.retract-{host}-{pid}-0123abc.tmp",  # short token
    ".a.txt.retract-{host}-{pid}-0123abcde.tmp",  # long token
    ".a.txt.retract-{host}0-{pid}-0123abcd.tmp",  # long host
    ".a.txt.retract-{host}--{pid}-0123abcd.tmp",
    ".a.txt.retract-{host}-x{pid}-0123abcd.tmp",
    ".a.txt.retract-{host}--0123abcd.tmp",  # no pid
    ".a.txt.retract-{host}-\u0663\u0663-0123abcd.tmp",  # Arabic-Indic digits
    ".a.txt.Retract-{host}-{pid}-0123abcd.tmp",
    ".a.txt-retract-{host}-{pid}-0123abcd.tmp",
]


@pytest.mark.parametrize("pattern", LOOKALIKES)
def test_lookalikes_are_not_temp_names(pattern: str, dead: int) -> None:
    """Names that merely resemble a temp's are not recognised."""
    assert not is_temp_name(pattern.format(host=HOST, pid=dead))


async def test_sweep_never_touches_lookalikes(tmp_path: Path, dead: int) -> None:
    """Files and folders whose names only resemble a temp's are never reported or removed."""
    for index, pattern in enumerate(LOOKALIKES):
        name = pattern.format(host=HOST, pid=dead)
        if index % 2:
            make_folder(tmp_path / name)
        else:
            make_file(tmp_path / name)
    before = names(tmp_path)
    report = await sweep(tmp_path, min_age=0)
    assert report == SweepReport()
    assert names(tmp_path) == before


# -- who owns a temp ---------------------------------------------------------------------


async def test_temp_of_a_dead_process_is_removed(tmp_path: Path, dead: int) -> None:
    """A temp whose pid is gone is removed and reported."""
    temp = make_file(tmp_path / temp_name_for("a.txt", pid=dead))
    keep = make_file(tmp_path / "a.txt")
    report = await sweep(tmp_path)
    assert report.removed == [temp]
    assert (report.kept, report.failed) == ([], [])
    assert names(tmp_path) == [keep.name]


async def test_temp_of_this_process_is_kept(tmp_path: Path) -> None:
    """A temp this very process is writing is kept (a live writer owns it)."""
    temp = make_file(tmp_path / temp_name("a.txt"))
    report = await sweep(tmp_path)
    assert report.kept == [temp]
    assert report.removed == []
    assert temp.exists()


async def test_temp_of_another_live_process_is_kept(tmp_path: Path, live_child: int) -> None:
    """A temp whose pid belongs to another running process is kept."""
    temp = make_file(tmp_path / temp_name_for("a.txt", pid=live_child))
    report = await sweep(tmp_path)
    assert report.kept == [temp]
    assert temp.exists()


async def test_temp_of_another_host_is_kept(tmp_path: Path, dead: int) -> None:
    """A temp from another host (a shared filesystem) is kept, even with a dead local pid."""
    temp = make_file(tmp_path / temp_name_for("a.txt", pid=dead, host=OTHER_HOST))
    report = await sweep(tmp_path)
    assert report.kept == [temp]
    assert temp.exists()


async def test_kept_reasons_name_the_live_process(tmp_path: Path, live_child: int) -> None:
    """kept_reasons says a temp was kept because its process (by pid) is still running."""
    temp = make_file(tmp_path / temp_name_for("a.txt", pid=live_child))
    report = await sweep(tmp_path)
    assert report.kept_reasons == {temp: f"its process (pid {live_child}) is still running"}


async def test_kept_reasons_name_another_host(tmp_path: Path, dead: int) -> None:
    """kept_reasons says a temp was kept because another host made it."""
    temp = make_file(tmp_path / temp_name_for("a.txt", pid=dead, host=OTHER_HOST))
    report = await sweep(tmp_path)
    assert list(report.kept_reasons) == [temp]
    assert f"another host ({OTHER_HOST})" in report.kept_reasons[temp]


async def test_temp_with_an_impossible_pid_is_removed(tmp_path: Path) -> None:
    """A pid too large for any process counts as dead (and does not crash the sweep)."""
    temp = make_file(tmp_path / temp_name_for("a.txt", pid=10**30))
    report = await sweep(tmp_path)
    assert report.removed == [temp]


async def test_folder_temps_are_removed(tmp_path: Path, dead: int) -> None:
    """Temp folders of dead processes are removed whole."""
    folder = make_folder(tmp_path / temp_name_for("out", pid=dead))
    other = make_folder(tmp_path / temp_name_for("out", pid=dead, suffix="89abcdef"))
    report = await sweep(tmp_path)
    assert sorted(report.removed) == sorted([folder, other])
    assert names(tmp_path) == []


async def test_folder_temp_with_a_read_only_folder_inside_is_removed(
    tmp_path: Path, dead: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only folder (0o555) inside a temp folder does not stop its removal."""
    folder = make_folder(tmp_path / temp_name_for("out", pid=dead))
    (folder / "sub").chmod(0o555)
    refused = refuse_like_non_root(monkeypatch)
    report = await sweep(tmp_path)
    assert (report.removed, report.failed) == ([folder], [])
    assert names(tmp_path) == []
    assert refused  # the first try was refused, as it would be for non-root


async def test_removal_never_unlocks_the_swept_directory(
    tmp_path: Path, dead: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only folders inside a temp get u+w; a read-only swept directory stays read-only."""
    locked = tmp_path / "locked"
    locked.mkdir()
    folder = make_folder(locked / temp_name_for("out", pid=dead))
    locked.chmod(0o555)
    refuse_like_non_root(monkeypatch)
    report = await sweep(locked)
    assert [path for path, _ in report.failed] == [folder]
    assert report.failed[0][1].startswith("PermissionError:")
    assert stat.S_IMODE(locked.stat().st_mode) == 0o555
    locked.chmod(0o755)


# -- swaps: a target parked by the exchange fallback ---------------------------------------

#: A child that swaps a folder in through the exchange fallback and is killed (os._exit)
#: right after the first ``renames`` renames: 1 parks the target under a swap name, 2
#: also moves the new tree in.
SWAP_CRASH = """
import asyncio, os, sys
from pathlib import Path
from retract.fs import _rename, atomic_folder

_rename._use_native = False
target, renames = Path(sys.argv[1]), int(sys.argv[2])
real_rename, done = os.rename, []

def rename(src, dst):
    real_rename(src, dst)
    done.append(dst)
    if len(done) == renames:
        os._exit(3)

os.rename = rename

async def main():
    async with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "f").write_text("new")

asyncio.run(main())
"""


async def crash_in_folder_swap(target: Path, renames: int) -> Path:
    """Kill a child in the middle of swapping a folder onto ``target``; return the swap."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SWAP_CRASH, str(target), str(renames)
    )
    assert await child.wait() == 3
    [swap] = [target.parent / n for n in names(target.parent) if n.endswith(".swap")]
    return swap


async def test_swap_cut_before_the_new_folder_went_in_is_restored(tmp_path: Path) -> None:
    """Killed right after parking the old folder: the sweep renames it back."""
    target = make_folder(tmp_path / "out")
    swap = await crash_in_folder_swap(target, 1)
    assert not target.exists()
    report = await sweep(tmp_path)
    assert report.restored == [(swap, target)]
    assert len(report.removed) == 1  # the new tree, still under its temp name
    assert report.failed == []
    assert names(tmp_path) == ["out"]
    assert (target / "sub" / "f").read_text() == "x"


async def test_swap_cut_after_the_new_folder_went_in_is_removed(tmp_path: Path) -> None:
    """Killed right after the new folder went in: the sweep removes the parked old one."""
    target = make_folder(tmp_path / "out")
    swap = await crash_in_folder_swap(target, 2)
    report = await sweep(tmp_path)
    assert report.removed == [swap]
    assert (report.restored, report.failed) == ([], [])
    assert names(tmp_path) == ["out"]
    assert (target / "f").read_text() == "new"


async def test_swap_of_a_live_writer_is_kept(tmp_path: Path) -> None:
    """A swap whose process is alive is kept, even with its target missing."""
    swap = make_folder(tmp_path / temp_name("out", "swap"))
    report = await sweep(tmp_path)
    assert report.kept == [swap]
    assert report.restored == []
    assert names(tmp_path) == [swap.name]


async def test_swap_age_counts_from_when_it_was_parked(tmp_path: Path, live_child: int) -> None:
    """min_age judges a swap by its ctime too: its mtime is the old target's, however old."""
    swap = make_folder(tmp_path / temp_name_for("out", pid=live_child, kind="swap"))
    age(swap, 3600)
    report = await sweep(tmp_path, min_age=600)
    assert report.kept == [swap]
    assert names(tmp_path) == [swap.name]


async def test_swap_whose_name_may_be_cut_is_kept_and_reported(tmp_path: Path, dead: int) -> None:
    """A swap whose target name may be truncated is never guessed at: it stays, as failed."""
    swap = make_folder(tmp_path / temp_name_for("x" * _names._BASE_BYTES, pid=dead, kind="swap"))
    report = await sweep(tmp_path)
    [(path, message)] = report.failed
    assert path == swap
    assert "rename this back" in message
    assert (report.removed, report.restored, report.kept) == ([], [], [])
    assert names(tmp_path) == [swap.name]


async def test_old_temps_of_earlier_builds_are_settled_like_swaps(
    tmp_path: Path, dead: int
) -> None:
    """An ``.old`` (the swap name of earlier builds) is restored if its target is missing."""
    missing = make_folder(tmp_path / temp_name_for("out", pid=dead, kind="old"))
    present = make_file(tmp_path / temp_name_for("f", pid=dead, kind="old"), "old")
    make_file(tmp_path / "f", "new")
    report = await sweep(tmp_path)
    assert report.restored == [(missing, tmp_path / "out")]
    assert report.removed == [present]
    assert names(tmp_path) == ["f", "out"]
    assert (tmp_path / "f").read_text() == "new"
    assert (tmp_path / "out" / "sub" / "f").read_text() == "x"


async def test_temp_named_symlink_is_removed_without_following(tmp_path: Path, dead: int) -> None:
    """A temp-named symlink is unlinked; what it points to is untouched."""
    (tmp_path / "precious").mkdir()
    make_file(tmp_path / "precious" / "f")
    link = tmp_path / temp_name_for("out", pid=dead)
    link.symlink_to(tmp_path / "precious", target_is_directory=True)
    report = await sweep(tmp_path)
    assert report.removed == [link]
    assert names(tmp_path) == ["precious"]
    assert names(tmp_path / "precious") == ["f"]


async def test_mixed_directory(tmp_path: Path, dead: int, live_child: int) -> None:
    """In one directory: dead temps go; live, foreign and ordinary entries stay."""
    gone = [
        make_file(tmp_path / temp_name_for("a", pid=dead)),
        make_folder(tmp_path / temp_name_for("b", pid=dead)),
    ]
    kept = [
        make_file(tmp_path / temp_name_for("c", pid=live_child)),
        make_file(tmp_path / temp_name_for("d", pid=dead, host=OTHER_HOST)),
        make_file(tmp_path / temp_name("e")),
    ]
    ordinary = [make_file(tmp_path / "a"), make_folder(tmp_path / "b")]
    report = await sweep(tmp_path)
    assert sorted(report.removed) == sorted(gone)
    assert sorted(report.kept) == sorted(kept)
    assert sorted(report.kept_reasons) == sorted(kept)
    assert report.failed == []
    assert names(tmp_path) == sorted(p.name for p in kept + ordinary)


# -- recursion and age -------------------------------------------------------------------


async def test_sweep_is_not_recursive_by_default(tmp_path: Path, dead: int) -> None:
    """Without recursive=True temps in subdirectories are left alone."""
    (tmp_path / "sub").mkdir()
    nested = make_file(tmp_path / "sub" / temp_name_for("a", pid=dead))
    report = await sweep(tmp_path)
    assert report == SweepReport()
    assert nested.exists()


async def test_recursive_sweep_reaches_subdirectories(tmp_path: Path, dead: int) -> None:
    """recursive=True sweeps every level below the directory too."""
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    temps = [
        make_file(tmp_path / temp_name_for("a", pid=dead)),
        make_file(tmp_path / "sub" / temp_name_for("b", pid=dead)),
        make_folder(tmp_path / "sub" / "deeper" / temp_name_for("c", pid=dead)),
    ]
    make_file(tmp_path / "sub" / "deeper" / "plain")
    report = await sweep(tmp_path, recursive=True)
    assert sorted(report.removed) == sorted(temps)
    assert names(tmp_path / "sub" / "deeper") == ["plain"]


async def test_recursive_sweep_does_not_enter_temp_folders_twice(tmp_path: Path, dead: int) -> None:
    """A temp folder is removed whole; temps inside it are not reported separately."""
    folder = make_folder(tmp_path / temp_name_for("out", pid=dead))
    make_file(folder / temp_name_for("inner", pid=dead))
    report = await sweep(tmp_path, recursive=True)
    assert report.removed == [folder]


async def test_recursive_sweep_does_not_follow_symlinks(tmp_path: Path, dead: int) -> None:
    """A symlink to a directory is not followed, so temps outside the tree are safe."""
    outside = tmp_path / "outside"
    outside.mkdir()
    elsewhere = make_file(outside / temp_name_for("a", pid=dead))
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    report = await sweep(root, recursive=True)
    assert report == SweepReport()
    assert elsewhere.exists()


async def test_min_age_removes_old_temps_of_live_writers(tmp_path: Path, live_child: int) -> None:
    """With min_age, temps older than that go even if their pid or host is alive."""
    old_live = make_file(tmp_path / temp_name_for("a", pid=live_child))
    old_foreign = make_file(tmp_path / temp_name_for("b", pid=live_child, host=OTHER_HOST))
    young = make_file(tmp_path / temp_name_for("c", pid=live_child))
    age(old_live, 3600)
    age(old_foreign, 3600)
    report = await sweep(tmp_path, min_age=600)
    assert sorted(report.removed) == sorted([old_live, old_foreign])
    assert report.kept == [young]
    assert names(tmp_path) == [young.name]


async def test_min_age_still_removes_young_temps_of_dead_writers(tmp_path: Path, dead: int) -> None:
    """min_age adds a reason to remove; a dead writer's fresh temp still goes."""
    temp = make_file(tmp_path / temp_name_for("a", pid=dead))
    report = await sweep(tmp_path, min_age=3600)
    assert report.removed == [temp]


async def test_min_age_uses_the_link_not_its_target(tmp_path: Path, live_child: int) -> None:
    """The age of a temp-named symlink is the link's own, not its target's."""
    target = make_file(tmp_path / "target")
    age(target, 3600)
    link = tmp_path / temp_name_for("a", pid=live_child)
    link.symlink_to(target)
    report = await sweep(tmp_path, min_age=600)
    assert report.kept == [link]


async def test_negative_min_age_raises_value_error(tmp_path: Path) -> None:
    """A negative min_age raises ValueError."""
    with pytest.raises(ValueError, match="min_age"):
        await sweep(tmp_path, min_age=-1)


# -- the report and failures -------------------------------------------------------------


async def test_report_lists_paths(tmp_path: Path, dead: int) -> None:
    """The report's fields are lists of Path (failed: with a message), empty by default."""
    report = SweepReport()
    assert (report.removed, report.kept, report.failed, report.restored) == ([], [], [], [])
    assert report.kept_reasons == {}
    temp = make_file(tmp_path / temp_name_for("a", pid=dead))
    report = await sweep(str(tmp_path))
    assert report.removed == [temp]
    assert all(isinstance(path, Path) for path in report.removed)


async def test_temp_that_cannot_be_removed_is_reported_failed(
    tmp_path: Path, dead: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temp whose removal fails is listed in failed with the error; the sweep goes on."""
    stuck = make_file(tmp_path / temp_name_for("a", pid=dead))
    other = make_file(tmp_path / temp_name_for("b", pid=dead))
    real_remove = _names._remove

    def remove(entry: os.DirEntry[str]) -> None:
        if entry.path == str(stuck):
            raise PermissionError(13, "Permission denied", entry.path)
        real_remove(entry)

    monkeypatch.setattr(_names, "_remove", remove)
    report = await sweep(tmp_path)
    assert report.removed == [other]
    assert len(report.failed) == 1
    path, message = report.failed[0]
    assert path == stuck
    assert message.startswith("PermissionError:")
    assert stuck.exists()


async def test_unreadable_subdirectory_is_reported_failed(
    tmp_path: Path, dead: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subdirectory that cannot be listed is reported in failed; the rest is swept."""
    (tmp_path / "locked").mkdir()
    temp = make_file(tmp_path / temp_name_for("a", pid=dead))
    real_scandir = os.scandir

    def scandir(path: str) -> Iterator[os.DirEntry[str]]:
        if path == str(tmp_path / "locked"):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = await sweep(tmp_path, recursive=True)
    assert report.removed == [temp]
    assert report.failed == [
        (tmp_path / "locked", f"PermissionError: [Errno 13] Permission denied: '{tmp_path}/locked'")
    ]


async def test_sweeping_a_file_raises_not_a_directory(tmp_path: Path) -> None:
    """sweep() of something that is not a directory raises NotADirectoryError."""
    make_file(tmp_path / "f")
    with pytest.raises(NotADirectoryError):
        await sweep(tmp_path / "f")


async def test_sweep_removes_what_a_real_writer_left(tmp_path: Path) -> None:
    """A temp left by another process that has since exited is found and removed."""
    code = (
        "import os, sys; from retract.fs._names import temp_name; "
        "open(os.path.join(sys.argv[1], temp_name('t.txt')), 'w').close()"
    )
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", code, str(tmp_path))
    assert await child.wait() == 0
    [leftover] = names(tmp_path)
    assert is_temp_name(leftover)
    report = await sweep(tmp_path)
    assert report.removed == [tmp_path / leftover]
    assert names(tmp_path) == []
