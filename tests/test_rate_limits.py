"""Rate limits: per app (events/s) and per client address (requests/s), token
buckets answering 429 TooManyRequestsException with Retry-After; the client
address from the socket, or from X-Forwarded-For behind trusted proxies."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError

from ingest.api.limits import ClientAddress, TokenBuckets
from ingest.errors import SettingsError
from ingest.settings import Settings
from tests.conftest import Pipeline, eventually, start_pipeline
from tests.test_api import event

# --- the buckets -----------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    buckets = TokenBuckets(rate_per_s=10, burst=10, max_keys=100)
    assert all(buckets.take("a", 0.0) for _ in range(10))
    assert not buckets.take("a", 0.0)
    assert buckets.retry_after_s("a", 0.0) == 1
    assert buckets.take("a", 0.1)  # one token back after 0.1 s
    assert not buckets.take("a", 0.1)
    assert buckets.take("b", 0.1)  # another key, its own bucket


def test_a_charge_goes_into_debt_and_refuses_until_repaid() -> None:
    buckets = TokenBuckets(rate_per_s=100, burst=100, max_keys=100)
    assert buckets.holds("app", 0.0)
    buckets.charge("app", 100, 0.0)
    buckets.charge("app", 100, 0.0)  # in debt by 100
    assert not buckets.holds("app", 0.5)
    assert buckets.retry_after_s("app", 0.0) == 2  # 101 tokens at 100/s
    buckets.charge("app", 10_000, 0.0)  # debt is at most one burst
    assert buckets.holds("app", 2.01)


def test_keys_past_the_bound_forget_the_least_recent() -> None:
    buckets = TokenBuckets(rate_per_s=1, burst=1, max_keys=3)
    for key in "abcd":
        assert buckets.take(key, 0.0)
    assert len(buckets._buckets) == 3
    assert buckets.take("a", 0.0)  # forgotten, so full again


# --- who the client is -------------------------------------------------------------

PROXIES = ClientAddress.parse("10.0.0.0/8, 192.0.2.1")


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("198.51.100.7", b"203.0.113.9", "198.51.100.7"),  # not a proxy: the header is ignored
        ("10.1.2.3", None, "10.1.2.3"),
        ("10.1.2.3", b"203.0.113.9", "203.0.113.9"),
        ("10.1.2.3", b"6.6.6.6, 203.0.113.9", "203.0.113.9"),  # the client's own entry is not believed
        ("10.1.2.3", b"203.0.113.9, 10.9.9.9, 192.0.2.1", "203.0.113.9"),  # a chain of proxies
        ("10.1.2.3", b"garbage, 203.0.113.9", "203.0.113.9"),
        ("10.1.2.3", b"203.0.113.9, not-an-address", "10.1.2.3"),  # unreadable hop: the last one read
        ("10.1.2.3", b"10.4.4.4", "10.4.4.4"),  # only proxies: the furthest one
        ("10.1.2.3", b"2001:db8::1", "2001:db8::1"),
    ],
)
def test_the_client_address_behind_trusted_proxies(peer: str, forwarded: bytes | None, client: str) -> None:
    assert PROXIES.of(peer, forwarded) == client


def test_no_trusted_proxies_means_the_socket_address() -> None:
    assert ClientAddress.parse("").of("10.1.2.3", b"203.0.113.9") == "10.1.2.3"


def test_a_bad_trusted_proxy_fails_start_up_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"INGEST_TRUSTED_PROXIES.*'10\.0\.0\.0/33'"):
        Settings.from_env({"INGEST_TRUSTED_PROXIES": "10.0.0.1,10.0.0.0/33"})
    with pytest.raises(SettingsError, match="INGEST_RATE_LIMIT_APP_EVENTS_PER_S"):
        Settings.from_env({"INGEST_RATE_LIMIT_APP_EVENTS_PER_S": "-1"})


# --- against a running `ingest run` --------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Any:
    running = start_pipeline(
        tmp_path_factory.mktemp("limited"),
        INGEST_RATE_LIMIT_APP_EVENTS_PER_S="25",
        INGEST_TRUSTED_PROXIES="127.0.0.1",
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def by_address(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One request per address every 5 s (a bucket of one): the flood below
    outruns the refill however slow the machine."""
    running = start_pipeline(
        tmp_path_factory.mktemp("by-address"),
        INGEST_RATE_LIMIT_ADDRESS_REQUESTS_PER_S="0.2",
        INGEST_TRUSTED_PROXIES="127.0.0.1",
    )
    yield running
    running.stop()


