"""A FastAPI app whose requests are sessions: a failed request leaves no file behind.

Run: ``uv run python examples/fastapi_app.py`` (needs the ``fastapi`` extra). No server
and no network: ``main()`` runs the app's lifespan and sends it two requests in process
through ``httpx.ASGITransport``, in a temporary folder. The endpoint writes the order's
file through ``session.fs``, then checks the stock: the order that cannot be served
raises, its file is removed again before the 500 goes out, and the other one keeps its
file. With a real server, serve ``create_app(Path("data"))``: the server runs the
lifespan, which opens the journal.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

import retract
from retract import open_journal
from retract.integrations.fastapi import journal_session

STOCK = {"lamp": 3, "chair": 0}


class Order(BaseModel):
    """What a client orders."""

    item: str
    quantity: int


class OutOfStockError(Exception):
    """The order cannot be served: the request fails, and is rolled back."""


def get_journal(request: Request) -> retract.Journal:
    """The journal the lifespan opened."""
    journal: retract.Journal = request.app.state.journal
    return journal


# One alias, made once: each request gets one session, ended before its response is sent.
Session = Annotated[retract.Session, Depends(journal_session(get_journal), scope="function")]


def create_app(folder: Path) -> FastAPI:
    """The app: orders are files in ``folder / "orders"``, the journal beside them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_journal(folder / "journal.db") as journal:
            app.state.journal = journal
            yield

    app = FastAPI(lifespan=lifespan)
    orders = folder / "orders"
    orders.mkdir(exist_ok=True)

    @app.post("/orders/{order_id}")
    async def place_order(order_id: int, order: Order, session: Session) -> dict[str, str]:
        name = f"order-{order_id}.json"
        await session.fs.write_text(orders / name, json.dumps(order.model_dump()))
        if STOCK.get(order.item, 0) < order.quantity:
            raise OutOfStockError(f"{order.quantity} x {order.item}")  # -> 500, file removed
        return {"stored": name}

    return app


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        app = create_app(folder)
        # raise_app_exceptions=False: answer an unhandled error with a 500, as a server does.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://shop") as client,
        ):
            failed = await client.post("/orders/1", json={"item": "chair", "quantity": 1})
            print(f"failed request: {failed.status_code}, files left: {files(folder)}")
            good = await client.post("/orders/2", json={"item": "lamp", "quantity": 2})
            print(f"good request: {good.status_code}, files: {files(folder)}")

            journal: retract.Journal = app.state.journal
            for record in reversed(await journal.list_sessions()):
                error = f" ({record.error})" if record.error else ""
                print(f"session {record.context['path']}: {record.status.value}{error}")


def files(folder: Path) -> list[str]:
    return sorted(path.name for path in (folder / "orders").iterdir())


if __name__ == "__main__":
    asyncio.run(main())
