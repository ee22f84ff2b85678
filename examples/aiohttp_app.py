"""An aiohttp app whose requests are sessions: a failed request leaves no file behind.

Run: ``uv run python examples/aiohttp_app.py`` (needs the ``aiohttp`` extra). The app
opens its journal with ``journal_cleanup_ctx`` and runs each request in a session with
``journal_middleware``. The handler saves a note through ``session.fs``, then checks it:
a rejected note raises, the error middleware answers 500, and the session is rolled
back, which removes the file again. A handler that raises anything else is rolled back
just the same (aiohttp then logs the error and answers 500 itself).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from retract.integrations import current_session
from retract.integrations.aiohttp import JOURNAL_KEY, journal_cleanup_ctx, journal_middleware

NOTES = web.AppKey("notes", Path)


class NoteRejectedError(Exception):
    """The note was saved, but a later check refused it."""


async def save_note(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    text = await request.text()
    await current_session().fs.write_text(request.app[NOTES] / f"{name}.txt", text)
    if "spam" in text:  # e.g. a moderation service says no, after the note was written
        raise NoteRejectedError(f"note {name!r} looks like spam")
    return web.Response(text=f"saved {name}")


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a rejected note with a JSON 500 (inside the session: it is rolled back)."""
    try:
        return await handler(request)
    except NoteRejectedError as exc:
        return web.json_response({"error": str(exc)}, status=500)


def make_app(workdir: Path) -> web.Application:
    # journal_middleware first: the middlewares after it run inside the session.
    app = web.Application(middlewares=[journal_middleware(), errors_as_json])
    app.cleanup_ctx.append(journal_cleanup_ctx(workdir / "journal.db"))
    app[NOTES] = workdir / "notes"
    app[NOTES].mkdir()
    app.add_routes([web.post("/notes/{name}", save_note)])
    return app


def notes(app: web.Application) -> list[str]:
    return sorted(path.name for path in app[NOTES].iterdir())


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(Path(tmp))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            port = runner.addresses[0][1]
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                async with http.post("/notes/offer", data="buy spam now") as response:
                    print(f"failed request: {response.status}, files left: {notes(app)}")
                async with http.post("/notes/hello", data="hello, world") as response:
                    print(f"good request: {response.status}, files: {notes(app)}")
            for record in reversed(await app[JOURNAL_KEY].list_sessions()):
                error = f" ({record.error})" if record.error else ""
                print(f"session {record.context['path']}: {record.status.value}{error}")
        finally:
            await runner.cleanup()
        if notes(app) != ["hello.txt"]:
            raise SystemExit("the rollback left something behind")


if __name__ == "__main__":
    asyncio.run(main())