def put_body(events: int, prefix: str) -> bytes:
    batch = {"e": {"Endpoint": {}, "Events": {f"{prefix}-{i}": event() for i in range(events)}}}
    return orjson.dumps({"BatchItem": batch})


def test_an_apps_events_past_its_rate_get_429_with_retry_after_and_other_apps_go_on(
    limited: Pipeline,
) -> None:
    client = limited.client()
    busy = client.create_app(CreateApplicationRequest={"Name": "busy"})["ApplicationResponse"]["Id"]
    calm = client.create_app(CreateApplicationRequest={"Name": "calm"})["ApplicationResponse"]["Id"]
    # At 25 events/s an app's bucket holds its floor of 100 events (one full
    # PutEvents): 99 leave 1, so the next 100 are taken too and charged 99
    # into debt, which takes 4 s to repay: the refusals below hold however
    # loaded the machine (at 150 events/s the debt lasted a third of a
    # second, which a busy CI run outlasted before boto3's request).
    for n, events in enumerate((99, 100)):
        status, _, _ = limited.request("POST", f"/v1/apps/{busy}/events", put_body(events, f"a{n}"))
        assert status == 202
    status, headers, body = limited.request("POST", f"/v1/apps/{busy}/events", put_body(1, "b"))
    assert status == 429, body
    assert headers["x-amzn-errortype"] == "TooManyRequestsException"
    assert int(headers["retry-after"]) >= 1
    assert b"app's events" in body
    assert limited.request("POST", f"/v1/apps/{calm}/events", put_body(100, "c"))[0] == 202
    # boto3 reads it as the throttling error it retries.
    with pytest.raises(ClientError) as caught:
        client.put_events(
            ApplicationId=busy,
            EventsRequest={"BatchItem": {"e": {"Endpoint": {}, "Events": {"x": event()}}}},
        )
    assert caught.value.response["Error"]["Code"] == "TooManyRequestsException"
    # The debt repaid at 25 events/s: refused requests charge nothing, so
    # asking again until it is accepted waits exactly that long.
    eventually(
        lambda: limited.request("POST", f"/v1/apps/{busy}/events", put_body(1, "d"))[0],
        lambda status: status == 202,
        "the app's bucket to refill",
        within_s=10,
    )


def test_an_address_past_its_rate_gets_429_and_others_behind_the_proxy_go_on(by_address: Pipeline) -> None:
    flooder = {"X-Forwarded-For": "203.0.113.50"}
    answers = [by_address.request("GET", "/v1/apps", headers=flooder) for _ in range(6)]
    assert [status for status, _, _ in answers] == [200] + [429] * 5
    _, headers, _ = answers[-1]
    assert int(headers["retry-after"]) >= 1
    assert headers["x-amzn-errortype"] == "TooManyRequestsException"
    # Another client behind the same proxy has its own bucket.
    assert by_address.request("GET", "/v1/apps", headers={"X-Forwarded-For": "203.0.113.51"})[0] == 200
    # A client's own X-Forwarded-For entry (left of the proxy's) is not believed.
    spoofed = {"X-Forwarded-For": "198.51.100.1, 203.0.113.50"}
    assert by_address.request("GET", "/v1/apps", headers=spoofed)[0] == 429
