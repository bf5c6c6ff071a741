"""The event streams' AWS client layer (ingest/streams/aws.py) against real
protocol implementations on loopback: kinesalite for Kinesis, moto for
Firehose (into its S3) and STS, and FaultyKinesis in front of kinesalite
for the faults a real stream gives. Endpoints come only from
AWS_ENDPOINT_URL_<SERVICE>, as in production; AWS_ENDPOINT_URL points every
other service at a closed loopback port (tests/aws.py: offline_env)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from ingest.errors import DeliveryError
from ingest.kafka.broker import free_port
from ingest.streams import aws as delivery_module
from ingest.streams.aws import (
    FIREHOSE_MAX_RECORD_BYTES,
    KINESIS_MAX_RECORD_BYTES,
    KINESIS_MAX_RECORDS,
    ROLE_REFRESH_AHEAD_S,
    ROLE_SESSION_NAME,
    AwsDelivery,
    RecordFailure,
    check_firehose,
    check_kinesis,
    classify,
    record_results,
    redact,
)
from ingest.streams.destinations import Destination, parse
from tests.aws import MOTO_ACCOUNT, REGION, FaultyKinesis, Kinesalite, MotoServer, first_attempts

ROLE_ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ROLE_ACCOUNT}:role/pinpoint-event-stream"
EXTERNAL_ID = "external-id-0123456789"


def kinesis(name: str, region: str = REGION) -> Destination:
    return parse(f"arn:aws:kinesis:{region}:{MOTO_ACCOUNT}:stream/{name}")


def firehose(name: str, account: str = MOTO_ACCOUNT) -> Destination:
    return parse(f"arn:aws:firehose:{REGION}:{account}:deliverystream/{name}")


async def refusal(call: Awaitable[object]) -> DeliveryError:
    """The DeliveryError ``call`` raises."""
    with pytest.raises(DeliveryError) as failed:
        await call
    return failed.value


def verdict(error: DeliveryError) -> tuple[str, bool, str | None]:
    return error.reason, error.retriable, error.code


async def until(done: Callable[[], bool], what: str, within_s: float = 15.0) -> None:
    """Poll ``done`` (on the loop, which the proxy's threads do not need)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not done():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {within_s:g} s"
        await asyncio.sleep(0.02)  # between polls


@pytest.fixture
def faulty(
    kinesalite: Kinesalite, aws_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultyKinesis]:
    """FaultyKinesis in front of the session's kinesalite, as the Kinesis endpoint."""
    with FaultyKinesis(kinesalite.url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", proxy.url)
        yield proxy


def test_botocore_is_imported_with_the_first_client_not_with_the_worker() -> None:
    """A streams or jobs worker with no AWS destination never loads
    botocore's session and config (0.09 CPU-s and 7 MB a start);
    the first client made loads them. In a fresh interpreter: this one has
    botocore loaded already."""
    script = (
        "import asyncio, sys\n"
        "import ingest.process, ingest.streams.worker, ingest.jobs.worker\n"
        "from ingest.streams.aws import AwsDelivery\n"
        "HEAVY = ('botocore.session', 'botocore.config', 'botocore.client')\n"
        "async def main():\n"
        "    async with AwsDelivery(assume_role=False) as delivery:\n"
        "        print(sorted(m for m in HEAVY if m in sys.modules))\n"
        "        delivery._new_client('kinesis', 'us-east-1', None).close()\n"
        "        print(sorted(m for m in HEAVY if m in sys.modules))\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == [
        "[]",
        str(sorted(["botocore.client", "botocore.config", "botocore.session"])),
    ]


async def test_put_records_round_trip(
    kinesalite: Kinesalite, aws_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every record lands once with its partition key; a key's records of
    successive calls keep their order (Kinesis orders by sequence number
    within a shard; it does not promise order inside one PutRecords call)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesalite.url)
    name = kinesalite.create_stream(shards=3)
    calls = [
        [(f"endpoint-{key}", orjson.dumps({"call": call, "key": key})) for key in range(10)]
        for call in range(12)
    ]
    async with AwsDelivery(assume_role=False) as delivery:
        for records in calls:
            assert await delivery.put_records(kinesis(name), ROLE, None, records) == [None] * len(records)
    read = kinesalite.read_stream(name)
    sent = [record for records in calls for record in records]
    assert sorted((r.partition_key, r.data) for r in read) == sorted(sent)
    assert len({r.shard_id for r in read}) > 1, "the keys spread over the shards"
    for key in {key for key, _ in sent}:
        mine = [r for r in read if r.partition_key == key]
        assert len({r.shard_id for r in mine}) == 1
        assert [r.data for r in mine] == [data for k, data in sent if k == key]


async def test_put_record_batch_round_trip(
    moto_server: MotoServer, aws_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each PutRecordBatch becomes one S3 object of its records back to back
    (moto's delivery; real Firehose buffers several calls into one object)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_FIREHOSE", moto_server.url)
    name, bucket = moto_server.create_delivery_stream()
    calls = [[orjson.dumps({"call": call, "n": n}) + b"\n" for n in range(10)] for call in range(3)]
    async with AwsDelivery(assume_role=False) as delivery:
        for records in calls:
            assert await delivery.put_record_batch(firehose(name), ROLE, None, records) == [None] * 10
    assert sorted(moto_server.delivered(bucket)) == sorted(b"".join(records) for records in calls)


async def test_assume_role_signs_kinesis_calls_as_the_role(
    moto_server: MotoServer, faulty: FaultyKinesis, kinesalite: Kinesalite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One AssumeRole (through AWS_ENDPOINT_URL_STS), with our session name
    and the external ID; every call signed with its key and token."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_server.url)
    name = kinesalite.create_stream()
    before = len(moto_server.assumed_roles())
    async with AwsDelivery(assume_role=True) as delivery:
        for n in range(3):
            assert await delivery.put_records(kinesis(name), ROLE, EXTERNAL_ID, [("key", b"%d" % n)]) == [
                None
            ]
    [assumed] = moto_server.assumed_roles()[before:]
    assert (assumed["role_arn"], assumed["session_name"], assumed["external_id"]) == (
        ROLE,
        ROLE_SESSION_NAME,
        EXTERNAL_ID,
    )
    assert {(call.access_key_id, call.session_token) for call in faulty.calls} == {
        (assumed["access_key_id"], assumed["session_token"])
    }
    assert [r.data for r in kinesalite.read_stream(name)] == [b"0", b"1", b"2"]


async def test_assume_role_reaches_the_roles_account(
    moto_server: MotoServer, aws_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery stream in the role's account takes the role's records; the
    process's own key (another account, in moto) finds no such stream."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_server.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_FIREHOSE", moto_server.url)
    as_role = moto_server.assume_role(ROLE)
    name, bucket = moto_server.create_delivery_stream(credentials=as_role)
    destination = firehose(name, account=ROLE_ACCOUNT)
    async with AwsDelivery(assume_role=True) as delivery:
        assert await delivery.put_record_batch(destination, ROLE, None, [b"as the role\n"]) == [None]
    assert moto_server.delivered(bucket, credentials=as_role) == [b"as the role\n"]
    async with AwsDelivery(assume_role=False) as delivery:
        failed = await refusal(delivery.put_record_batch(destination, ROLE, None, [b"as the process\n"]))
    assert verdict(failed) == ("not_found", False, "ResourceNotFoundException")


async def test_without_assume_role_the_process_signs_and_sts_is_never_called(
    faulty: FaultyKinesis, kinesalite: Kinesalite, aws_env: tuple[str, str]
) -> None:
    """AWS_ENDPOINT_URL_STS is not set: STS is on the closed port, unused."""
    key_id, _ = aws_env
    name = kinesalite.create_stream()
    async with AwsDelivery(assume_role=False) as delivery:
        assert await delivery.put_records(kinesis(name), ROLE, EXTERNAL_ID, [("key", b"mine")]) == [None]
    assert {(call.access_key_id, call.session_token) for call in faulty.calls} == {(key_id, None)}


async def test_a_rejected_token_is_assumed_again(
    moto_server: MotoServer, faulty: FaultyKinesis, kinesalite: Kinesalite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ExpiredTokenException: a retriable access_denied, and the next call
    signs with a new AssumeRole's credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_server.url)
    name = kinesalite.create_stream()
    async with AwsDelivery(assume_role=True) as delivery:
        assert await delivery.put_records(kinesis(name), ROLE, None, [("key", b"1")]) == [None]
        faulty.fail_calls(
            400, "ExpiredTokenException", count=1, message="The security token included is expired"
        )
        expired = await refusal(delivery.put_records(kinesis(name), ROLE, None, [("key", b"2")]))
        assert verdict(expired) == ("access_denied", True, "ExpiredTokenException")
        assert await delivery.put_records(kinesis(name), ROLE, None, [("key", b"2")]) == [None]
    keys = [call.access_key_id for call in faulty.calls]
    assert keys[0] == keys[1] != keys[2]
    assert [r.data for r in kinesalite.read_stream(name)] == [b"1", b"2"]


async def test_role_credentials_renewed_ahead_of_expiry(
    moto_server: MotoServer, faulty: FaultyKinesis, kinesalite: Kinesalite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reused until ROLE_REFRESH_AHEAD_S before their Expiration (moto's:
    DurationSeconds' default, an hour after issue), then assumed again."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_server.url)
    name = kinesalite.create_stream()
    issued = datetime.now(UTC)
    clock = [issued]
    async with AwsDelivery(assume_role=True, now=lambda: clock[0]) as delivery:
        assert await delivery.put_records(kinesis(name), ROLE, None, [("key", b"1")]) == [None]
        # Expiration is a little after issued + 1 h (moto issued it later).
        clock[0] = issued + timedelta(hours=1) - timedelta(seconds=ROLE_REFRESH_AHEAD_S + 30)
        assert await delivery.put_records(kinesis(name), ROLE, None, [("key", b"2")]) == [None]
        clock[0] += timedelta(seconds=60)
        assert await delivery.put_records(kinesis(name), ROLE, None, [("key", b"3")]) == [None]
    keys = [call.access_key_id for call in faulty.calls]
    assert keys[0] == keys[1] != keys[2]


async def test_partial_failures_come_back_at_their_index_and_only_they_are_resent(
    kinesalite: Kinesalite, aws_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records the stream refuses (here: every third, on its first attempt)
    are RecordFailures exactly at their index; sending just those again
    delivers them, and every record lands once."""
    name = kinesalite.create_stream(shards=2)
    sent = [(f"endpoint-{n % 4}", b"record-%03d" % n) for n in range(30)]
    chosen = [n for n in range(30) if n % 3 == 1]
    with FaultyKinesis(kinesalite.url, record_fault=first_attempts({sent[n][1] for n in chosen})) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", proxy.url)
        async with AwsDelivery(assume_role=False) as delivery:
            results = await delivery.put_records(kinesis(name), ROLE, None, sent)
            failures = {n: result for n, result in enumerate(results) if result is not None}
            assert sorted(failures) == chosen
            assert {(f.code, f.reason, f.retriable) for f in failures.values()} == {
                ("ProvisionedThroughputExceededException", "throttled", True)
            }
            again = [sent[n] for n in chosen]
            assert await delivery.put_records(kinesis(name), ROLE, None, again) == [None] * len(again)
        assert proxy.attempts == Counter({data: 2 if n in chosen else 1 for n, (_, data) in enumerate(sent)})
        assert proxy.forwarded == Counter(data for _, data in sent)
        assert sorted(proxy.injected) == sorted(sent[n][1] for n in chosen)
    assert sorted((r.partition_key, r.data) for r in kinesalite.read_stream(name)) == sorted(sent)


@pytest.mark.parametrize(
    ("status", "code", "reason", "retriable"),
    [
        (503, "ServiceUnavailableException", "unavailable", True),
        (500, "InternalFailure", "unavailable", True),
        (502, "BadGateway", "unavailable", True),
        (400, "ProvisionedThroughputExceededException", "throttled", True),
        (400, "AccessDeniedException", "access_denied", False),
        (400, "KMSAccessDeniedException", "access_denied", False),
        (400, "ValidationException", "invalid", False),
        (400, "SomethingNewException", "other", False),
    ],
)
async def test_whole_call_errors_mapped(
    faulty: FaultyKinesis, kinesalite: Kinesalite, status: int, code: str, reason: str, retriable: bool
) -> None:
    """Nothing forwarded; the answer's code decides reason and retriable."""
    name = kinesalite.create_stream()
    faulty.fail_calls(status, code)
    async with AwsDelivery(assume_role=False) as delivery:
        failed = await refusal(delivery.put_records(kinesis(name), ROLE, None, [("key", b"refused")]))
    assert verdict(failed) == (reason, retriable, code)
    assert f"HTTP {status}" in str(failed)
    assert faulty.forwarded == Counter()
    assert kinesalite.read_stream(name) == []


async def test_unreachable_endpoint_is_unavailable(
    aws_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", f"http://127.0.0.1:{free_port()}")
    async with AwsDelivery(assume_role=False, connect_timeout_s=2) as delivery:
        failed = await refusal(delivery.put_records(kinesis("anything"), ROLE, None, [("key", b"lost")]))
    assert verdict(failed) == ("unavailable", True, "EndpointConnectionError")


async def test_unreachable_sts_is_unavailable(
    kinesalite: Kinesalite, aws_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """AssumeRole cannot reach STS (here: AWS_ENDPOINT_URL's closed port);
    the message names the role, never the external ID."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesalite.url)
    async with AwsDelivery(assume_role=True) as delivery:
        failed = await refusal(
            delivery.put_records(kinesis("anything"), ROLE, EXTERNAL_ID, [("key", b"lost")])
        )
    assert verdict(failed) == ("unavailable", True, "EndpointConnectionError")
    assert f"AssumeRole of {ROLE}" in str(failed)
    assert EXTERNAL_ID not in str(failed)


async def test_missing_streams_are_not_found(
    kinesalite: Kinesalite, moto_server: MotoServer, aws_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesalite.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_FIREHOSE", moto_server.url)
    async with AwsDelivery(assume_role=False) as delivery:
        failures = [
            await refusal(delivery.put_records(kinesis("no-such-stream"), ROLE, None, [("key", b"x")])),
            await refusal(delivery.put_record_batch(firehose("no-such-stream"), ROLE, None, [b"x"])),
        ]
    assert [verdict(failed) for failed in failures] == [("not_found", False, "ResourceNotFoundException")] * 2


async def test_read_timeout_is_unavailable_though_the_records_may_land(
    faulty: FaultyKinesis, kinesalite: Kinesalite
) -> None:
    """No answer within read_timeout_s: unavailable, retriable. The service
    may still write the records (here it does, once the proxy lets the call
    through): delivery is at-least-once."""
    name = kinesalite.create_stream()
    faulty.stall_calls()
    async with AwsDelivery(assume_role=False, read_timeout_s=0.5) as delivery:
        failed = await refusal(delivery.put_records(kinesis(name), ROLE, None, [("key", b"late")]))
        faulty.release()
    assert verdict(failed) == ("unavailable", True, "ReadTimeoutError")
    await until(lambda: bool(kinesalite.read_stream(name)), "the stalled call's record in kinesalite")


async def test_no_credentials_is_credentials_then_found_when_set(
    kinesalite: Kinesalite, aws_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key in the chain: ``credentials``; once there is one, the next
    call finds it (the client made without one is not kept)."""
    key_id, secret = aws_env
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesalite.url)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    name = kinesalite.create_stream()
    async with AwsDelivery(assume_role=False) as delivery:
        failed = await refusal(delivery.put_records(kinesis(name), ROLE, None, [("key", b"x")]))
        assert verdict(failed) == ("credentials", False, "NoCredentialsError")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        assert await delivery.put_records(kinesis(name), ROLE, None, [("key", b"x")]) == [None]


async def test_batches_over_a_limit_are_refused_before_any_call(aws_env: tuple[str, str]) -> None:
    """``invalid`` (not ``unavailable``: every endpoint is a closed port here)."""
    big = b"x" * (KINESIS_MAX_RECORD_BYTES - 2)
    async with AwsDelivery(assume_role=False) as delivery:
        for records in (
            [("key", b"x")] * (KINESIS_MAX_RECORDS + 1),
            [("", b"x")],
            [("k" * 257, b"x")],
            [("key", big)],
            [("k", big)] * 6,
        ):
            failed = await refusal(delivery.put_records(kinesis("s"), ROLE, None, records))
            assert verdict(failed) == ("invalid", False, None)
        oversized = [b"x" * (FIREHOSE_MAX_RECORD_BYTES + 1)]
        failed = await refusal(delivery.put_record_batch(firehose("s"), ROLE, None, oversized))
        assert verdict(failed) == ("invalid", False, None)
        assert await delivery.put_records(kinesis("s"), ROLE, None, []) == []
        with pytest.raises(ValueError, match="Kinesis"):
            await delivery.put_records(firehose("s"), ROLE, None, [("key", b"x")])


def test_limits_accept_what_the_services_take() -> None:
    check_kinesis([("k", b"x" * (KINESIS_MAX_RECORD_BYTES - 1))] * 5)
    check_kinesis([("k" * 256, b"")] * KINESIS_MAX_RECORDS)
    check_firehose([b"x" * FIREHOSE_MAX_RECORD_BYTES] * 4)
    with pytest.raises(DeliveryError, match="over the 4194304-byte limit"):
        check_firehose([b"x" * FIREHOSE_MAX_RECORD_BYTES] * 5)


async def test_client_cache_is_bounded(
    kinesalite: Kinesalite, aws_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client per (service, region, credentials), at most max_clients."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesalite.url)
    name = kinesalite.create_stream()
    async with AwsDelivery(assume_role=False, max_clients=2) as delivery:
        for region, held in (("us-east-1", 1), ("us-east-1", 1), ("eu-west-1", 2), ("ap-southeast-2", 2)):
            assert await delivery.put_records(
                kinesis(name, region), ROLE, None, [("key", region.encode())]
            ) == [None]
            assert delivery.cached_clients == held
        # The evicted client is made again when needed.
        assert await delivery.put_records(kinesis(name, "us-east-1"), ROLE, None, [("key", b"again")]) == [
            None
        ]
        assert delivery.cached_clients == 2
    assert [r.data for r in kinesalite.read_stream(name)] == [
        b"us-east-1",
        b"us-east-1",
        b"eu-west-1",
        b"ap-southeast-2",
        b"again",
    ]


async def test_close_is_idempotent_and_refuses_new_calls(aws_env: tuple[str, str]) -> None:
    delivery = AwsDelivery(assume_role=False)
    async with delivery:
        pass
    await asyncio.gather(delivery.close(), delivery.close())
    await delivery.close()
    failed = await refusal(delivery.put_records(kinesis("s"), ROLE, None, [("key", b"x")]))
    assert verdict(failed) == ("other", False, None)


async def test_close_waits_for_a_call_whose_caller_was_cancelled(
    faulty: FaultyKinesis, kinesalite: Kinesalite
) -> None:
    """Cancelling the caller does not stop the call in its thread: it runs to
    its end (its records land), and close() waits for it."""
    name = kinesalite.create_stream()
    faulty.stall_calls()
    delivery = AwsDelivery(assume_role=False)
    call = asyncio.create_task(delivery.put_records(kinesis(name), ROLE, None, [("key", b"in flight")]))
    await until(lambda: bool(faulty.calls), "the call at the proxy")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    closing = asyncio.create_task(delivery.close())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not closing.done(), "close() returned with a call in flight"
    faulty.release()
    await asyncio.wait_for(closing, 30)
    assert [r.data for r in kinesalite.read_stream(name)] == [b"in flight"]


async def test_close_gives_up_waiting_after_its_drain_timeout(
    faulty: FaultyKinesis, kinesalite: Kinesalite, caplog: pytest.LogCaptureFixture
) -> None:
    """A call stuck past the drain timeout does not hold close() up; it still
    gets its answer. One admitted but not yet running is refused."""
    name = kinesalite.create_stream()
    faulty.stall_calls()
    delivery = AwsDelivery(assume_role=False, max_threads=1, drain_timeout_s=0.2)
    running = asyncio.create_task(delivery.put_records(kinesis(name), ROLE, None, [("key", b"running")]))
    await until(lambda: bool(faulty.calls), "the call at the proxy")
    waiting = asyncio.create_task(delivery.put_records(kinesis(name), ROLE, None, [("key", b"waiting")]))
    await asyncio.sleep(0)
    await delivery.close()
    assert "1 threads still running" in caplog.text
    faulty.release()
    assert await running == [None]
    with pytest.raises(DeliveryError, match="closed"):
        await waiting
    assert [r.data for r in kinesalite.read_stream(name)] == [b"running"]


async def test_no_credential_in_any_error_or_log(
    moto_server: MotoServer,
    faulty: FaultyKinesis,
    kinesalite: Kinesalite,
    aws_env: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not the process's key or secret, not the role's key, secret or token,
    not the external ID: in messages, tracebacks or the log, even when the
    service echoes the signed request back (as AWS's signature errors do)."""
    caplog.set_level("DEBUG", logger="ingest")
    key_id, secret = aws_env
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_server.url)
    name = kinesalite.create_stream()
    errors: list[DeliveryError] = []

    async def failing(
        delivery: AwsDelivery, destination: Destination, external_id: str | None = EXTERNAL_ID
    ) -> None:
        errors.append(await refusal(delivery.put_records(destination, ROLE, external_id, [("key", b"x")])))

    async with AwsDelivery(assume_role=True) as delivery:
        assert await delivery.put_records(kinesis(name), ROLE, EXTERNAL_ID, [("key", b"x")]) == [None]
        token = faulty.calls[-1].session_token
        assert token is not None
        echo = (
            f"The request signature we calculated does not match. The canonical string: 'POST\n/\n\n"
            f"x-amz-security-token:{token}\n' Credential={faulty.calls[-1].access_key_id}/20261201"
        )
        faulty.fail_calls(400, "InvalidSignatureException", count=1, message=echo)
        await failing(delivery, kinesis(name))
        faulty.fail_calls(400, "ExpiredTokenException", count=1, message=f"expired: {token}")
        await failing(delivery, kinesis(name))
        await failing(delivery, kinesis("no-such-stream"))
    async with AwsDelivery(assume_role=False) as delivery:
        faulty.fail_calls(400, "UnrecognizedClientException", count=1, message=f"{key_id} {secret}")
        await failing(delivery, kinesis(name), None)
    # (A client keeps the endpoint it was made with.)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", f"http://127.0.0.1:{free_port()}")
    async with AwsDelivery(assume_role=False) as delivery:
        await failing(delivery, kinesis(name), None)
    roles = moto_server.assumed_roles()
    secrets = {key_id, secret, token, EXTERNAL_ID}
    secrets |= {r[field] for r in roles for field in ("access_key_id", "secret_access_key", "session_token")}
    texts = ["".join(traceback.format_exception(error)) for error in errors] + [caplog.text]
    assert [error.code for error in errors] == [
        "InvalidSignatureException",
        "ExpiredTokenException",
        "ResourceNotFoundException",
        "UnrecognizedClientException",
        "EndpointConnectionError",
    ]
    leaked = {(n, s[:8]) for n, text in enumerate(texts) for s in secrets if s and s in text}
    assert not leaked, texts


def test_classify() -> None:
    assert classify("ProvisionedThroughputExceededException") == ("throttled", True)
    assert classify("Throttling", 400) == ("throttled", True)  # STS's
    assert classify("KMSThrottlingException") == ("throttled", True)
    assert classify("InternalFailure") == ("unavailable", True)
    assert classify("ServiceUnavailableException", 503) == ("unavailable", True)
    assert classify("AnythingElse", 504) == ("unavailable", True)
    assert classify("ResourceNotFoundException") == ("not_found", False)
    assert classify("AccessDenied", 403) == ("access_denied", False)  # STS's
    assert classify("UnrecognizedClientException") == ("access_denied", False)
    assert classify("ExpiredTokenException") == ("access_denied", True)
    assert classify("KMSDisabledException") == ("access_denied", False)
    assert classify("InvalidArgumentException") == ("invalid", False)
    assert classify("AnythingElse", 400) == ("other", False)


def test_record_results() -> None:
    """Firehose's RequestResponses and Kinesis's Records read alike."""
    entries = [
        {"RecordId": "a"},
        {"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "Slow down."},
        {"SequenceNumber": "1", "ShardId": "shardId-000000000000"},
        {"ErrorCode": "InternalFailure", "ErrorMessage": ""},
    ]
    assert record_results(entries, 4, "PutRecordBatch") == [
        None,
        RecordFailure("ServiceUnavailableException", "Slow down.", "unavailable", True),
        None,
        RecordFailure("InternalFailure", "", "unavailable", True),
    ]
    with pytest.raises(DeliveryError) as failed:
        record_results(entries, 5, "PutRecordBatch")
    assert (failed.value.reason, failed.value.retriable) == ("other", True)


def test_redact() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    text = f"key AKIAIOSFODNN7EXAMPLE secret {secret} x-amz-security-token:abc/def= rest"
    assert redact(text) == "key [redacted] secret [redacted] [redacted] rest"
    assert len(redact("some words " * 100)) == delivery_module.MAX_SERVICE_TEXT_CHARS + len("...")


async def test_kinesalite_keeps_its_records_across_a_restart(
    tmp_path: Path, aws_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the fault tests rely on: while stopped, calls are ``unavailable``;
    started again on the same port, the stream and its records are there."""
    with Kinesalite(tmp_path / "own") as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", server.url)
        name = server.create_stream()
        async with AwsDelivery(assume_role=False, connect_timeout_s=2) as delivery:
            assert await delivery.put_records(kinesis(name), ROLE, None, [("key", b"before")]) == [None]
            server.stop()
            failed = await refusal(delivery.put_records(kinesis(name), ROLE, None, [("key", b"while down")]))
            assert verdict(failed) == ("unavailable", True, "EndpointConnectionError")
            server.start()
            assert await delivery.put_records(kinesis(name), ROLE, None, [("key", b"after")]) == [None]
        assert [r.data for r in server.read_stream(name)] == [b"before", b"after"]
