"""Stream a tracked config's changes to a JSON Lines file and a local HTTP endpoint.

Two exporters are attached to one ``TrackedDict``. The writes only queue their
changes; each exporter's own task batches them and ships them: appended to
``changes.jsonl``, and POSTed as JSON to a small HTTP server this script starts on
127.0.0.1 (the first POST is answered with a 503, so the batch is retried). Leaving the
``async with`` block flushes both. Needs the ``http`` extra (httpx).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from retract import TrackedDict, tracking_actor
from retract.export import HttpExporter, JsonLinesExporter

received: list[dict[str, Any]] = []


class Collector(BaseHTTPRequestHandler):
    """Answers the first POST with a 503, then keeps each batch it is sent."""

    refused = False

    def do_POST(self) -> None:
        """Refuse the first batch with a 503, keep the others."""
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not Collector.refused:
            Collector.refused = True
            self.send_response(503)  # "try again later": the exporter backs off
        else:
            received.append(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        """Say nothing per request."""


@contextmanager
def local_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/changes"
    finally:
        server.shutdown()
        server.server_close()


async def main(folder: Path) -> None:
    config: TrackedDict[str, Any] = TrackedDict({"mode": "debug", "workers": 2})
    lines = folder / "changes.jsonl"
    with local_server() as url:
        async with (
            JsonLinesExporter(lines, max_delay=0.05) as to_file,
            HttpExporter(url, max_delay=0.05, backoff=0.05) as to_http,
        ):
            to_file.attach(config, source="config")
            to_http.attach(config, source="config")
            with tracking_actor("deployer"):
                config["mode"] = "release"
                config["workers"] = 8
            with tracking_actor("operator"):
                config["limits"] = {"cpu": 2}
                del config["workers"]
        # both flushed here
        print(f"file: {to_file.exported} changes, {to_file.batches} batch(es)")
        print(
            f"http: {to_http.exported} changes, {to_http.batches} batch(es), "
            f"{to_http.failures} retried try"
        )
    for line in lines.read_text().splitlines():
        record = json.loads(line)
        print(
            f"  #{record['seq']} {record['actor']}: {record['action']} {record['path']}"
            f" -> {record['new']}"
        )
    posted = [change["seq"] for batch in received for change in batch["changes"]]
    print(f"the endpoint got seq {posted}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
