"""HttpExporter against a real HTTP server on loopback: batches, statuses, retries, clients."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from retract import TrackedDict, tracking_actor
from retract.export._base import ExportError, RetryableExportError
from retract.export._http import HttpExporter

#: Answer code of the test server that means "hold the answer until the test ends".
HANG = 0


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Server:
    """A loopback HTTP server that records requests and answers with queued statuses."""

    port: int
    requests: list[Request] = field(default_factory=list)
    statuses: deque[int] = field(default_factory=deque)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/changes") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self) -> list[Any]:
        with self.lock:
            return [request.body for request in self.requests]

    def batches(self) -> list[list[dict[str, Any]]]:
        """The ``changes`` list of each request, in the order they arrived."""
        return [body["changes"] for body in self.bodies()]


def make_handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            with server.lock:
                server.requests.append(
                    Request(
                        "POST",
                        self.path,
                        {name.lower(): value for name, value in self.headers.items()},
                        json.loads(raw.decode("utf-8")),
                    )
                )
                status = server.statuses.popleft() if server.statuses else 200
            if status == HANG:
                server.release.wait(5)
                status = 200
            body = b"" if status in (204, 304) else f"status {status}".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

    return Handler


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to loopback go straight there, whatever proxy the environment names."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def server() -> Iterator[Server]:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread, shut down afterwards."""
    state = Server(port=0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def wait_until(predicate: Callable[[], bool], within: float = 2.0) -> None:
    """Poll ``predicate`` until it holds, else fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, f"still false after {within} s"
        await asyncio.sleep(0.005)


def closed_port() -> int:
    """A loopback port that was just bound and closed: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- delivery ---------------------------------------------------------------------------


async def test_changes_reach_the_server_in_order_with_every_field(server: Server) -> None:
    """Each change arrives once, in order, as a record with every field; counters match."""
    root: TrackedDict[str, Any] = TrackedDict()
    exporter = HttpExporter(server.url(), max_delay=0)
    exporter.attach(root, source="config")
    root["mode"] = "debug"
    with tracking_actor("alice"):
        root["mode"] = "release"
    root["tags"] = {"b", "c", "a"}
    root["point"] = (1, 2)
    del root["mode"]
    await exporter.aclose()

    records = [record for batch in server.batches() for record in batch]
    changes = root.tracking_changes()
    assert len(records) == len(changes) == 5
    assert [record["seq"] for record in records] == [change.seq for change in changes]
    for record, change in zip(records, changes, strict=True):
        assert set(record) == {
            "source", "seq", "path", "action", "old", "new", "actor", "timestamp", "kind"
        }  # fmt: skip
        assert record["source"] == "config"
        assert record["path"] == list(change.path)
        assert record["action"] == change.action
        assert record["actor"] == change.actor
        assert record["timestamp"] == change.timestamp
        assert record["kind"] == "dict"
    assert [(r["action"], r["old"], r["new"]) for r in records] == [
        ("add", None, "debug"),
        ("replace", "debug", "release"),
        ("add", None, ["a", "b", "c"]),
        ("add", None, [1, 2]),
        ("remove", "release", None),
    ]
    assert records[0]["path"] == ["mode"]
    assert [record["actor"] for record in records] == [None, "alice", None, None, None]
    assert exporter.exported == 5
    assert exporter.batches == len(server.requests)
    assert (exporter.failures, exporter.lost) == (0, 0)


async def test_requests_are_json_posts_to_the_url(server: Server) -> None:
    """Each batch is one POST to the url's path, a JSON object with a ``changes`` list."""
    root: TrackedDict[str, int] = TrackedDict()
    async with HttpExporter(server.url("/v1/ingest?team=a")) as exporter:
        exporter.attach(root)
        root["a"] = 1
    [request] = server.requests
    assert request.method == "POST"
    assert request.path == "/v1/ingest?team=a"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {"changes": [request.body["changes"][0]]}
    assert request.body["changes"][0]["source"] == "tree-1"


async def test_max_batch_splits_batches(server: Server) -> None:
    """At most max_batch changes go in one POST; the rest follow in order."""
    root: TrackedDict[str, int] = TrackedDict()
    exporter = HttpExporter(server.url(), max_batch=3, max_delay=5.0)
    exporter.attach(root)
    for i in range(7):
        root[f"k{i}"] = i
    await exporter.aclose()
    batches = server.batches()
    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert [record["new"] for batch in batches for record in batch] == list(range(7))
    assert (exporter.exported, exporter.batches) == (7, 3)


async def test_max_delay_groups_changes_made_close_together(server: Server) -> None:
    """Changes made within max_delay of the first one, in later loop turns, share a POST."""
    root: TrackedDict[str, int] = TrackedDict()
    exporter = HttpExporter(server.url(), max_delay=0.2)
    subscription = exporter.attach(root)
    root["a"] = 1
    await wait_until(lambda: subscription.qsize() == 0)  # the exporter took it and waits
    root["b"] = 2
    await asyncio.sleep(0)
    root["c"] = 3
    await wait_until(lambda: exporter.batches == 1)
    root["d"] = 4
    await exporter.aclose()
    assert [[record["new"] for record in batch] for batch in server.batches()] == [[1, 2, 3], [4]]


async def test_aclose_flushes_changes_made_just_before(server: Server) -> None:
    """Changes made right before aclose() are all sent, without waiting out max_delay."""
    root: TrackedDict[str, int] = TrackedDict()
    exporter = HttpExporter(server.url(), max_delay=30.0)
    exporter.attach(root)
    for i in range(4):
        root[f"k{i}"] = i
    async with asyncio.timeout(5):  # a guard against a hang, not a measurement
        await exporter.aclose()
    assert [record["new"] for batch in server.batches() for record in batch] == [0, 1, 2, 3]
    assert exporter.exported == 4


# -- statuses and retries -----------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 500, 429])
async def test_retryable_status_is_retried_and_delivered_once(server: Server, status: int) -> None:
    """A 5xx or 429 then a 200: the batch is sent again and counted delivered once."""
    server.statuses.append(status)
    root: TrackedDict[str, int] = TrackedDict()
    exporter = HttpExporter(server.url(), retries=3, backoff=0.01)
    exporter.attach(root)
    root["a"] = 1
    root["b"] = 2
    await exporter.aclose()
    bodies = server.bodies()
    assert len(bodies) == 2
    assert bodies[0] == bodies[1]
    assert [record["new"] for record in bodies[1]["changes"]] == [1, 2]
    assert (exporter.exported, exporter.batches) == (2, 1)
    assert (exporter.failures, exporter.lost) == (1, 0)


async def test_client_error_drops_the_batch_without_retry(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A 400 is tried once, the batch counted in lost; later batches still go through."""
    server.statuses.append(400)
    root: TrackedDict[str, int] = TrackedDict()
    exporter = HttpExporter(server.url(), retries=3, backoff=0.01, max_delay=0)
    exporter.attach(root)
    with caplog.at_level(logging.ERROR, logger="retract"):
        root["a"] = 1
        await wait_until(lambda: exporter.lost == 1)
        root["b"] = 2
        await exporter.aclose()
    assert [[record["new"] for record in batch] for batch in server.batches()] == [[1], [2]]
    assert (exporter.exported, exporter.batches) == (1, 1)
    assert (exporter.failures, exporter.lost) == (1, 1)
    [error] = [record.exc_info[1] for record in caplog.records if record.exc_info]
    assert type(error) is ExportError
    assert "400" in str(error)
    assert server.url() in str(error)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_send_accepts_any_2xx(server: Server, status: int) -> None:
    """Every 2xx answer means delivered."""
    server.statuses.append(status)
    async with HttpExporter(server.url()) as exporter:
        await exporter.send([{"seq": 1}])
    assert server.bodies() == [{"changes": [{"seq": 1}]}]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
async def test_send_raises_retryable_on_5xx_and_429(server: Server, status: int) -> None:
    """A 5xx or 429 raises RetryableExportError naming the status and the url."""
    server.statuses.append(status)
    async with HttpExporter(server.url()) as exporter:
        with pytest.raises(RetryableExportError) as info:
            await exporter.send([{"seq": 1}])
    assert str(status) in str(info.value)
    assert server.url() in str(info.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 301, 302, 307])
async def test_send_raises_export_error_on_other_statuses(server: Server, status: int) -> None:
    """A 4xx (but 429) or a redirect raises a plain ExportError: the batch is not retried."""
    server.statuses.append(status)
    async with HttpExporter(server.url()) as exporter:
        with pytest.raises(ExportError) as info:
            await exporter.send([{"seq": 1}])
    assert not isinstance(info.value, RetryableExportError)
    assert str(status) in str(info.value)
    assert len(server.requests) == 1


async def test_connection_refused_is_retried_then_lost() -> None:
    """A refused connection is retried ``retries`` times, then the batch counts as lost."""
    root: TrackedDict[str, int] = TrackedDict()
    exporter = HttpExporter(f"http://127.0.0.1:{closed_port()}/", retries=2, backoff=0.01)
    exporter.attach(root)
    root["a"] = 1
    async with asyncio.timeout(5):  # a guard against a hang, not a measurement
        await exporter.aclose()
    assert (exporter.exported, exporter.batches) == (0, 0)
    assert (exporter.failures, exporter.lost) == (3, 1)


async def test_send_chains_the_transport_error() -> None:
    """A connection error becomes a RetryableExportError caused by the httpx error."""
    async with HttpExporter(f"http://127.0.0.1:{closed_port()}/") as exporter:
        with pytest.raises(RetryableExportError) as info:
            await exporter.send([{"seq": 1}])
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_timeout_is_retryable(server: Server) -> None:
    """A server that does not answer within ``timeout`` gives a RetryableExportError."""
    server.statuses.append(HANG)
    async with HttpExporter(server.url(), timeout=0.05) as exporter:
        with pytest.raises(RetryableExportError) as info:
            await exporter.send([{"seq": 1}])
        server.release.set()
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


# -- encoding ------------------------------------------------------------------------------


async def test_values_json_cannot_hold_are_still_sent(server: Server) -> None:
    """Tuple keys are sent as their repr and NaN as null, not refused."""
    async with HttpExporter(server.url()) as exporter:
        await exporter.send([{"seq": 1, "new": {(1, 2): "x"}}, {"seq": 2, "new": float("nan")}])
    assert server.bodies() == [
        {"changes": [{"seq": 1, "new": {"(1, 2)": "x"}}, {"seq": 2, "new": None}]}
    ]


async def test_non_ascii_text_arrives_intact(server: Server) -> None:
    """Text outside ASCII is sent as UTF-8 and decodes to the same string."""
    async with HttpExporter(server.url()) as exporter:
        await exporter.send([{"new": "héllo ☃"}])
    assert server.bodies() == [{"changes": [{"new": "héllo ☃"}]}]


# -- configuration and clients --------------------------------------------------------------


async def test_custom_headers_are_sent(server: Server) -> None:
    """Headers passed in go with every request, next to the JSON content type."""
    headers = {"Authorization": "Bearer s3cret", "X-Trace": "abc"}
    async with HttpExporter(server.url(), headers=headers) as exporter:
        await exporter.send([{"seq": 1}])
        await exporter.send([{"seq": 2}])
    assert len(server.requests) == 2
    for request in server.requests:
        assert request.headers["authorization"] == "Bearer s3cret"
        assert request.headers["x-trace"] == "abc"
        assert request.headers["content-type"] == "application/json"


async def test_content_type_cannot_be_overridden(server: Server) -> None:
    """The body is JSON, so a Content-Type header passed in is replaced."""
    async with HttpExporter(server.url(), headers={"content-type": "text/plain"}) as exporter:
        await exporter.send([{"seq": 1}])
    assert server.requests[0].headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "example.com/changes", "localhost:8080", "", "http://"]
)
def test_bad_url_is_a_value_error(url: str) -> None:
    """A url that is not http:// or https:// is refused when the exporter is made."""
    with pytest.raises(ValueError, match="http:// or https://"):
        HttpExporter(url)


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_bad_timeout_is_a_value_error(timeout: float) -> None:
    """A timeout that is not > 0 is refused."""
    with pytest.raises(ValueError, match="timeout"):
        HttpExporter("http://127.0.0.1/", timeout=timeout)


def test_exporter_options_are_passed_on() -> None:
    """The Exporter options given as keywords configure the exporter."""
    exporter = HttpExporter("https://example.com/", max_batch=7, retries=1, overflow="drop_newest")
    assert (exporter.max_batch, exporter.retries, exporter.overflow) == (7, 1, "drop_newest")
    with pytest.raises(ValueError, match="max_batch"):
        HttpExporter("https://example.com/", max_batch=0)


def test_missing_httpx_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without httpx, making an exporter raises ImportError naming the extra."""
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(ImportError, match=r"pip install 'retract\[http\]'"):
        HttpExporter("http://127.0.0.1/")


async def test_client_passed_in_is_used_and_left_open(server: Server) -> None:
    """A client of your own sends the batches and is still open after aclose()."""
    async with httpx.AsyncClient(headers={"X-From-Client": "yes"}) as client:
        root: TrackedDict[str, int] = TrackedDict()
        exporter = HttpExporter(server.url(), client=client)
        exporter.attach(root)
        root["a"] = 1
        await exporter.aclose()
        assert not client.is_closed
        response = await client.post(server.url(), json={"changes": []})
        assert response.status_code == 200
    assert server.requests[0].headers["x-from-client"] == "yes"
    assert server.batches()[0][0]["new"] == 1


async def test_own_client_is_closed_by_aclose(server: Server) -> None:
    """The client the exporter made is closed by aclose()."""
    exporter = HttpExporter(server.url())
    made_before = exporter._client is not None  # made at the first send, not before
    await exporter.send([{"seq": 1}])
    client = exporter._client
    assert client is not None
    assert not made_before
    open_before = not client.is_closed
    await exporter.aclose()
    assert (open_before, client.is_closed) == (True, True)
