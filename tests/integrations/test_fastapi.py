"""retract.integrations.fastapi: a session per request, as a function-scoped dependency."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retract import Journal, Session, SessionStatus
from retract.integrations import current_session
from retract.integrations.fastapi import JournalSource, journal_session
from retract.testing import (
    assert_completed,
    assert_no_session_running,
    assert_rolled_back,
    newest_session,
)


class Boom(Exception):
    """What a failing endpoint raises."""


def app_journal(request: Request) -> Journal:
    """The journal the test put in the app's state."""
    journal: Journal = request.app.state.journal
    return journal


# The idiom: one alias, made once at module level, used by every endpoint.
RequestSession = Annotated[Session, Depends(journal_session(app_journal), scope="function")]


async def write(session: RequestSession, request: Request, name: str) -> Path:
    """A dependency using the same session (FastAPI caches it per request)."""
    target = Path(request.app.state.out) / name
    await session.fs.write_text(target, "written by the request")
    return target


Written = Annotated[Path, Depends(write)]


def make_app(journal: Journal, out: Path, barrier: asyncio.Barrier | None = None) -> FastAPI:
    """An app whose endpoints write ``out / name`` through the request's session."""
    app = FastAPI()
    app.state.journal = journal
    app.state.out = str(out)

    @app.post("/ok/{name}")
    async def ok(session: RequestSession, written: Written) -> dict[str, str]:
        assert written.exists()
        return {"session": session.session_id, "current": current_session().session_id}

    @app.post("/boom/{name}")
    async def boom(written: Written) -> None:
        raise Boom("the endpoint failed")

    @app.post("/http-error/{name}")
    async def http_error(written: Written, status: int) -> None:
        raise HTTPException(status, detail="said the endpoint")

    @app.post("/validated/{name}")
    async def validated(written: Written, count: int) -> dict[str, int]:
        return {"count": count}

    @app.post("/returns-500/{name}")
    async def returns_500(written: Written) -> PlainTextResponse:
        return PlainTextResponse("something broke", status_code=500)

    @app.post("/together/{name}")
    async def together(session: RequestSession, written: Written, fail: bool = False) -> str:
        assert barrier is not None
        async with asyncio.timeout(10):
            await barrier.wait()  # every request is in flight at once
        if fail:
            raise Boom("one of them fails")
        assert current_session() is session
        return session.session_id

    @app.get("/sync")
    def sync(session: RequestSession) -> dict[str, bool]:
        return {"current": current_session() is session}

    return app


def getter_app(source: JournalSource, out: Path) -> FastAPI:
    """An app whose one endpoint gets its session from ``journal_session(source)``."""
    app = FastAPI()
    dependency = journal_session(source)

    # A default, not an alias: a local alias would be a string annotation (postponed
    # evaluation) that FastAPI could not resolve.
    @app.post("/ok/{name}")
    async def ok(
        name: str,
        session: Session = Depends(dependency, scope="function"),  # noqa: B008
    ) -> str:
        await session.fs.write_text(out / name, "written by the request")
        return session.session_id

    return app


