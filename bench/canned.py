"""The HTTP ceiling: the edge's uvicorn stack (:func:`ingest.process.http_server`)
answering every request with a canned 202, doing nothing else.

``python -m bench.canned --status-file PATH``: listens on a free loopback port
and writes the same status file an ``ingest`` process writes, so
:func:`ingest.launch.launch` starts it as it starts the edge. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench.write import EVENTS_PER_BODY
from ingest.launch import Status, write_status
from ingest.process import http_server

DRAIN_TIMEOUT_S = 1.0

CANNED = orjson.dumps(
    {
        "Results": {
            "e": {
                "EndpointItemResponse": {"StatusCode": 202, "Message": "Accepted"},
                "EventsItemResponse": {},
            }
        }
    }
).replace(
    b'"EventsItemResponse":{}',
    b'"EventsItemResponse":{' + b'"x":"Accepted",' * EVENTS_PER_BODY + b'"y":1}',
)


async def canned_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the whole body, answer 202 with Accepted counts matching the
    events sent (200 to /readyz, for the launcher)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    ready = scope["path"] == "/readyz"
    await send(
        {
            "type": "http.response.start",
            "status": 200 if ready else 202,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}" if ready else CANNED})


async def serve(status_file: Path) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    async with http_server(canned_app, host="127.0.0.1", port=0, drain_timeout_s=DRAIN_TIMEOUT_S) as port:
        write_status(status_file, Status(os.getpid(), f"127.0.0.1:{port}"))
        await stopping.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.canned", description=__doc__.split("\n\n")[0])
    parser.add_argument("--status-file", type=Path, required=True)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.status_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
