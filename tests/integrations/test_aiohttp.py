"""retract.integrations.aiohttp: a journal per application, a session per request."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from retract import Journal, JournalClosedError, SessionStatus
from retract.integrations import current_session
from retract.integrations.aiohttp import (
    JOURNAL_KEY,
    SESSION_KEY,
    journal_cleanup_ctx,
    journal_middleware,
)
from retract.testing import (
    assert_completed,
    assert_no_session_running,
    assert_rolled_back,
    newest_session,
)


class Boom(Exception):
    """What a failing handler raises."""


@dataclass
class Spy:
    """What the handlers raised, and what reached the middleware outside the journal's."""

    raised: list[BaseException] = field(default_factory=list)
    caught: list[BaseException] = field(default_factory=list)


OUT = web.AppKey("out", Path)
SPY = web.AppKey("spy", Spy)
BARRIER = web.AppKey("barrier", asyncio.Barrier)


async def write(request: web.Request) -> Path:
    """Write the file named in the path into the app's folder, through the session."""
    target = request.app[OUT] / request.match_info["name"]
    await current_session().fs.write_text(target, "written by the request")
    return target


def fail_with(request: web.Request, exc: BaseException) -> BaseException:
    request.app[SPY].raised.append(exc)
    return exc


async def ok(request: web.Request) -> web.Response:
    await write(request)
    return web.Response(text="kept")


async def raising(request: web.Request) -> web.Response:
    await write(request)
    raise fail_with(request, Boom("the handler failed"))


async def redirect(request: web.Request) -> web.Response:
    await write(request)
    raise fail_with(request, web.HTTPFound("/elsewhere"))


async def missing(request: web.Request) -> web.Response:
    await write(request)
    raise fail_with(request, web.HTTPNotFound(text="no such thing"))


async def returns_500(request: web.Request) -> web.Response:
    await write(request)
    return web.Response(status=500, text="the handler's own 500")


async def unavailable(request: web.Request) -> web.Response:
    await write(request)
    raise fail_with(request, web.HTTPServiceUnavailable(text="try later"))


async def hang(request: web.Request) -> web.Response:
    await write(request)
    await asyncio.Event().wait()  # until the handler is cancelled
    raise AssertionError("never set")


async def together(request: web.Request) -> web.Response:
    await write(request)
    async with asyncio.timeout(10):
        await request.app[BARRIER].wait()  # both requests are in flight here
    if request.match_info["name"].startswith("bad"):
        raise Boom("one of two concurrent requests failed")
    return web.json_response({"session": current_session().session_id})


async def whoami(request: web.Request) -> web.Response:
    session = current_session()
    return web.json_response(
        {
            "session": session.session_id,
            "same": request[SESSION_KEY] is session,
            "context": session.context,
        }
    )


