"""The console's session tokens and request checks, without a server: a token
holds only under its own master key, unaltered, within its inactivity and
absolute timeouts, and only while its key is live; a console request must be
the console's own (custom header, same origin); every console file is
served with the Content-Security-Policy."""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from ingest.api.console import BOUND_HEALTH, CSP, Console, check_same_origin
from ingest.api.http import Request, Response
from ingest.api.sessions import COOKIE, SessionRefused, Sessions
from ingest.api.streamhealth import StreamHealth, figures
from ingest.errors import Forbidden, UnrecognizedClient
from ingest.keys import MasterKey
from ingest.metrics import Metrics
from ingest.scopes import Principal
from ingest.supervise import PROBE_TIMEOUT_S

READER = Principal("AKIAREADER", "read", frozenset({"app-1"}), temporary=False)
IDLE_S, MAX_S, T0 = 600, 3600, 1_800_000_000
HOST = b"console.example:8080"


def sessions(master: bytes = b"k" * 32) -> Sessions:
    return Sessions(mac=MasterKey(master).console_mac, idle_s=IDLE_S, max_age_s=MAX_S)


def refused(token: str, at_s: int, by: Sessions | None = None) -> str:
    with pytest.raises(SessionRefused) as caught:
        (by or sessions()).read(token, at_s)
    return caught.value.reason


def test_a_token_reads_back_its_key_scope_and_apps() -> None:
    session = sessions().read(sessions().issue(READER, T0), T0 + 1)
    assert session.principal == READER
    assert (session.issued_s, session.seen_s) == (T0, T0)


def test_a_tampered_token_is_refused() -> None:
    token = sessions().issue(READER, T0)
    body, tag = token.split(".")
    payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    widened = base64.urlsafe_b64encode(orjson.dumps(payload | {"s": "admin", "a": []})).rstrip(b"=").decode()
    assert refused(f"{widened}.{tag}", T0) == "tampered"
    flipped = tag[:-2] + ("AA" if tag[-2:] != "AA" else "BB")
    assert refused(f"{body}.{flipped}", T0) == "tampered"


def test_a_token_of_another_master_key_is_refused() -> None:
    assert refused(sessions(b"o" * 32).issue(READER, T0), T0) == "tampered"


def test_the_console_subkey_signs_nothing_else() -> None:
    master = MasterKey(b"k" * 32)
    assert master.console_mac(b"x") != master.mac(b"x")


@pytest.mark.parametrize("token", ["", "a", "a.b.c", "!!.??", "e30.AAAA", "x" * 50_000])
def test_a_malformed_token_is_refused(token: str) -> None:
    assert refused(token, T0) in {"malformed", "tampered"}


def test_inactivity_ends_a_session_and_use_slides_it() -> None:
    issued = sessions().issue(READER, T0)
    assert refused(issued, T0 + IDLE_S + 1) == "idle"
    # Used just before the timeout: the renewed token lives another IDLE_S.
    renewed = sessions().renew(sessions().read(issued, T0 + IDLE_S - 1), T0 + IDLE_S - 1)
    assert sessions().read(renewed, T0 + 2 * IDLE_S - 2).seen_s == T0 + IDLE_S - 1


def test_a_session_slid_past_its_absolute_lifetime_expires() -> None:
    token = sessions().issue(READER, T0)
    now = T0
    while now + IDLE_S - 1 <= T0 + MAX_S:
        now += IDLE_S - 1
        token = sessions().renew(sessions().read(token, now), now)
    assert refused(token, T0 + MAX_S + 1) == "expired"