def client(app: ASGIApp, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


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


async def test_success_keeps_the_file_and_completes(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """A 200 keeps the request's effects and completes its session, whose context is set."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        response = await http.post("/ok/a.txt")
        assert response.status_code == 200
        assert (tmp_path / "a.txt").read_text() == "written by the request"
        record = await assert_completed(journal)
        assert record.context == {"method": "POST", "path": "/ok/a.txt"}
        await assert_no_session_running(journal)


async def test_session_is_injected_shared_and_current(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """The endpoint, a sub-dependency and current_session() all see the one session."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        body = (await http.post("/ok/a.txt")).json()
        record = await newest_session(journal)
        assert body == {"session": record.session_id, "current": record.session_id}
        assert len(await journal.list_sessions()) == 1
        assert (await http.get("/sync")).json() == {"current": True}  # a def endpoint too
    with pytest.raises(LookupError):
        current_session()  # reset once the request is over


async def test_raised_exception_rolls_back_and_answers_500(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """An exception from the endpoint undoes the file, and the client gets a 500."""
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
    """After the undo, the endpoint's own exception still reaches the server."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        with pytest.raises(Boom, match="the endpoint failed"):
            await http.post("/boom/a.txt")
        await assert_rolled_back(journal)


@pytest.mark.parametrize(("path", "status"), [("/boom/a.txt", 500), ("/ok/a.txt", 200)])
async def test_session_has_ended_when_the_response_starts(
    retract_journal: Journal, tmp_path: Path, path: str, status: int
) -> None:
    """Function scope: the undo (or completion) is over before the response goes out."""
    seen: list[tuple[int, bool, SessionStatus]] = []
    app = make_app(retract_journal, tmp_path)
    async with retract_journal as journal:
        watched = watch_response_start(app, tmp_path / "a.txt", journal, seen)
        async with client(watched, raise_app_exceptions=False) as http:
            assert (await http.post(path)).status_code == status
    expected = (
        (500, False, SessionStatus.ROLLED_BACK)
        if status == 500
        else (200, True, SessionStatus.COMPLETED)
    )
    assert seen == [expected]


async def test_http_exception_503_rolls_back_before_answering(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """An HTTPException(503) is a failure: undone, then the 503 is sent."""
    seen: list[tuple[int, bool, SessionStatus]] = []
    app = make_app(retract_journal, tmp_path)
    async with retract_journal as journal:
        watched = watch_response_start(app, tmp_path / "a.txt", journal, seen)
        async with client(watched) as http:
            response = await http.post("/http-error/a.txt", params={"status": 503})
        assert response.status_code == 503
        assert response.json() == {"detail": "said the endpoint"}
        assert seen == [(503, False, SessionStatus.ROLLED_BACK)]
        record = await assert_rolled_back(journal)
        assert record.error == "HTTPException: 503: said the endpoint"


@pytest.mark.parametrize("status", [404, 409])
async def test_http_exception_below_500_keeps_the_effects(
    retract_journal: Journal, tmp_path: Path, status: int
) -> None:
    """An HTTPException below 500 is a client error: the session completes, effects kept."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        response = await http.post("/http-error/a.txt", params={"status": status})
        assert response.status_code == status
        assert response.json() == {"detail": "said the endpoint"}
        assert (tmp_path / "a.txt").exists()
        await assert_completed(journal)


async def test_validation_error_completes_the_session(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """A 422 (a bad parameter) is a client error too: the session completes, not fails."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        response = await http.post("/validated/a.txt", params={"count": "many"})
        assert response.status_code == 422
        await assert_completed(journal)


async def test_returned_500_is_not_seen_by_the_dependency(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """The documented limit: a 5xx returned without raising completes the session."""
    async with retract_journal as journal, client(make_app(journal, tmp_path)) as http:
        response = await http.post("/returns-500/a.txt")
        assert response.status_code == 500
        assert (tmp_path / "a.txt").exists()
        await assert_completed(journal)


@pytest.mark.parametrize("style", ["journal", "request", "no-argument", "async"])
async def test_journal_sources(retract_journal: Journal, tmp_path: Path, style: str) -> None:
    """The journal may be given, or come from a function of the request, of nothing, or async."""

    async def coroutine(request: Request) -> Journal:
        journal: Journal = request.app.state.journal
        return journal

    sources: dict[str, JournalSource] = {
        "journal": retract_journal,
        "request": lambda request: request.app.state.journal,
        "no-argument": lambda: retract_journal,
        "async": coroutine,
    }
    app = getter_app(sources[style], tmp_path)
    app.state.journal = retract_journal
    async with retract_journal as journal, client(app) as http:
        response = await http.post("/ok/a.txt")
        assert response.status_code == 200
        await assert_completed(journal, response.json())
        assert (tmp_path / "a.txt").exists()


async def test_getter_returning_something_else_fails(tmp_path: Path) -> None:
    """A getter that returns no Journal is a TypeError, not a silent pass."""
    app = getter_app(lambda: "journal.db", tmp_path)  # type: ignore[arg-type]
    async with client(app) as http:
        with pytest.raises(TypeError, match=r"returned 'journal\.db', not a Journal"):
            await http.post("/ok/a.txt")


def test_journal_must_be_a_journal_or_callable() -> None:
    """Anything but a Journal or a callable is refused when the dependency is made."""
    with pytest.raises(TypeError, match="needs a Journal or a function"):
        journal_session("journal.db")  # type: ignore[arg-type]


async def test_concurrent_requests_get_separate_sessions(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """Requests in flight together each get their own session; one failing undoes only its own."""
    count = 4
    app = make_app(retract_journal, tmp_path, barrier=asyncio.Barrier(count))
    async with retract_journal as journal, client(app, raise_app_exceptions=False) as http:
        responses = await asyncio.gather(
            *(http.post(f"/together/{i}.txt", params={"fail": i == 0}) for i in range(count))
        )
        assert [r.status_code for r in responses] == [500, 200, 200, 200]
        ids = [r.json() for r in responses[1:]]
        assert len(set(ids)) == 3
        for session_id in ids:
            await assert_completed(journal, session_id)
        sessions = await journal.list_sessions()
        assert len(sessions) == count
        (failed,) = [s for s in sessions if s.session_id not in ids]
        await assert_rolled_back(journal, failed.session_id)
        assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["1.txt", "2.txt", "3.txt"]


def test_importing_retract_imports_no_framework() -> None:
    """Importing retract, its integrations package or its plugin loads no web framework."""
    code = (
        "import sys, retract, retract.integrations, retract.testing\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


# Module level: FastAPI resolves these (string) annotations in this module's namespace.
_TWO_SCOPES = journal_session(app_journal)
FunctionScoped = Annotated[Session, Depends(_TWO_SCOPES, scope="function")]
RequestScoped = Annotated[Session, Depends(_TWO_SCOPES)]


async def _request_scoped_id(session: RequestScoped) -> str:
    return session.session_id


async def test_one_dependency_with_two_scopes_is_refused(retract_journal: Journal) -> None:
    """Used with scope="function" and the default scope, it refuses a second session."""
    app = FastAPI()

    @app.get("/x")
    async def endpoint(a: FunctionScoped, b: Annotated[str, Depends(_request_scoped_id)]) -> str:
        return "ok"

    async with retract_journal as journal:
        app.state.journal = journal
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/x")
        assert response.status_code == 500
        sessions = await journal.list_sessions()
        assert len(sessions) == 1  # the first was opened; the second never was
        assert sessions[0].status is SessionStatus.ROLLED_BACK


async def test_a_reversible_function_can_be_an_endpoint(retract_journal: Journal) -> None:
    """@reversible shows the body's signature without the session, as FastAPI reads it."""
    from retract import reversible  # noqa: PLC0415

    holder: dict[str, Journal] = {}
    app = FastAPI()

    @app.get("/square/{n}")
    @reversible(lambda: holder["journal"])
    async def square(session: Session, n: int) -> int:
        return n * n

    async with retract_journal as journal:
        holder["journal"] = journal
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/square/7")
        assert response.json() == 49
        await assert_completed(journal)
