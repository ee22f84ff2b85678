"""S3Exporter: each batch of changes stored as one JSON Lines object (needs aiobotocore).

aiobotocore is the ``s3`` extra (``pip install 'retract[s3]'``); it is imported when an
:class:`S3Exporter` is made, not when this module is, so the rest of ``retract.export``
works without it. This is the only module that imports aiobotocore or botocore.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Unpack
from uuid import uuid4

from ._base import Exporter, ExporterOptions, ExportError, RetryableExportError
from ._encode import dumps

if TYPE_CHECKING:
    # aiobotocore ships no type information: these names are Any to mypy, kept for the
    # reader of the signatures.
    from aiobotocore.client import AioBaseClient  # type: ignore[import-untyped]
    from aiobotocore.session import AioSession  # type: ignore[import-untyped]


__all__ = ("S3Exporter",)

_MISSING_AIOBOTOCORE = "S3Exporter needs aiobotocore: pip install 'retract[s3]'"

#: Error codes of an S3 answer worth another try (throttling, transient server trouble),
#: whatever its HTTP status; any status >= 500, and 429, is retried too.
_RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
    }
)


class S3Exporter(Exporter):
    """Put each batch into ``bucket`` as one object of JSON Lines (one change a line).

    ::

        async with S3Exporter("audit", prefix="prod/", max_delay=5.0) as exporter:
            exporter.attach(config, source="config")

    Each object is named ``{prefix}{source}/{first_seq}-{last_seq}-{token}.jsonl``
    (the seqs zero-padded to 12 digits, so that a listing sorts in change order; the
    token drawn once per exporter, so that retrying a put that did land overwrites the
    same object instead of storing the batch twice) and
    sent with ``Content-Type: application/x-ndjson``. Nothing is put during the tracked
    write: the exporter's task puts one object per batch.

    A connection error, a timeout, a 5xx or 429 answer, or a throttling or transient
    error code (``SlowDown``, ``RequestTimeout``, ``Throttling``...) raises
    :class:`RetryableExportError`: the batch is tried again, up to ``retries`` more
    times. Any other S3 error (``NoSuchBucket``, ``AccessDenied``...) raises
    :class:`ExportError` naming the bucket and the code, and the batch is dropped and
    counted in :attr:`lost`.

    :param bucket: the bucket to put into; it must exist.
    :param prefix: the start of every key (may be empty; ``"retract/"`` by default).
    :param client: an aiobotocore S3 client (the value of
        ``async with session.create_client("s3") as client``) to put with; its
        credentials, region, endpoint and retry settings apply. It stays open when the
        exporter is closed: closing it is yours. ``endpoint_url``, ``region_name`` and
        ``session`` are then unused.
    :param endpoint_url: without ``client``: the S3 endpoint (MinIO, a test server...).
    :param region_name: without ``client``: the region (else the AWS configuration's).
    :param session: without ``client``: the aiobotocore session to make the client from
        (default: a new ``aiobotocore.session.get_session()``, which reads credentials
        the usual AWS way).
    :param options: the :class:`Exporter` options (``max_batch``, ``max_delay``,
        ``max_buffer``, ``overflow``, ``retries``, ``backoff``, ``max_backoff``).
    :raises ValueError: a ``bucket`` that is not a non-empty str, a ``prefix`` that is
        not a str.
    :raises ImportError: aiobotocore is not installed.

    Without ``client``, the exporter makes its own on the first batch and closes it in
    :meth:`aclose`. That client makes a single attempt per try (botocore's own retries
    are turned off), so that ``retries`` and ``backoff`` are the only retry policy.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "retract/",
        client: AioBaseClient | None = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        session: AioSession | None = None,
        **options: Unpack[ExporterOptions],
    ) -> None:
        bucket_: object = bucket
        prefix_: object = prefix
        if not isinstance(bucket_, str) or not bucket_:
            raise ValueError(f"bucket must be a non-empty str, not {bucket!r}")
        if not isinstance(prefix_, str):
            raise ValueError(f"prefix must be a str (may be empty), not {prefix!r}")
        for name, value in (("endpoint_url", endpoint_url), ("region_name", region_name)):
            given: object = value
            if given is not None and not (isinstance(given, str) and given):
                raise ValueError(f"{name} must be a non-empty str or None, not {value!r}")
        try:
            import aiobotocore.session  # type: ignore[import-untyped]  # noqa: F401, PLC0415
        except ImportError:
            raise ImportError(_MISSING_AIOBOTOCORE) from None
        super().__init__(**options)
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self._session = session
        self._client: AioBaseClient | None = client
        self._stack: AsyncExitStack | None = None
        self._opening = asyncio.Lock()
        #: In every key: a retry of a batch that did land overwrites the same object.
        self._token = uuid4().hex[:8]

    async def send(self, batch: list[dict[str, Any]]) -> None:
        """Put ``batch`` as one JSON Lines object.

        :raises RetryableExportError: a connection error or timeout, a 5xx or 429
            answer, a throttling or transient error code; chained as the cause.
        :raises ExportError: any other S3 or botocore error (the batch is dropped).
        """
        if not batch:
            return
        from botocore.exceptions import (  # type: ignore[import-untyped]  # noqa: PLC0415
            BotoCoreError,
            ClientError,
            HTTPClientError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError  # noqa: PLC0415

        key = self._key_for(batch)
        lines = "".join(dumps(record) + "\n" for record in batch)
        body = lines.encode("utf-8", "backslashreplace")  # a lone surrogate: its JSON escape
        where = f"putting {key!r} into S3 bucket {self.bucket!r}"
        try:
            client = await self._get_client()
            await client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType="application/x-ndjson"
            )
        except (BotoConnectionError, HTTPClientError, OSError) as error:
            raise RetryableExportError(
                f"{where} failed: {type(error).__name__}: {error}"
            ) from error
        except ClientError as error:
            code, status, detail = _describe(error)
            message = f"{where} failed: {code} (HTTP {status})"
            if detail:
                message = f"{message}: {detail}"
            if status >= 500 or status == 429 or code in _RETRYABLE_CODES:
                raise RetryableExportError(message) from error
            raise ExportError(message) from error
        except BotoCoreError as error:
            raise ExportError(f"{where} failed: {type(error).__name__}: {error}") from error

    def _key_for(self, batch: list[dict[str, Any]]) -> str:
        """The object key of ``batch``: the same for each try of it."""
        first, last = batch[0], batch[-1]
        return (
            f"{self.prefix}{first['source']}/"
            f"{first['seq']:012d}-{last['seq']:012d}-{self._token}.jsonl"
        )

    async def close_sink(self) -> None:
        """Close the S3 client if the exporter made it (a client passed in stays open)."""
        if self._stack is not None:
            stack, self._stack = self._stack, None
            self._client = None
            await stack.aclose()

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._opening:  # two attached trees: one client
            if self._client is None:
                from aiobotocore.config import AioConfig  # type: ignore[import-untyped]  # noqa: PLC0415
                from aiobotocore.session import get_session  # noqa: PLC0415

                session = self._session if self._session is not None else get_session()
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(
                    session.create_client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        region_name=self.region_name,
                        config=AioConfig(retries={"total_max_attempts": 1}),
                    )
                )
                self._stack = stack
            return self._client


def _describe(error: Any) -> tuple[str, int, str]:
    """The code, HTTP status and message of a botocore ``ClientError`` ("?", 0, "" if absent)."""
    response = getattr(error, "response", None) or {}
    details = response.get("Error") or {}
    code = str(details.get("Code") or "?")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else 0, str(details.get("Message") or "")