@web.middleware
async def spy(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except BaseException as exc:
        request.app[SPY].caught.append(exc)
        raise
    return response


def make_app(out: Path, journal: Journal | Path | str) -> web.Application:
    """An app with the spy outside the journal middleware, and every test route."""
    app = web.Application(middlewares=[spy, journal_middleware()])
    source = journal if not isinstance(journal, Journal) else (lambda: journal)
    app.cleanup_ctx.append(journal_cleanup_ctx(source))
    app[OUT] = out
    app[SPY] = Spy()
    app[BARRIER] = asyncio.Barrier(2)
    app.add_routes(
        [
            web.get("/ok/{name}", ok),
            web.get("/raise/{name}", raising),
            web.get("/redirect/{name}", redirect),
            web.get("/missing/{name}", missing),
            web.get("/return500/{name}", returns_500),
            web.get("/unavailable/{name}", unavailable),
            web.get("/hang/{name}", hang),
            web.get("/together/{name}", together),
            web.get("/whoami", whoami),
        ]
    )
    return app


@asynccontextmanager
async def serving(app: web.Application, **runner_options: Any) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 (a free port, yielded) until the block ends."""
    runner = web.AppRunner(app, shutdown_timeout=5.0, **runner_options)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def client(app: web.Application) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for ``app``, served meanwhile."""
    async with serving(app) as port, aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        yield http


#: How long wait_until polls before it fails the test.
PATIENCE = 10.0


async def wait_until(check: Callable[[], bool | Awaitable[bool]]) -> None:
    """Poll ``check`` until it is true, or fail after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{check} still false after {PATIENCE}s"
        await asyncio.sleep(0.02)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


async def test_success_keeps_the_effects(out: Path, retract_journal: Journal) -> None:
    """A request that succeeds completes its session and keeps its file."""
    app = make_app(out, retract_journal)
    async with client(app) as http, http.get("/ok/a.txt") as response:
        assert response.status == 200
        assert await response.text() == "kept"
        record = await assert_completed(app[JOURNAL_KEY])
        assert record.context == {"method": "GET", "path": "/ok/a.txt"}
        await assert_no_session_running(app[JOURNAL_KEY])
    assert (out / "a.txt").read_text() == "written by the request"


async def test_raising_rolls_back(out: Path, retract_journal: Journal) -> None:
    """A handler that raises is rolled back: the file is gone and the client gets a 500."""
    app = make_app(out, retract_journal)
    async with client(app) as http, http.get("/raise/a.txt") as response:
        assert response.status == 500
        record = await assert_rolled_back(app[JOURNAL_KEY])
        assert record.error == "Boom: the handler failed"
    assert list(out.iterdir()) == []
    assert app[SPY].caught == app[SPY].raised  # the very exception, unchanged


async def test_redirect_does_not_roll_back(out: Path, retract_journal: Journal) -> None:
    """A raised HTTPFound is an answer: the session completes and the redirect propagates."""
    app = make_app(out, retract_journal)
    async with client(app) as http, http.get("/redirect/a.txt", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/elsewhere"
        await assert_completed(app[JOURNAL_KEY])
    assert (out / "a.txt").exists()
    (raised,) = app[SPY].raised
    (caught,) = app[SPY].caught
    assert caught is raised


async def test_not_found_does_not_roll_back(out: Path, retract_journal: Journal) -> None:
    """A raised HTTPNotFound completes the session and reaches the client as a 404."""
    app = make_app(out, retract_journal)
    async with client(app) as http, http.get("/missing/a.txt") as response:
        assert response.status == 404
        assert await response.text() == "no such thing"
        await assert_completed(app[JOURNAL_KEY])
    assert (out / "a.txt").exists()
    assert app[SPY].caught == app[SPY].raised


async def test_returned_500_rolls_back(out: Path, retract_journal: Journal) -> None:
    """A returned 500 rolls the request back, and the client still gets that response."""
    app = make_app(out, retract_journal)
    async with client(app) as http, http.get("/return500/a.txt") as response:
        assert response.status == 500
        assert await response.text() == "the handler's own 500"
        record = await assert_rolled_back(app[JOURNAL_KEY])
        assert record.error == "ResponseFailed: the response status was 500"
    assert list(out.iterdir()) == []
    assert app[SPY].caught == []  # the ResponseFailed signal never leaves the middleware


async def test_raised_503_rolls_back(out: Path, retract_journal: Journal) -> None:
    """A raised HTTPServiceUnavailable rolls back and reaches the client as a 503."""
    app = make_app(out, retract_journal)
    async with client(app) as http, http.get("/unavailable/a.txt") as response:
        assert response.status == 503
        assert await response.text() == "try later"
        await assert_rolled_back(app[JOURNAL_KEY])
    assert list(out.iterdir()) == []
    assert app[SPY].caught == app[SPY].raised


async def test_session_is_reachable(out: Path, retract_journal: Journal) -> None:
    """The handler finds its session as current_session() and as request[SESSION_KEY]."""
    app = make_app(out, retract_journal)
    async with client(app) as http, http.get("/whoami") as response:
        body = await response.json()
        record = await newest_session(app[JOURNAL_KEY])
    assert body == {
        "session": record.session_id,
        "same": True,
        "context": {"method": "GET", "path": "/whoami"},
    }
    with pytest.raises(LookupError):
        current_session()


@pytest.mark.parametrize("source", ["path", "memory", "factory"])
async def test_cleanup_ctx_opens_and_closes_the_journal(
    source: str, retract_journal_path: Path, retract_journal: Journal
) -> None:
    """The journal is open while the app runs (path, :memory: or factory) and closed after."""
    location: Path | str | Callable[[], Journal]
    if source == "path":
        location = retract_journal_path
    elif source == "memory":
        location = ":memory:"
    else:
        location = lambda: retract_journal  # noqa: E731
    app = web.Application()
    app.cleanup_ctx.append(journal_cleanup_ctx(location))
    async with serving(app):
        journal = app[JOURNAL_KEY]
        journal.check_open()
        assert await journal.list_sessions() == []
        if source == "factory":
            assert journal is retract_journal
    with pytest.raises(JournalClosedError):
        journal.check_open()
    assert retract_journal_path.exists() is (source != "memory")


async def test_cleanup_ctx_passes_open_options_and_a_custom_key(tmp_path: Path) -> None:
    """Open options reach open_journal, and the journal is stored under the key given."""
    key = web.AppKey("other_journal", Journal)
    images = tmp_path / "images"
    app = web.Application()
    app.cleanup_ctx.append(journal_cleanup_ctx(tmp_path / "j.db", key=key, images_dir=images))
    async with serving(app):
        assert app[key].images_dir == images
        assert JOURNAL_KEY not in app


def test_cleanup_ctx_refuses_bad_arguments(retract_journal: Journal) -> None:
    """Open options with a factory, or something neither a location nor callable, raise."""
    with pytest.raises(TypeError, match="only with a location"):
        journal_cleanup_ctx(lambda: retract_journal, create=False)
    with pytest.raises(TypeError, match="needs a journal location"):
        journal_cleanup_ctx(42)  # type: ignore[arg-type]


async def test_middleware_without_journal_fails_clearly(
    out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the cleanup context the request fails with a message naming the fix."""
    app = web.Application(middlewares=[journal_middleware()])
    app.add_routes([web.get("/ok/{name}", ok)])
    app[OUT] = out
    async with client(app) as http, http.get("/ok/a.txt") as response:
        assert response.status == 500
    assert "journal_cleanup_ctx" in caplog.text
    assert list(out.iterdir()) == []


async def test_client_disconnect_rolls_back(out: Path, retract_journal: Journal) -> None:
    """With handler_cancellation, a client that hangs up cancels the handler and the undo runs."""
    app = make_app(out, retract_journal)
    target = out / "gone.txt"
    async with serving(app, handler_cancellation=True) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hang/gone.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        await wait_until(target.exists)
        writer.close()
        await writer.wait_closed()
        journal = app[JOURNAL_KEY]

        async def rolled_back() -> bool:
            record = await newest_session(journal)
            return record.status is SessionStatus.ROLLED_BACK

        await wait_until(lambda: not target.exists())
        await wait_until(rolled_back)
        record = await assert_rolled_back(journal)
        assert record.error is not None
        assert "CancelledError" in record.error
        await assert_no_session_running(journal)
        assert await reader.read() == b""  # no answer was ever sent


async def test_concurrent_requests_get_separate_sessions(
    out: Path, retract_journal: Journal
) -> None:
    """Two requests in flight at once have separate sessions; only the failing one is undone."""
    app = make_app(out, retract_journal)
    async with client(app) as http:

        async def get(path: str) -> tuple[int, Any]:
            async with http.get(path) as response:
                body = await response.json() if response.status == 200 else None
                return response.status, body

        (good_status, good_body), (bad_status, _) = await asyncio.gather(
            get("/together/good.txt"), get("/together/bad.txt")
        )
        journal = app[JOURNAL_KEY]
        sessions = {record.context["path"]: record for record in await journal.list_sessions()}
        good = sessions["/together/good.txt"]
        bad = sessions["/together/bad.txt"]
        assert good.session_id != bad.session_id
        assert good_body == {"session": good.session_id}
        await assert_completed(journal, good.session_id)
        await assert_rolled_back(journal, bad.session_id)
    assert (good_status, bad_status) == (200, 500)
    assert sorted(path.name for path in out.iterdir()) == ["good.txt"]


async def test_cleanup_waits_for_an_undo_still_running_at_shutdown(tmp_path: Path) -> None:
    """The journal stays open at shutdown until a disconnected request's undo is done."""
    from retract import OperationRegistry, open_journal  # noqa: PLC0415

    registry = OperationRegistry()
    calls: list[str] = []
    undo_started = asyncio.Event()

    @registry.handler("slow.op")
    async def undo_slow(_op: Any) -> None:
        calls.append("start")
        undo_started.set()
        await asyncio.sleep(0.5)
        calls.append("done")

    recorded = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await current_session().record_operation("slow.op", {})
        recorded.set()
        await asyncio.sleep(60)
        return web.Response(text="never")

    location = tmp_path / "j.db"
    app = web.Application(middlewares=[journal_middleware()])
    app.cleanup_ctx.append(journal_cleanup_ctx(location, registry=registry))
    app.add_routes([web.get("/slow", slow)])
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(recorded.wait(), 5)
    writer.close()  # the client hangs up: the handler is cancelled, its undo starts
    await asyncio.wait_for(undo_started.wait(), 5)
    await runner.cleanup()  # the journal closes only after the undo
    assert calls == ["start", "done"]
    async with open_journal(location, registry=registry) as journal:
        await assert_rolled_back(journal)
