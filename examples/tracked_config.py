"""A config changed by two concurrent tasks, watched by a subscriber, then reverted.

Run: ``uv run python examples/tracked_config.py``. Each task sets its own actor with
``tracking_actor`` (a context variable, so the tasks never mix them up); a subscriber
task prints every change as it arrives; at the end one ``revert`` puts the config back
as it was.
"""

from __future__ import annotations

import asyncio
from typing import Any

from retract import Subscription, TrackedDict, tracking_actor


async def deployer(config: TrackedDict[str, Any]) -> None:
    with tracking_actor("deployer"):
        config["mode"] = "release"
        await asyncio.sleep(0)  # let the other task run in between
        config["replicas"] = 3


async def tuner(config: TrackedDict[str, Any]) -> None:
    with tracking_actor("tuner"):
        limits = config["limits"]
        limits["cpu"] = "2"
        await asyncio.sleep(0)
        limits["memory"] = "4Gi"


async def watch(changes: Subscription) -> None:
    async for change in changes:
        where = "/".join(str(part) for part in change.path)
        print(f"  #{change.seq} {change.actor:<8} {change.action:<7} {where}: {change.new!r}")


async def main() -> None:
    config: TrackedDict[str, Any] = TrackedDict(
        {"mode": "debug", "replicas": 1, "limits": {"cpu": "1"}}
    )
    original = config.to_plain()
    sub = config.subscribe()
    print("changes as the subscriber sees them:")
    watcher = asyncio.create_task(watch(sub))
    await asyncio.gather(deployer(config), tuner(config))
    first = config.tracking_changes()[0]
    sub.close()
    await watcher

    print("config now:     ", config.to_plain())
    config.revert(first)
    print("after revert:   ", config.to_plain())
    print("same as before: ", config.to_plain() == original)


if __name__ == "__main__":
    asyncio.run(main())
