"""A coroutine does three steps, fails on the third, and is rolled back (saga style).

Run: ``uv run python examples/undo_on_error.py``. Each step is journaled intent-first
with ``session.step``, so even a crash between a step's effect and its record would be
found by ``journal.recover()``. ``undo_on_error=True`` undoes the session when the block
raises, then re-raises the original exception.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import anyio

from retract import OperationRecord, OperationRegistry, open_journal

registry = OperationRegistry()
accounts: dict[str, dict[str, object]] = {}
outbox: list[str] = []


@registry.handler("account.create")
async def delete_account(op: OperationRecord) -> None:
    accounts.pop(op.payload["user"], None)


@registry.handler("file.write")
async def remove_file(op: OperationRecord) -> None:
    path = anyio.Path(op.payload["path"])
    if op.in_doubt and not await path.exists():
        return  # the write never happened
    await path.unlink(missing_ok=True)


@registry.handler("mail.queue")
async def unqueue_mail(op: OperationRecord) -> None:
    if op.payload["message"] in outbox:
        outbox.remove(op.payload["message"])


class PaymentDeclinedError(Exception):
    """The third step fails."""


async def onboard(workdir: Path, user: str) -> None:
    async with open_journal(workdir / "journal.db", registry=registry) as journal:
        try:
            async with journal.start_session(
                job="onboard", user=user, undo_on_error=True
            ) as session:
                async with session.step("account.create", {"user": user}):
                    accounts[user] = {"plan": "pro"}
                print("1. account created:  ", accounts)

                profile = anyio.Path(workdir) / f"{user}.json"
                async with session.step("file.write", {"path": str(profile)}):
                    await profile.write_text(json.dumps(accounts[user]))
                print("2. profile written:  ", await json_files(workdir))

                async with session.step("mail.queue", {"message": f"welcome {user}"}):
                    outbox.append(f"welcome {user}")
                    raise PaymentDeclinedError("card declined")
        except PaymentDeclinedError as exc:
            print(f"3. failed: {exc!r}")
        (record,) = await journal.list_sessions(limit=1)
        print(f"session {record.session_id}: {record.status.value} ({record.error})")
        for op in await journal.get_operations(session.session_id):
            print(f"   #{op.sequence} {op.op_type:<15} {op.state.value}")


async def json_files(workdir: Path) -> list[str]:
    return sorted([path.name async for path in anyio.Path(workdir).glob("*.json")])


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await onboard(Path(tmp), "ada")
        files = await json_files(Path(tmp))
        print("after rollback: accounts", accounts, "| files", files, "| outbox", outbox)
        if accounts or files or outbox:
            raise SystemExit("the rollback left something behind")


if __name__ == "__main__":
    asyncio.run(main())
