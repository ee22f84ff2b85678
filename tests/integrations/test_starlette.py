"""retract.integrations.starlette: pure ASGI middleware, a session per HTTP request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retract import Journal, Session, SessionStatus
from retract.integrations import ResponseFailed, current_session
from retract.integrations.starlette import STATE_KEY, JournalMiddleware, JournalSource
from retract.testing import (
    assert_completed,
    assert_no_session_running,
    assert_rolled_back,
    newest_session,
)


class Boom(Exception):
    """What a failing endpoint raises."""


async def write(request: Request) -> tuple[Session, Path]:
    """Write the file named in the path into the app's folder, through the session."""
    session: Session = request.state.retract_session
    target = Path(request.app.state.out) / request.path_params["name"]
    await session.fs.write_text(target, "written by the request")
    return session, target


async def ok(request: Request) -> Response:
    session, _ = await write(request)
    return JSONResponse({"state": session.session_id, "current": current_session().session_id})


async def boom(request: Request) -> Response:
    await write(request)
    raise Boom("the endpoint failed")


async def http_error(request: Request) -> Response:
    await write(request)
    raise HTTPException(int(request.query_params["status"]))


async def returns_500(request: Request) -> Response:
    await write(request)
    return PlainTextResponse("something broke", status_code=500)


async def streams_500(request: Request) -> Response:
    await write(request)

    async def body() -> AsyncIterator[bytes]:
        yield b"partial "
        yield b"failure"

    return StreamingResponse(body(), status_code=500)


async def together(request: Request) -> Response:
    session, _ = await write(request)
    async with asyncio.timeout(10):
        await request.app.state.barrier.wait()  # every request is in flight at once
    if request.query_params.get("fail"):
        raise Boom("one of them fails")
    return JSONResponse({"session": session.session_id, "current": current_session().session_id})


ROUTES = [
    Route("/ok/{name}", ok, methods=["POST"]),
    Route("/boom/{name}", boom, methods=["POST"]),
    Route("/http-error/{name}", http_error, methods=["POST"]),
    Route("/returns-500/{name}", returns_500, methods=["POST"]),
    Route("/streams-500/{name}", streams_500, methods=["POST"]),
    Route("/together/{name}", together, methods=["POST"]),
]


def make_app(journal: JournalSource, out: Path, **extra: Any) -> Starlette:
    app = Starlette(routes=ROUTES, middleware=[Middleware(JournalMiddleware, journal=journal)])
    app.state.out = str(out)
    for name, value in extra.items():
        setattr(app.state, name, value)
    return app


