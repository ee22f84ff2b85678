"""A script that moves, rewrites and deletes files in one session, then undoes it all.

Run: ``uv run python examples/fs_session.py``. It works in a temporary directory with
its journal beside the files; ``session.fs`` journals each change with its intent first
and keeps what it overwrites or deletes, so ``journal.undo_session`` can put the tree
back exactly as it was, permission bits included.
"""

from __future__ import annotations

import asyncio
import hashlib
import stat
import tempfile
from pathlib import Path

from retract import open_journal


def tree(root: Path) -> dict[str, str]:
    """Each path under ``root``: a short hash and the mode of files, "dir" for folders."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_dir():
            found[name] = "dir"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
            found[name] = f"{digest} {oct(stat.S_IMODE(path.stat().st_mode))}"
    return found


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "site"
        (work / "static").mkdir(parents=True)
        (work / "index.html").write_text("<h1>v1</h1>\n")
        (work / "static" / "app.js").write_text("console.log('v1')\n")
        (work / "deploy.sh").write_text("#!/bin/sh\necho deploy\n")
        (work / "deploy.sh").chmod(0o755)
        before = tree(work)

        async with open_journal(Path(tmp) / "journal.db") as journal:
            async with journal.start_session(script="fs_session.py") as session:
                await session.fs.mkdir(work / "old")
                await session.fs.move(work / "index.html", work / "old" / "index.html")
                await session.fs.write_text(work / "index.html", "<h1>v2</h1>\n")
                await session.fs.write_text(work / "deploy.sh", "#!/bin/sh\necho v2\n")
                await session.fs.copy(work / "static", work / "static.bak")
                await session.fs.delete(work / "static" / "app.js")
            after = tree(work)
            print("changed by the session:")
            for name in sorted(set(before) | set(after)):
                if before.get(name) != after.get(name):
                    print(f"  {name:<18} {before.get(name, '-'):<16} -> {after.get(name, '-')}")

            report = await journal.undo_session(session.session_id)
            print(f"undo: {report.status.value}, {report.undone} operations undone")

        restored = tree(work)
        print("restored byte for byte, modes included:", restored == before)
        print("deploy.sh mode:", restored["deploy.sh"].split()[1])


if __name__ == "__main__":
    asyncio.run(main())
