"""S3Exporter against moto's S3 server on loopback: objects per batch, keys, errors, clients."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from retract import TrackedDict, TrackedList
from retract.export._base import ExportError, RetryableExportError
from retract.export._s3 import S3Exporter

aiobotocore_session = pytest.importorskip(
    "aiobotocore.session", reason="S3Exporter needs aiobotocore (the s3 extra)"
)
botocore_exceptions = pytest.importorskip("botocore.exceptions")

#: Seconds a moto server may take to start before the module is skipped.
START_TIMEOUT = 10.0
#: A guard against a hang (a failure, not a timing assertion).
HANG_GUARD = 30.0


# -- the server, the credentials, the clients --------------------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """The URL of moto's S3, in SERVER mode on a free port of 127.0.0.1."""
    try:
        from moto.server import ThreadedMotoServer  # noqa: PLC0415
    except ImportError as error:
        pytest.skip(f"moto[server] is not installed, so no S3 server to test against: {error}")
    try:  # a loopback socket at all? (moto's thread would hang start() if binding failed)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
    except OSError as error:
        pytest.skip(f"cannot bind a socket on 127.0.0.1 for moto's S3 server: {error}")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    starter = threading.Thread(target=server.start, daemon=True)
    starter.start()
    starter.join(START_TIMEOUT)
    if starter.is_alive():
        pytest.skip(f"moto's S3 server did not start within {START_TIMEOUT} s on 127.0.0.1")
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials and region; no AWS configuration of the machine is read."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def session() -> Any:
    """One aiobotocore session for the module (it caches botocore's service models)."""
    return aiobotocore_session.get_session()


@pytest.fixture
async def s3(endpoint: str, session: Any) -> AsyncIterator[Any]:
    """The test's own S3 client, to create buckets and read objects back."""
    async with session.create_client("s3", endpoint_url=endpoint) as client:
        yield client


@pytest.fixture
async def bucket(s3: Any) -> str:
    """A new, empty bucket (moto's state lives as long as the server)."""
    name = f"retract-{uuid4().hex[:12]}"
    await s3.create_bucket(Bucket=name)
    return name


