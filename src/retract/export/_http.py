"""HttpExporter: each batch of changes POSTed as one JSON body (needs httpx).

httpx is the ``http`` extra (``pip install 'retract[http]'``); it is imported when an
:class:`HttpExporter` is made, not when this module is, so the rest of
``retract.export`` works without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Unpack

from ._base import Exporter, ExporterOptions, ExportError, RetryableExportError, _check_positive
from ._encode import dumps

if TYPE_CHECKING:
    import httpx


__all__ = ("HttpExporter",)

_MISSING_HTTPX = "HttpExporter needs httpx: pip install 'retract[http]'"
#: How much of an error response's body an ExportError quotes.
_BODY_EXCERPT = 200


class HttpExporter(Exporter):
    """POST each batch to ``url`` as ``{"changes": [record, ...]}`` (JSON, UTF-8).

    ::

        async with HttpExporter("https://example.com/changes", max_delay=0.5) as exporter:
            exporter.attach(config, source="config")

    A 2xx answer means the batch was delivered. A 5xx, 408 or 429 answer, a connection
    error or a timeout raises :class:`RetryableExportError` (the batch is tried again,
    up to ``retries`` more times); any other status (a 4xx, a 3xx: redirects are not
    followed by the exporter's own client) raises :class:`ExportError` and the batch is
    dropped and counted in :attr:`lost`.

    :param url: where to POST; must start with ``http://`` or ``https://``.
    :param headers: sent with every request (``Authorization``...); ``Content-Type``
        is always ``application/json``.
    :param timeout: seconds allowed for each POST (connect, write, read and waiting
        for a pooled connection each), also with a ``client`` of your own.
    :param client: an ``httpx.AsyncClient`` to send with (its base headers, proxies,
        TLS settings and redirect policy apply). It stays open when the exporter is
        closed: closing it is yours. Without it the exporter makes its own client and
        closes it in :meth:`aclose`.
    :param options: the :class:`Exporter` options (``max_batch``, ``max_delay``,
        ``max_buffer``, ``overflow``, ``retries``, ``backoff``, ``max_backoff``).
    :raises ValueError: a ``url`` that is not http(s), a ``timeout`` that is not > 0.
    :raises ImportError: httpx is not installed.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
        **options: Unpack[ExporterOptions],
    ) -> None:
        _check_url(url)
        _check_positive("timeout", timeout)
        try:
            import httpx  # noqa: PLC0415  (optional: imported only when an exporter is made)
        except ImportError:
            raise ImportError(_MISSING_HTTPX) from None
        super().__init__(**options)
        self.url = url
        self.timeout = timeout
        self._headers: httpx.Headers = httpx.Headers(headers)
        self._headers["Content-Type"] = "application/json"
        self._owns_client = client is None
        # Made at the first send: an exporter never used holds no connection pool.
        self._client: httpx.AsyncClient | None = client

    async def send(self, batch: list[dict[str, Any]]) -> None:
        """POST ``batch`` as one JSON body and check the answer's status.

        :raises RetryableExportError: a 5xx, 408 or 429 answer, or an ``httpx.TransportError``
            (connection refused or reset, a timeout...), chained as the cause.
        :raises ExportError: any other status that is not 2xx (the message quotes the
            start of the answer's body).
        """
        import httpx  # noqa: PLC0415  (the optional extra; already imported by __init__)

        if self._client is None:
            self._client = httpx.AsyncClient()
        try:
            response = await self._client.post(
                self.url,
                content=_encode_body(batch),
                headers=self._headers,
                timeout=self.timeout,
            )
        except httpx.TransportError as error:
            raise RetryableExportError(
                f"POST {self.url} failed: {type(error).__name__}: {error}"
            ) from error
        status = response.status_code
        if 200 <= status < 300:
            return
        message = f"POST {self.url} answered {status} {response.reason_phrase}".rstrip()
        if status >= 500 or status in (408, 429):
            raise RetryableExportError(message)
        excerpt = response.text[:_BODY_EXCERPT].strip()
        raise ExportError(f"{message}: {excerpt}" if excerpt else message)

    async def close_sink(self) -> None:
        """Close the HTTP client if the exporter made it (a client passed in stays open)."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()


def _check_url(url: object) -> None:
    scheme, separator, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    if not separator or scheme.lower() not in ("http", "https") or not rest:
        raise ValueError(f"url must start with http:// or https:// and name a host, not {url!r}")


def _encode_body(batch: list[dict[str, Any]]) -> bytes:
    """``{"changes": batch}`` as compact UTF-8 JSON.

    Each record is written by :func:`~retract.export._encode.dumps` (values JSON cannot
    hold, such as tuple keys or NaN, as ``repr`` keys and null).
    """
    text = '{"changes":[' + ",".join(dumps(record) for record in batch) + "]}"
    return text.encode("utf-8", "backslashreplace")  # a lone surrogate: its JSON escape