def client(app: ASGIApp, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_success_keeps_the_file_and_completes(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """A 200 keeps the request's effects and completes its session."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        response = await http.post("/ok/a.txt")
        assert response.status_code == 200
        assert (tmp_path / "a.txt").read_text() == "written by the request"
        record = await assert_completed(journal)
        assert record.context == {"method": "POST", "path": "/ok/a.txt"}
        await assert_no_session_running(journal)


async def test_session_is_in_request_state_and_current(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """request.state.retract_session and current_session() are the request's session."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        body = (await http.post("/ok/a.txt")).json()
        record = await newest_session(journal)
        assert body == {"state": record.session_id, "current": record.session_id}
        assert STATE_KEY == "retract_session"
    with pytest.raises(LookupError):
        current_session()  # reset once the request is over


async def test_raised_exception_rolls_back_and_answers_500(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """An exception from the endpoint undoes the file, then the client gets a 500."""
    app = make_app(retract_journal, tmp_path)
    async with retract_journal as journal, client(app, raise_app_exceptions=False) as http:
        response = await http.post("/boom/a.txt")
        assert response.status_code == 500
        assert not (tmp_path / "a.txt").exists()
        record = await assert_rolled_back(journal)
        assert record.error == "Boom: the endpoint failed"


async def test_raised_exception_propagates_unchanged(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """The endpoint's exception reaches the server (as ServerErrorMiddleware re-raises it)."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        with pytest.raises(Boom, match="the endpoint failed"):
            await http.post("/boom/a.txt")
        await assert_rolled_back(journal)
        assert not (tmp_path / "a.txt").exists()


async def test_raised_exception_is_undone_before_the_500_starts(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """When the 500 for a raised exception starts going out, the file is already gone."""
    seen: list[tuple[int, bool, SessionStatus]] = []
    app = make_app(retract_journal, tmp_path)
    async with retract_journal as journal:
        watched = watch_response_start(app, tmp_path / "a.txt", journal, seen)
        async with client(watched, raise_app_exceptions=False) as http:
            assert (await http.post("/boom/a.txt")).status_code == 500
    assert seen == [(500, False, SessionStatus.ROLLED_BACK)]


async def test_http_exception_503_rolls_back(retract_journal: Journal, tmp_path: Path) -> None:
    """An HTTPException(503), answered by Starlette as a 503, rolls the request back."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        response = await http.post("/http-error/a.txt", params={"status": 503})
        assert response.status_code == 503
        assert not (tmp_path / "a.txt").exists()
        record = await assert_rolled_back(journal)
        assert record.error == "ResponseFailed: the response status was 503"


async def test_http_exception_404_keeps_the_effects(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """An HTTPException(404) is an answer, not a failure: the session completes."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        response = await http.post("/http-error/a.txt", params={"status": 404})
        assert response.status_code == 404
        assert (tmp_path / "a.txt").exists()
        await assert_completed(journal)


async def test_returned_500_rolls_back(retract_journal: Journal, tmp_path: Path) -> None:
    """A 500 response returned without raising rolls back, and is still sent as made."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        response = await http.post("/returns-500/a.txt")
        assert (response.status_code, response.text) == (500, "something broke")
        assert not (tmp_path / "a.txt").exists()
        record = await assert_rolled_back(journal)
        assert record.error == "ResponseFailed: the response status was 500"


async def test_streamed_500_is_undone_after_it_is_sent(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """The documented caveat: a returned 5xx goes out first, the undo follows it."""
    seen: list[tuple[int, bool, SessionStatus]] = []
    app = make_app(retract_journal, tmp_path)
    async with retract_journal as journal:
        watched = watch_response_start(app, tmp_path / "a.txt", journal, seen)
        async with client(watched) as http:
            response = await http.post("/streams-500/a.txt")
        assert (response.status_code, response.text) == (500, "partial failure")
        assert seen == [(500, True, SessionStatus.RUNNING)]  # sent before the undo
        assert not (tmp_path / "a.txt").exists()  # undone once the app returned
        await assert_rolled_back(journal)


async def test_app_that_sends_no_response_rolls_back(retract_journal: Journal) -> None:
    """An app that returns without starting a response (the server answers 500) rolls back."""

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        await current_session().record_operation("test.noop", {})

    async with retract_journal as journal:
        await JournalMiddleware(silent, journal=journal)(http_scope(), no_receive, no_send)
        record = await newest_session(journal)
        assert record.status is SessionStatus.FAILED
        assert record.error == "ResponseFailed: the response status was 500"


async def test_the_apps_own_response_failed_propagates(retract_journal: Journal) -> None:
    """A ResponseFailed raised by the app itself is not mistaken for the middleware's."""

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        raise ResponseFailed(502)

    async with retract_journal as journal:
        with pytest.raises(ResponseFailed, match="502"):
            await JournalMiddleware(inner, journal=journal)(http_scope(), no_receive, no_send)
        await assert_rolled_back(journal)


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
async def test_non_http_scopes_pass_through_untouched(retract_journal: Journal, kind: str) -> None:
    """Lifespan and websocket scopes reach the app as they are, with no session."""
    got: list[tuple[Scope, Receive, Send]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        got.append((scope, receive, send))

    async with retract_journal as journal:
        scope: Scope = {"type": kind, "state": {}}
        await JournalMiddleware(inner, journal=journal)(scope, no_receive, no_send)
        assert got == [(scope, no_receive, no_send)]
        assert scope == {"type": kind, "state": {}}
        assert await journal.list_sessions() == []


async def test_lifespan_opens_the_journal_the_getter_finds(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """A real lifespan runs through the middleware and opens the journal its getter reads."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with retract_journal as journal:
            app.state.journal = journal
            yield

    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(JournalMiddleware, journal=lambda request: request.app.state.journal)
        ],
        lifespan=lifespan,
    )
    app.state.out = str(tmp_path)
    async with running_lifespan(app) as sent, client(app) as http:
        assert sent == ["lifespan.startup.complete"]
        assert (await http.post("/ok/a.txt")).status_code == 200
        await assert_completed(app.state.journal)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.parametrize("style", ["request", "no-argument", "async"])
async def test_journal_getters(retract_journal: Journal, tmp_path: Path, style: str) -> None:
    """The journal may come from a function of the request, of nothing, or a coroutine."""

    async def coroutine() -> Journal:
        return retract_journal

    getters: dict[str, JournalSource] = {
        "request": lambda request: request.app.state.the_journal,
        "no-argument": lambda: retract_journal,
        "async": coroutine,
    }
    app = make_app(getters[style], tmp_path, the_journal=retract_journal)
    async with retract_journal as journal, client(app) as http:
        assert (await http.post("/ok/a.txt")).status_code == 200
        await assert_completed(journal)


async def test_getter_returning_something_else_fails(tmp_path: Path) -> None:
    """A getter that returns no Journal is a TypeError, not a silent pass."""
    app = make_app(lambda: "journal.db", tmp_path)  # type: ignore[arg-type]
    async with client(app) as http:
        with pytest.raises(TypeError, match=r"returned 'journal\.db', not a Journal"):
            await http.post("/ok/a.txt")


def test_journal_must_be_a_journal_or_callable() -> None:
    """Anything but a Journal or a callable is refused when the middleware is made."""
    with pytest.raises(TypeError, match="needs a Journal or a function"):
        JournalMiddleware(no_app, journal="journal.db")  # type: ignore[arg-type]


async def test_concurrent_requests_get_separate_sessions(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """Requests in flight together each get their own session; one failing undoes only its own."""
    count = 4
    app = make_app(retract_journal, tmp_path, barrier=asyncio.Barrier(count))
    async with retract_journal as journal, client(app, raise_app_exceptions=False) as http:
        responses = await asyncio.gather(
            *(
                http.post(f"/together/{i}.txt", params={"fail": "1"} if i == 0 else {})
                for i in range(count)
            )
        )
        assert [r.status_code for r in responses] == [500, 200, 200, 200]
        ids = [r.json()["session"] for r in responses[1:]]
        assert [r.json()["current"] for r in responses[1:]] == ids
        assert len(set(ids)) == 3
        for session_id in ids:
            await assert_completed(journal, session_id)
        sessions = await journal.list_sessions()
        assert len(sessions) == count
        (failed,) = [s for s in sessions if s.session_id not in ids]
        await assert_rolled_back(journal, failed.session_id)
        assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["1.txt", "2.txt", "3.txt"]


# -- helpers ---------------------------------------------------------------------------


def watch_response_start(
    app: ASGIApp, target: Path, journal: Journal, seen: list[tuple[int, bool, SessionStatus]]
) -> ASGIApp:
    """Wrap ``app``: when a response starts, note its status, the file and the session."""

    async def watched(scope: Scope, receive: Receive, send: Send) -> None:
        async def spy(message: Message) -> None:
            if message["type"] == "http.response.start":
                record = await newest_session(journal)
                seen.append((message["status"], target.exists(), record.status))
            await send(message)

        await app(scope, receive, spy)

    return watched


@asynccontextmanager
async def running_lifespan(app: ASGIApp) -> AsyncIterator[list[str]]:
    """Run ``app``'s lifespan as a server would, around the block; yield what it sent."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[str] = []
    started = asyncio.Event()

    async def receive() -> Message:
        return await inbox.get()

    async def send(message: Message) -> None:
        sent.append(message["type"])
        started.set()

    inbox.put_nowait({"type": "lifespan.startup"})
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}

    async def serve() -> None:
        await app(scope, receive, send)

    task = asyncio.create_task(serve())
    async with asyncio.timeout(10):
        await started.wait()
    try:
        yield sent
    finally:
        inbox.put_nowait({"type": "lifespan.shutdown"})
        async with asyncio.timeout(10):
            await task


def http_scope() -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "server": ("test", 80),
        "client": ("test", 1234),
    }


async def no_receive() -> Message:
    raise AssertionError("the app should not read the request")


async def no_send(message: Message) -> None:
    raise AssertionError(f"the app should not send {message!r}")


async def no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("never called")


async def test_a_failing_background_task_does_not_undo_an_answered_request(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """After the whole 201 went out, a BackgroundTask's failure leaves the request done."""
    from starlette.background import BackgroundTask  # noqa: PLC0415

    async def send_email() -> None:
        raise ConnectionError("smtp down")

    async def create(request: Request) -> Response:
        await current_session().fs.write_text(tmp_path / "order.json", "{}")
        return PlainTextResponse("created", status_code=201, background=BackgroundTask(send_email))

    async with retract_journal as journal:
        app = Starlette(
            routes=[Route("/o", create, methods=["POST"])],
            middleware=[Middleware(JournalMiddleware, journal=journal)],
        )
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/o")
        assert (response.status_code, response.text) == (201, "created")
        await assert_completed(journal)
    assert (tmp_path / "order.json").exists()