async def read_objects(s3: Any, bucket: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """Every object of ``bucket``, by key, as its key and its parsed JSON lines."""
    listing = await s3.list_objects_v2(Bucket=bucket)
    objects = []
    for entry in listing.get("Contents", []):
        response = await s3.get_object(Bucket=bucket, Key=entry["Key"])
        async with response["Body"] as stream:
            text = (await stream.read()).decode()
        assert text.endswith("\n")
        objects.append((entry["Key"], [json.loads(line) for line in text.splitlines()]))
    return objects


def record(seq: int, source: str = "direct") -> dict[str, Any]:
    """A change record as the exporter's task makes them."""
    return {
        "source": source,
        "seq": seq,
        "path": [seq],
        "action": "set",
        "old": None,
        "new": seq,
        "actor": None,
        "timestamp": 0.0,
        "kind": "dict",
    }


def refused_url() -> tuple[socket.socket, str]:
    """A loopback URL where nothing listens (the port stays bound, so nothing will)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


class CountingSession:
    """An aiobotocore session that counts the clients made from it and closed."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.made: list[dict[str, Any]] = []
        self.closed = 0

    def create_client(self, service: str, **kwargs: Any) -> Any:
        self.made.append({"service": service, **kwargs})
        return CountedClient(self, self.session.create_client(service, **kwargs))


class CountedClient:
    def __init__(self, owner: CountingSession, context: Any) -> None:
        self.owner = owner
        self.context = context

    async def __aenter__(self) -> Any:
        return await self.context.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        self.owner.closed += 1
        return await self.context.__aexit__(*exc)


class FailingClient:
    """A stand-in S3 client whose put_object raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    async def put_object(self, **kwargs: Any) -> None:
        self.calls += 1
        raise self.error


def client_error(code: str, status: int) -> Any:
    return botocore_exceptions.ClientError(
        {
            "Error": {"Code": code, "Message": f"the server said {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutObject",
    )


# -- objects and keys ---------------------------------------------------------------------


async def test_a_batch_becomes_one_object_with_every_record_in_order(
    endpoint: str, s3: Any, bucket: str
) -> None:
    """Changes made together arrive as one JSON Lines object, every record, in order."""
    # no session given: the exporter makes its client from aiobotocore's get_session()
    items: TrackedList[int] = TrackedList()
    async with S3Exporter(bucket, endpoint_url=endpoint, max_delay=5.0) as exporter:
        exporter.attach(items, source="items")
        for i in range(10):
            items.append(i)
    objects = await read_objects(s3, bucket)
    assert len(objects) == 1
    key, records = objects[0]
    assert [r["new"] for r in records] == list(range(10))
    assert [r["seq"] for r in records] == list(range(1, 11))
    assert {r["source"] for r in records} == {"items"}
    assert records[0]["path"] == [0]
    head = await s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "application/x-ndjson"
    assert (exporter.exported, exporter.batches, exporter.failures, exporter.lost) == (10, 1, 0, 0)


@pytest.mark.parametrize("prefix", ["audit/prod/", ""])
async def test_keys_carry_the_prefix_the_source_and_the_seq_range(
    endpoint: str, session: Any, s3: Any, bucket: str, prefix: str
) -> None:
    """Key: {prefix}{source}/{first_seq:012d}-{last_seq:012d}-{8 hex}.jsonl."""
    config: TrackedDict[str, int] = TrackedDict()
    async with S3Exporter(
        bucket, prefix=prefix, endpoint_url=endpoint, session=session
    ) as exporter:
        exporter.attach(config, source="config")
        config["a"] = 1
        config["b"] = 2
        config["c"] = 3
    [(key, records)] = await read_objects(s3, bucket)
    pattern = re.escape(prefix) + r"config/000000000001-000000000003-[0-9a-f]{8}\.jsonl"
    assert re.fullmatch(pattern, key), key
    assert [r["path"] for r in records] == [["a"], ["b"], ["c"]]


async def test_max_batch_splits_the_changes_into_several_objects(
    endpoint: str, session: Any, s3: Any, bucket: str
) -> None:
    """max_batch=3 and 10 changes: 4 objects, each named by its own seq range."""
    items: TrackedList[int] = TrackedList()
    async with S3Exporter(bucket, endpoint_url=endpoint, session=session, max_batch=3) as exporter:
        exporter.attach(items, source="items")
        for i in range(10):
            items.append(i)
    objects = await read_objects(s3, bucket)
    assert [len(records) for _, records in objects] == [3, 3, 3, 1]
    assert [r["new"] for _, records in objects for r in records] == list(range(10))
    for key, records in objects:
        first, last = records[0]["seq"], records[-1]["seq"]
        assert key.startswith(f"retract/items/{first:012d}-{last:012d}-"), key
    assert (exporter.exported, exporter.batches) == (10, 4)


async def test_two_trees_share_one_client_made_lazily_and_closed_by_aclose(
    endpoint: str, s3: Any, bucket: str, session: Any
) -> None:
    """The exporter's client is made on the first batch, once for all trees, closed by aclose."""
    counting = CountingSession(session)
    left: TrackedList[int] = TrackedList()
    right: TrackedList[int] = TrackedList()
    exporter = S3Exporter(bucket, endpoint_url=endpoint, region_name="eu-west-1", session=counting)
    exporter.attach(left, source="left")
    exporter.attach(right, source="right")
    await asyncio.sleep(0.01)
    assert counting.made == []  # nothing to send yet: no client
    left.append(1)
    right.append(2)
    await exporter.aclose()
    assert len(counting.made) == 1
    assert counting.made[0]["service"] == "s3"
    assert counting.made[0]["endpoint_url"] == endpoint
    assert counting.made[0]["region_name"] == "eu-west-1"
    assert counting.closed == 1
    objects = await read_objects(s3, bucket)
    assert sorted(key.split("/")[1] for key, _ in objects) == ["left", "right"]


async def test_a_client_passed_in_is_used_and_left_open(
    endpoint: str, session: Any, bucket: str
) -> None:
    """The exporter puts with the given client and does not close it."""
    items: TrackedList[int] = TrackedList()
    async with session.create_client("s3", endpoint_url=endpoint) as client:
        async with S3Exporter(bucket, client=client, prefix="mine/") as exporter:
            exporter.attach(items, source="items")
            items.append(1)
        assert exporter.exported == 1
        listing = await client.list_objects_v2(Bucket=bucket)  # still open
        assert [entry["Key"][:11] for entry in listing["Contents"]] == ["mine/items/"]


# -- errors ---------------------------------------------------------------------------------


async def test_a_missing_bucket_drops_the_batch_without_retrying(
    endpoint: str, session: Any
) -> None:
    """NoSuchBucket: a single try (no retry), and the batch is counted lost."""
    missing = f"retract-missing-{uuid4().hex[:8]}"
    items: TrackedList[int] = TrackedList()
    async with S3Exporter(
        missing, endpoint_url=endpoint, session=session, max_delay=0, retries=3, backoff=0.001
    ) as exporter:
        exporter.attach(items, source="items")
        items.append(1)
    assert (exporter.failures, exporter.lost, exporter.exported) == (1, 1, 0)


async def test_a_missing_bucket_is_an_export_error_naming_the_bucket_and_the_code(
    endpoint: str, session: Any
) -> None:
    """send() raises a plain ExportError (not retryable) with the bucket and NoSuchBucket."""
    missing = f"retract-missing-{uuid4().hex[:8]}"
    exporter = S3Exporter(missing, endpoint_url=endpoint, session=session)
    try:
        with pytest.raises(ExportError, match="NoSuchBucket") as caught:
            await exporter.send([record(1)])
    finally:
        await exporter.aclose()
    assert not isinstance(caught.value, RetryableExportError)
    assert repr(missing) in str(caught.value)
    assert isinstance(caught.value.__cause__, botocore_exceptions.ClientError)


async def test_an_endpoint_where_nothing_listens_is_retried_then_lost(session: Any) -> None:
    """Connection refused: `retries` more tries, then the batch is lost and aclose returns."""
    sock, url = refused_url()
    items: TrackedList[int] = TrackedList()
    with sock:
        exporter = S3Exporter(
            "retract-nowhere",
            endpoint_url=url,
            session=session,
            max_delay=0,
            retries=2,
            backoff=0.001,
        )
        exporter.attach(items, source="items")
        items.append(1)
        async with asyncio.timeout(HANG_GUARD):
            await exporter.aclose()
    assert (exporter.failures, exporter.lost, exporter.exported) == (3, 1, 0)


async def test_a_connection_error_is_retryable_and_chained(session: Any) -> None:
    """send() to a refused port raises RetryableExportError from EndpointConnectionError."""
    sock, url = refused_url()
    with sock:
        exporter = S3Exporter("retract-nowhere", endpoint_url=url, session=session)
        try:
            with pytest.raises(RetryableExportError, match="retract-nowhere") as caught:
                await exporter.send([record(1)])
        finally:
            await exporter.aclose()
    assert isinstance(caught.value.__cause__, botocore_exceptions.EndpointConnectionError)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("SlowDown", 503),
        ("InternalError", 500),
        ("ServiceUnavailable", 503),
        ("RequestTimeout", 400),
        ("Throttling", 400),
        ("TooManyRequestsException", 429),
        ("SomethingNew", 502),
    ],
)
async def test_throttling_and_server_errors_are_retryable(code: str, status: int) -> None:
    """A 5xx or 429 answer, or a throttling/transient code, raises RetryableExportError."""
    client = FailingClient(client_error(code, status))
    exporter = S3Exporter("audit", client=client)
    with pytest.raises(RetryableExportError, match=rf"{code} \(HTTP {status}\)") as caught:
        await exporter.send([record(1)])
    assert "'audit'" in str(caught.value)
    assert caught.value.__cause__ is client.error


