"""A server that does nothing but answer like the edge: the generator's
ceiling. ``python -m load.null --port 8099 [--processes N]``.

It speaks just enough of the wire contract for the harness to run unchanged:
CreateApp answers 201 with a new ID; UpdateEndpoint 202 "Accepted"; PutEvents
parses the body and answers 202 with ``{"StatusCode": 202, "Message":
"Accepted"}`` for every endpoint and event (no validation, no Kafka); anything
else 404. So what the generator pays per answer (parsing the per-item
results) is the same as against the edge. uvicorn with httptools on uvloop,
as the edge runs; several processes share the port through uvicorn's
workers.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

ACCEPTED = {"StatusCode": 202, "Message": "Accepted"}
_ids = itertools.count(1)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def answer(method: str, path: str, body: bytes) -> tuple[int, bytes]:
    """(status, JSON body) for one request. Pure but for the app counter."""
    parts = path.strip("/").split("/")
    if method == "GET" and parts == ["readyz"]:
        return 200, b"{}"
    if parts[:2] != ["v1", "apps"]:
        return 404, b'{"Message":"Not found"}'
    if method == "POST" and len(parts) == 2:
        app_id = f"{next(_ids):032x}"
        return 201, orjson.dumps({"Id": app_id, "Name": "null", "Arn": f"arn:null:{app_id}", "tags": {}})
    if method == "PUT" and len(parts) == 5 and parts[3] == "endpoints":
        return 202, b'{"Message":"Accepted","RequestID":"null"}'
    if method == "POST" and len(parts) == 4 and parts[3] == "events":
        try:
            batch_item = orjson.loads(body)["BatchItem"]
            results = {
                endpoint_id: {
                    "EndpointItemResponse": ACCEPTED,
                    "EventsItemResponse": dict.fromkeys(item["Events"], ACCEPTED),
                }
                for endpoint_id, item in batch_item.items()
            }
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return 400, b'{"Message":"Bad request"}'
        return 202, orjson.dumps({"Results": results})
    return 404, b'{"Message":"Not found"}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI app: read the whole body, answer."""
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    status, payload = answer(scope["method"], scope["path"], b"".join(chunks))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"x-amzn-requestid", b"null")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.null", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--processes", type=int, default=1, help="server processes sharing the port")
    args = parser.parse_args(argv)
    print(f"null server on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(
        "load.null:app" if args.processes > 1 else app,
        host=args.host,
        port=args.port,
        workers=args.processes if args.processes > 1 else None,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
