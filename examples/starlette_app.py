"""A Starlette app behind JournalMiddleware: a 500 *returned* (not raised) is rolled back.

Run: ``uv run python examples/starlette_app.py`` (needs the ``starlette`` extra). No
server and no network: ``main()`` runs the app in process through
``httpx.ASGITransport``, in a temporary folder. The upload endpoint stores the file
through the request's session, then asks a virus scanner; when the scanner says no, the
endpoint *returns* a 500 without raising. A dependency could not see that; the
middleware sees the status and removes the file again.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retract import Journal, open_journal
from retract.integrations.starlette import JournalMiddleware


def create_app(folder: Path) -> Starlette:
    """Uploads are files in ``folder / "uploads"``; the journal sits beside them."""
    uploads = folder / "uploads"
    uploads.mkdir(exist_ok=True)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_journal(folder / "journal.db") as journal:
            app.state.journal = journal
            yield

    async def upload(request: Request) -> Response:
        session = request.state.retract_session
        name = request.path_params["name"]
        body = (await request.body()).decode()
        await session.fs.write_text(uploads / name, body)
        if "EICAR" in body:  # the scanner refuses it: answered, not raised
            return JSONResponse({"error": "rejected by the scanner"}, status_code=500)
        return JSONResponse({"stored": name}, status_code=201)

    def journal_of(request: Request) -> Journal:
        journal: Journal = request.app.state.journal
        return journal

    return Starlette(
        routes=[Route("/uploads/{name}", upload, methods=["PUT"])],
        middleware=[Middleware(JournalMiddleware, journal=journal_of)],
        lifespan=lifespan,
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        app = create_app(folder)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://files") as client,
        ):
            bad = await client.put("/uploads/virus.txt", content="X5O...EICAR...")
            print(f"rejected upload: {bad.status_code}, files left: {files(folder)}")
            good = await client.put("/uploads/notes.txt", content="hello")
            print(f"good upload: {good.status_code}, files: {files(folder)}")
            journal: Journal = app.state.journal
            for record in reversed(await journal.list_sessions()):
                error = f" ({record.error})" if record.error else ""
                print(f"session {record.context['path']}: {record.status.value}{error}")


def files(folder: Path) -> list[str]:
    return sorted(path.name for path in (folder / "uploads").iterdir())


if __name__ == "__main__":
    asyncio.run(main())