@pytest.mark.parametrize(
    ("code", "status"),
    [("NoSuchBucket", 404), ("AccessDenied", 403), ("InvalidBucketName", 400)],
)
async def test_other_client_errors_drop_the_batch(code: str, status: int) -> None:
    """Any other S3 error raises a plain ExportError naming the bucket and the code."""
    client = FailingClient(client_error(code, status))
    exporter = S3Exporter("audit", client=client)
    with pytest.raises(ExportError, match=rf"'audit'.*{code} \(HTTP {status}\)") as caught:
        await exporter.send([record(1)])
    assert not isinstance(caught.value, RetryableExportError)
    assert caught.value.__cause__ is client.error


@pytest.mark.parametrize(
    "error",
    [
        botocore_exceptions.ReadTimeoutError(endpoint_url="http://s3.test"),
        botocore_exceptions.ConnectTimeoutError(endpoint_url="http://s3.test"),
        botocore_exceptions.ConnectionClosedError(endpoint_url="http://s3.test"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_timeouts_and_dropped_connections_are_retryable(error: BaseException) -> None:
    """Timeouts and connections closed or reset raise RetryableExportError."""
    exporter = S3Exporter("audit", client=FailingClient(error))
    with pytest.raises(RetryableExportError, match=type(error).__name__) as caught:
        await exporter.send([record(1)])
    assert caught.value.__cause__ is error


async def test_a_client_passed_in_that_fails_is_retried_then_lost() -> None:
    """Through the exporter's task: a retryable error is tried 1 + retries times."""
    client = FailingClient(client_error("SlowDown", 503))
    items: TrackedList[int] = TrackedList()
    async with S3Exporter("audit", client=client, max_delay=0, retries=2, backoff=0) as exporter:
        exporter.attach(items, source="items")
        items.append(1)
    assert client.calls == 3
    assert (exporter.failures, exporter.lost) == (3, 1)


# -- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("bucket", ["", None, 3, b"audit"])
def test_a_bad_bucket_is_a_value_error(bucket: Any) -> None:
    """The bucket must be a non-empty str."""
    with pytest.raises(ValueError, match="bucket must be a non-empty str"):
        S3Exporter(bucket)


@pytest.mark.parametrize("prefix", [None, 3, b"retract/"])
def test_a_bad_prefix_is_a_value_error(prefix: Any) -> None:
    """The prefix must be a str (an empty one is fine)."""
    with pytest.raises(ValueError, match="prefix must be a str"):
        S3Exporter("audit", prefix=prefix)


def test_exporter_options_are_checked_too() -> None:
    """Batching and retry options go to Exporter, which checks them."""
    exporter = S3Exporter("audit", max_batch=7, retries=1)
    assert (exporter.max_batch, exporter.retries) == (7, 1)
    with pytest.raises(ValueError, match="max_batch"):
        S3Exporter("audit", max_batch=0)


def test_without_aiobotocore_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No aiobotocore: ImportError naming the s3 extra."""
    monkeypatch.setitem(sys.modules, "aiobotocore", None)
    monkeypatch.setitem(sys.modules, "aiobotocore.session", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'retract[s3]'")):
        S3Exporter("audit")


def test_a_retried_batch_keeps_its_object_key() -> None:
    """Each try of one batch puts the same key: a put that landed is overwritten."""
    exporter = S3Exporter("bucket", prefix="p/")
    batch = [{"source": "cfg", "seq": 4}, {"source": "cfg", "seq": 9}]
    first = exporter._key_for(batch)
    assert exporter._key_for(batch) == first
    assert first.startswith("p/cfg/000000000004-000000000009-")
    assert S3Exporter("bucket", prefix="p/")._key_for(batch) != first  # one token each
