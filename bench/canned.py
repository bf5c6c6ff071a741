"""The HTTP ceiling: the edge's HTTP server (:func:`ingest.process.http_server`)
answering every request with a canned 202, doing nothing else; or, with
``--stack uvicorn``, uvicorn (httptools, on the same uvloop) answering the
same, the server the edge ran before its own (measured side by side in
``python -m bench --part write``).

``python -m bench.canned --status-file PATH``: listens on a free loopback port
and writes the same status file an ``ingest`` process writes, so
:func:`ingest.launch.launch` starts it as it starts the edge. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
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


@contextlib.asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[int]:
    """uvicorn inside our event loop, as the edge embedded it until its own
    server replaced it; yields the bound port."""
    import uvicorn  # dev extra: only this comparison runs it

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    ticker = asyncio.create_task(server.main_loop())  # keeps the Date header current
    try:
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await ticker
        await server.shutdown()


async def serve(status_file: Path, stack: str) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    server: contextlib.AbstractAsyncContextManager[int]
    if stack == "uvicorn":
        server = uvicorn_server(canned_app)
    else:
        server = http_server(canned_app, host="127.0.0.1", port=0, drain_timeout_s=DRAIN_TIMEOUT_S)
    async with server as port:
        write_status(status_file, Status(os.getpid(), f"127.0.0.1:{port}"))
        await stopping.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.canned", description=__doc__.split("\n\n")[0])
    parser.add_argument("--status-file", type=Path, required=True)
    parser.add_argument("--stack", choices=("ingest", "uvicorn"), default="ingest")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.status_file, args.stack))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
