"""Property: any sequence of ``session.fs`` operations is undone to the exact starting tree.

Hypothesis draws a small tree (files with random bytes and permission bits, a nested
directory, maybe a symlink) and a sequence of operations over a handful of names, many
of which fail (missing source, existing target, wrong kind). A failing operation must
leave the tree as it was; after the session, undo must give back the starting tree byte
for byte: names, kinds, contents, permission bits and symlink targets.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retract import (
    DriftError,
    DurabilityError,
    OperationState,
    Session,
    SessionStatus,
    open_journal,
)
from retract.fs import is_temp_name
from tests.fs._helpers import snapshot

#: A drawn tree: a file is (bytes, mode), a directory (mode, children), a symlink a str.
Node = tuple[bytes, int] | tuple[int, dict[str, "Node"]] | str

NAMES = ("a", "b", "l", "d", "d/x", "d/e", "d/e/y", "n", "n/z")
FILE_MODES = (0o600, 0o644, 0o755)
DIR_MODES = (0o700, 0o755)


def build(folder: Path, children: dict[str, Node]) -> None:
    for name, node in children.items():
        path = folder / name
        if isinstance(node, str):
            os.symlink(node, path)
        elif isinstance(node[0], bytes):
            path.write_bytes(node[0])
            path.chmod(node[1])
        else:
            path.mkdir()
            build(path, node[1])
            path.chmod(node[0])


files = st.tuples(st.binary(max_size=12), st.sampled_from(FILE_MODES))


def directory(children: dict[str, st.SearchStrategy[Node]]) -> st.SearchStrategy[Node]:
    return st.tuples(st.sampled_from(DIR_MODES), st.fixed_dictionaries({}, optional=children))


trees: st.SearchStrategy[dict[str, Node]] = st.fixed_dictionaries(
    {},
    optional={
        "a": files,
        "b": files,
        "l": st.sampled_from(["a", "d/x", "nowhere"]),
        "d": directory({"x": files, "e": directory({"y": files})}),
    },
)


@dataclass(frozen=True)
class Op:
    """One drawn call; each kind uses the fields it needs."""

    kind: str
    path: str
    other: str
    data: bytes
    overwrite: bool
    flag: bool
    mode: int | None

    def __repr__(self) -> str:
        return (
            f"Op({self.kind} {self.path!r} {self.other!r} data={self.data!r} "
            f"overwrite={self.overwrite} flag={self.flag} mode={self.mode})"
        )


operations = st.lists(
    st.builds(
        Op,
        kind=st.sampled_from(["write", "write_text", "move", "copy", "delete", "mkdir", "rmtree"]),
        path=st.sampled_from(NAMES),
        other=st.sampled_from(NAMES),
        data=st.binary(max_size=12),
        overwrite=st.booleans(),
        flag=st.booleans(),
        mode=st.none() | st.sampled_from(FILE_MODES),
    ),
    max_size=8,
)


async def apply(session: Session, root: Path, op: Op) -> None:
    path, other, fs = root / op.path, root / op.other, session.fs
    if op.kind == "write":
        await fs.write_bytes(path, op.data, overwrite=op.overwrite, permissions=op.mode)
    elif op.kind == "write_text":
        await fs.write_text(path, op.data.hex(), overwrite=op.overwrite)
    elif op.kind == "move":
        await fs.move(path, other, overwrite=op.overwrite)
    elif op.kind == "copy":
        await fs.copy(path, other, overwrite=op.overwrite)
    elif op.kind == "delete":
        await fs.delete(path, missing_ok=op.flag)
    elif op.kind == "mkdir":
        await fs.mkdir(path, parents=op.flag, exist_ok=op.overwrite)
    else:
        await fs.rmtree(path)


async def run_and_undo(location: str, images: Path, root: Path, ops: list[Op]) -> None:
    before = snapshot(root)
    async with open_journal(location, images_dir=images) as journal:
        async with journal.start_session() as session:
            for op in ops:
                current = snapshot(root)
                error: Exception | None = None
                try:
                    await apply(session, root, op)
                except (OSError, ValueError) as exc:
                    error = exc
                if error is not None:
                    assert not isinstance(error, DurabilityError | DriftError), error
                    assert snapshot(root) == current, f"{op} failed with {error!r} and changed"
                assert not [n for n in snapshot(root) if is_temp_name(os.path.basename(n))]
        report = await journal.undo_session(session.session_id)
        assert report.status is SessionStatus.ROLLED_BACK
        assert report.failed == ()
        assert snapshot(root) == before
        done = await journal.get_operations(session.session_id)
        assert all(op.state in (OperationState.UNDONE, OperationState.SKIPPED) for op in done)
        folder = images / session.session_id
        assert not folder.exists() or os.listdir(folder) == []


def shm_available() -> bool:
    """Whether /dev/shm is a filesystem other than the temp directory's."""
    return (
        os.path.isdir("/dev/shm")
        and os.stat("/dev/shm").st_dev != os.stat(tempfile.gettempdir()).st_dev
    )


@pytest.mark.parametrize("kind", ["sqlite", "memory", "tmpfs-images"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, ops=operations)
def test_undo_restores_the_tree_byte_for_byte(
    kind: str, tree: dict[str, Node], ops: list[Op]
) -> None:
    """Whatever operations ran (or failed), undo gives back the exact starting tree.

    ``tmpfs-images`` keeps the before-images on another filesystem (copies, not renames).
    """
    if kind == "tmpfs-images" and not shm_available():
        pytest.skip("no /dev/shm on another filesystem than the temp directory")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        build(root, tree)
        location = ":memory:" if kind != "sqlite" else os.path.join(tmp, "j.db")
        if kind != "tmpfs-images":
            asyncio.run(run_and_undo(location, Path(tmp) / "images", root, ops))
            return
        with tempfile.TemporaryDirectory(dir="/dev/shm") as images:
            asyncio.run(run_and_undo(location, Path(images), root, ops))