def request(method: str = "GET", **headers: bytes) -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    given = {b"host": HOST} | {name.replace("_", "-").encode(): value for name, value in headers.items()}
    return Request(method, {}, {}, given, receive, "r")


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", {}),  # no custom header: what a cross-site <img> or link sends
        ("POST", {"x_ingest_console": b"1"}),  # a non-GET without Origin
        ("POST", {"x_ingest_console": b"1", "origin": b"https://evil.example"}),
        ("GET", {"x_ingest_console": b"1", "origin": b"http://console.example:9999"}),
        ("GET", {"x_ingest_console": b"1", "sec_fetch_site": b"cross-site"}),
        (
            "DELETE",
            {
                "x_ingest_console": b"1",
                "origin": b"http://console.example:8080",
                "sec_fetch_site": b"same-site",
            },
        ),
    ],
)
def test_a_request_not_from_a_console_page_of_this_host_is_refused(
    method: str, headers: dict[str, bytes]
) -> None:
    with pytest.raises(Forbidden):
        check_same_origin(request(method, **headers))


def test_a_same_origin_console_request_passes() -> None:
    check_same_origin(request("GET", x_ingest_console=b"1"))
    check_same_origin(request("POST", x_ingest_console=b"1", origin=b"http://console.example:8080"))


def console(live: Principal | None) -> Console:
    return Console(
        sessions=sessions(), live=lambda _: live, metrics=Metrics(CollectorRegistry()), now_s=lambda: T0 + 5
    )


def with_session(token: str, mode: bytes = b"1") -> Request:
    return request("GET", x_ingest_console=mode, cookie=f"other=1; {COOKIE}={token}".encode())


def test_a_live_keys_session_authenticates_and_a_users_request_renews_it() -> None:
    token = sessions().issue(READER, T0)
    principal, renewed = console(READER).authenticate(with_session(token))
    assert principal == READER
    ((name, value),) = renewed
    assert name == b"set-cookie"
    assert re.fullmatch(
        rf"{COOKIE}=[\w.-]+; Path=/; Max-Age={IDLE_S}; HttpOnly; SameSite=Strict", value.decode()
    )
    # The page's own refresh keeps nothing alive.
    assert console(READER).authenticate(with_session(token, b"refresh"))[1] == ()


def test_a_session_only_reads() -> None:
    token = sessions().issue(Principal("AKIAADMIN", "admin", frozenset(), False), T0)
    admin = Principal("AKIAADMIN", "admin", frozenset(), False)
    deleting = with_session(token)
    deleting.method = "DELETE"
    deleting.headers = dict(deleting.headers) | {b"origin": b"http://" + HOST}
    with pytest.raises(Forbidden, match="only reads"):
        console(admin).authenticate(deleting)


@pytest.mark.parametrize(
    "live",
    [
        None,
        Principal("AKIAREADER", "admin", frozenset({"app-1"}), False),
        Principal("AKIAREADER", "read", frozenset(), False),
    ],
)
def test_a_session_ends_when_its_key_is_revoked_or_changed(live: Principal | None) -> None:
    with pytest.raises(UnrecognizedClient, match="revoked"):
        console(live).authenticate(with_session(sessions().issue(READER, T0)))


def served(files: Console, name: str) -> Response:
    if name.startswith("vendor/"):
        return asyncio.run(files.vendor_asset(request_for({"file": name.removeprefix("vendor/")})))
    return asyncio.run(files.asset(request_for({"file": name})))


def request_for(params: dict[str, str]) -> Request:
    found = request()
    found.params = params
    return found


def test_every_console_file_has_the_csp_and_no_inline_script_or_style() -> None:
    files = console(READER)
    assert b"unsafe-inline" not in CSP and b"script-src 'self'" in CSP and b"default-src 'none'" in CSP
    for name in ("index.html", "main.js", "vendor/uPlot.esm.js", "style.css"):
        assert dict(served(files, name).headers)[b"content-security-policy"] == CSP, name
    index = served(files, "index.html").body.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)", index), "inline script"
    assert not re.search(r"\sstyle=|<style|\son\w+=", index), "inline style or handler"
    assert served(files, "main.js").content_type.startswith(b"text/javascript")


