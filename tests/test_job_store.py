"""The job state in the store, on both backends: a job round-trips; the
lease is a compare-and-set (two owners never hold one job, a lost lease
refuses the loser's writes); the running bounds hold per deployment and per
app, across claims racing each other; the cursor and counters come back as
saved; jobs page newest first and go with their app."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from ingest.store.base import Job, Store
from tests.test_store import BACKENDS, app, fresh_store

T0_MS = 1_800_000_000_000
LEASE_MS = 10_000


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with fresh_store(request.param) as opened:
        yield opened


def job(app_id: str, n: int, *, job_type: str = "IMPORT", segment_id: str | None = None) -> Job:
    return Job(
        app_id=app_id,
        id=f"{T0_MS + n:012x}{n:020x}",
        job_type="IMPORT" if job_type == "IMPORT" else "EXPORT",
        segment_id=segment_id,
        definition={"S3Url": f"s3://b/{n}", "Format": "JSON", "RoleArn": "arn:aws:iam::1:role/r"},
        status="CREATED",
        creation_date="2027-01-15T08:00:00.000Z",
        created_ms=T0_MS + n,
    )


async def claim(
    store: Store, owner: str, *, now_ms: int = T0_MS, running: int = 10, per_app: int = 10
) -> Job | None:
    return await store.claim_job(
        owner, now_ms=now_ms, lease_ms=LEASE_MS, max_running=running, max_per_app=per_app
    )


async def test_a_job_round_trips_and_pages_newest_first(store: Store) -> None:
    assert await store.create_app(app("a"))
    assert not await store.create_job(job("nope", 1)), "no app, no job"
    jobs = [job("a", n, segment_id="s1" if n % 2 else None) for n in range(5)]
    for one in jobs:
        assert await store.create_job(one)
    assert await store.create_job(job("a", 9, job_type="EXPORT"))
    assert await store.get_job("a", jobs[2].id) == jobs[2]
    assert await store.get_job("a", "f" * 32) is None
    newest = await store.list_jobs("a", "IMPORT", segment_id=None, before=None, limit=3)
    assert [j.id for j in newest] == [jobs[4].id, jobs[3].id, jobs[2].id]
    rest = await store.list_jobs("a", "IMPORT", segment_id=None, before=newest[-1].id, limit=3)
    assert [j.id for j in rest] == [jobs[1].id, jobs[0].id]
    of_segment = await store.list_jobs("a", "IMPORT", segment_id="s1", before=None, limit=10)
    assert [j.id for j in of_segment] == [jobs[3].id, jobs[1].id]
    exports = await store.list_jobs("a", "EXPORT", segment_id=None, before=None, limit=10)
    assert [j.job_type for j in exports] == ["EXPORT"]
    await store.delete_app("a")
    assert await store.get_job("a", jobs[2].id) is None


async def test_the_lease_is_a_compare_and_set_and_its_loser_writes_nothing(store: Store) -> None:
    assert await store.create_app(app("a"))
    assert await store.create_job(job("a", 1))
    first = await claim(store, "one")
    assert first is not None and first.owner == "one" and first.lease_expires_ms == T0_MS + LEASE_MS
    assert await claim(store, "two") is None, "held: nobody else gets it"
    # The cursor and counters come back as saved.
    progress = dataclasses.replace(
        first,
        status="PROCESSING",
        total_pieces=2,
        total_processed=1000,
        total_failures=3,
        failures=("x", "y", "z"),
        pieces=(("s3://b/k1", 10), ("s3://b/k2", 20)),
        cursor={"object": 1, "row": 250},
    )
    assert await store.save_job(progress, now_ms=T0_MS + 1, lease_ms=LEASE_MS)
    assert await store.get_job("a", first.id) == dataclasses.replace(
        progress, lease_expires_ms=T0_MS + 1 + LEASE_MS
    )
    # Its owner dies: once the lease has run out another owner takes it over,
    # from the saved cursor, and the old owner's writes are refused.
    later = T0_MS + 2 * LEASE_MS
    taken = await claim(store, "two", now_ms=later)
    assert taken is not None and taken.owner == "two" and taken.cursor == {"object": 1, "row": 250}
    assert not await store.save_job(
        dataclasses.replace(progress, total_processed=5), now_ms=later, lease_ms=1
    )
    assert not await store.renew_job("a", first.id, "one", until_ms=later + LEASE_MS)
    assert await store.renew_job("a", first.id, "two", until_ms=later + LEASE_MS)
    assert (await store.get_job("a", first.id)).total_processed == 1000  # type: ignore[union-attr]
    # Finished, it is never claimed again.
    done = dataclasses.replace(taken, status="COMPLETED", completion_date="2027-01-15T08:01:00.000Z")
    assert await store.save_job(done, now_ms=later, lease_ms=0)
    assert await claim(store, "three", now_ms=later * 2) is None


async def test_the_running_bounds_hold_per_deployment_and_per_app_across_racing_claims(store: Store) -> None:
    for app_id in ("a", "b", "c"):
        assert await store.create_app(app(app_id))
        for n in range(4):
            assert await store.create_job(job(app_id, n))
    # Twelve replicas claim at once: at most three held, one an app.
    claimed = await asyncio.gather(*(claim(store, f"r{i}", running=3, per_app=1) for i in range(12)))
    held = [one for one in claimed if one is not None]
    assert len(held) == 3
    assert sorted(one.app_id for one in held) == ["a", "b", "c"]
    assert len({(one.app_id, one.id) for one in held}) == 3
    # A released job (lease 0) frees its slot at once.
    released = dataclasses.replace(held[0], status="PROCESSING")
    assert await store.save_job(released, now_ms=T0_MS, lease_ms=0)
    again = await claim(store, "r99", running=3, per_app=1)
    assert again is not None and again.app_id == held[0].app_id
    assert await claim(store, "r100", running=3, per_app=1) is None
