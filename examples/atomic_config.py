"""An atomic config rewrite: readers see the old file or the new one, never half of it.

Run: ``uv run python examples/atomic_config.py``. It works in a temporary directory:

1. writes ``config.json`` (no-clobber by default: a second plain write is refused);
2. makes it private (mode 0o640) and rewrites it with ``overwrite=True``: the new file
   keeps the old permission bits;
3. starts a rewrite that fails halfway: the old content stays, and no temp is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import tempfile
from pathlib import Path

from retract import FileAlreadyExistsError, atomic_write, atomic_write_text


def listing(directory: Path) -> list[str]:
    """Every name in the directory, hidden temps included."""
    return sorted(os.listdir(directory))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"

        await atomic_write_text(config, json.dumps({"mode": "debug"}) + "\n")
        try:
            await atomic_write_text(config, "{}\n")
        except FileAlreadyExistsError as exc:
            print(f"1. second write refused: {type(exc).__name__} (a FileExistsError)")

        config.chmod(0o640)
        async with atomic_write(config, "w", overwrite=True) as f:
            await f.write(json.dumps({"mode": "release", "workers": 4}, indent=2))
            await f.write("\n")
        mode = stat.S_IMODE(config.stat().st_mode)
        print(f"2. rewritten, mode kept: {oct(mode)}; content: {json.loads(config.read_text())}")

        try:
            async with atomic_write(config, "w", overwrite=True) as f:
                await f.write('{"mode": "broken", ')
                raise RuntimeError("the generator crashed halfway")
        except RuntimeError as exc:
            print(f"3. rewrite failed ({exc}); config still: {json.loads(config.read_text())}")
        print(f"   files in the directory: {listing(Path(tmp))}")


if __name__ == "__main__":
    asyncio.run(main())