METRICS = """\
# TYPE ingest_stream_lag_records gauge
ingest_stream_lag_records{destination="kinesis",process="worker-streams"} 12.0
# TYPE ingest_stream_failures_total counter
ingest_stream_failures_total{destination="kinesis",reason="throttled",process="worker-streams"} 3.0
ingest_stream_failures_total{destination="kinesis",reason="throttled",process="worker-streams-2"} 1.0
ingest_stream_failures_created{destination="kinesis",reason="throttled",process="worker-streams"} 1.7e9
# TYPE ingest_stream_delivered_records_total counter
ingest_stream_delivered_records_total{destination="firehose",process="worker-streams"} 40.0
# TYPE ingest_events_total counter
ingest_events_total{outcome="accepted",reason=""} 99.0
"""


def test_stream_health_is_the_workers_figures_by_destination_kind() -> None:
    assert figures(METRICS) == {
        "kinesis": {"LagRecords": 12.0, "Failures": {"throttled": 4.0}, "DeadLettered": {}},
        "firehose": {"DeliveredRecords": 40.0, "Failures": {}, "DeadLettered": {}},
    }


def test_stream_health_is_only_for_an_admin_key_of_every_app() -> None:
    """The figures are every app's deliveries together: an admin key bound
    to one app must not read the others' lag and failures through them."""
    health = Console(
        sessions=None, live=None, metrics=Metrics(CollectorRegistry()), health=StreamHealth(None)
    )
    shown = {}
    for principal in (
        Principal("AKIAADMIN", "admin", frozenset(), False),
        Principal("AKIABOUND", "admin", frozenset({"app-1"}), False),
    ):
        asked = request_for({"app": "app-1"})
        asked.principal = principal
        shown[principal.access_key_id] = orjson.loads(asyncio.run(health.stream_health(asked)).body)
    assert "not set" in shown["AKIAADMIN"]["Unavailable"], "every app's admin reads the worker's figures"
    assert shown["AKIABOUND"] == {"Unavailable": BOUND_HEALTH}


def test_stream_health_waits_out_a_scrape_as_slow_as_the_supervisors_of_a_child() -> None:
    """`ingest run`'s /metrics may take its per-child timeout to answer (a
    child slow under load is left out after it); the console still reads it."""
    page = b'ingest_stream_lag_records{destination="kinesis"} 3.0\n'

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(PROBE_TIMEOUT_S + 0.3)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(page)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + page)
        await writer.drain()
        writer.close()

    async def read() -> dict[str, Any]:
        server = await asyncio.start_server(slow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await StreamHealth(f"http://127.0.0.1:{port}/metrics").read()

    answer = asyncio.run(read())
    assert answer["Destinations"]["kinesis"]["LagRecords"] == 3.0, answer


def test_stream_health_without_a_url_or_a_listener_says_so() -> None:
    assert "not set" in asyncio.run(StreamHealth(None).read())["Unavailable"]
    assert (
        "could not be read" in asyncio.run(StreamHealth("http://127.0.0.1:1/metrics").read())["Unavailable"]
    )


@pytest.mark.parametrize(
    ("principal", "signs_in"),
    [
        (Principal("AKIAADMIN", "admin", frozenset(), False), True),
        (Principal("AKIABOUND", "admin", frozenset({"app-1"}), False), True),
        (READER, True),
        (Principal("AKIAINGEST", "ingest", frozenset({"app-1"}), False), False),
        (Principal("ASIATEMP", "ingest", frozenset({"app-1"}), True), False),
    ],
)
def test_read_and_admin_keys_sign_in_and_only_admins_see_stream_health(
    principal: Principal, signs_in: bool
) -> None:
    assert principal.may("ConsoleSignIn", None) is signs_in
    assert principal.may("ConsoleSession", None) is signs_in
    admin_of = principal.scope == "admin"
    assert principal.may("ConsoleStreamHealth", "app-1") is admin_of
    assert principal.may("ConsoleStreamHealth", "app-2") is (admin_of and not principal.apps)
