"""``python -m load fuzz`` (issue 13): a short fuzz of a live `ingest run`
finds no failure, and the fuzzer does find a 5xx, a 4xx without
``x-amzn-ErrorType`` and a timeout when a fake server (fault injection only)
answers them, while a per-item 500 inside a PutEvents 202 is allowed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from load.credentials import Key
from load.fuzz import FuzzOptions, execute
from load.hostile import WEIGHTS, Cases
from tests.conftest import ROOT, clean_env, run_cli, start_pipeline

SHORT_RUN = 2000
FAKE_TIMEOUT_S = 0.5


def test_cases_are_repeatable_from_their_seed() -> None:
    def first(seed: int) -> list[tuple[str, str, str, bytes]]:
        cases = Cases(seed=seed, app_id="a" * 32, victims=("b" * 32,), now_ms=1_790_000_000_000)
        return [(c.method, c.path, c.query, c.body) for c, _ in zip(cases, range(300), strict=False)]

    assert first(7) == first(7)
    assert first(7) != first(8)


def test_no_case_deletes_the_runs_own_app() -> None:
    app = "a" * 32
    cases = Cases(seed=3, app_id=app, victims=("b" * 32,), now_ms=1_790_000_000_000)
    deletes = [c.path for c, _ in zip(cases, range(5000), strict=False) if c.method == "DELETE"]
    assert deletes and all(path.strip("/") != f"v1/apps/{app}" for path in deletes)


def test_a_short_fuzz_of_ingest_run_has_no_failure(tmp_path: Path) -> None:
    running = start_pipeline(tmp_path)
    try:
        app_id = running.client().create_app(CreateApplicationRequest={"Name": "fuzz"})[
            "ApplicationResponse"
        ]["Id"]
        pool_id = run_cli(running, "identity-pools", "create", "--app", app_id)["IdentityPoolId"]
        samples = tmp_path / "failures.txt"
        options = FuzzOptions(
            url=running.url,
            requests=SHORT_RUN,
            seed=13,
            app_id=app_id,
            identity_pool_id=pool_id,
            samples_path=samples,
        )
        summary = asyncio.run(execute(options, Key(*running.credentials())))
        assert summary["failed"] == 0, (summary["failures"], samples.read_text())
        assert summary["ok"] and summary["sent"] == SHORT_RUN
        assert set(summary["by_operation"]) == set(WEIGHTS)  # every operation, each answered
        assert summary["mutated"] > SHORT_RUN / 3 and summary["valid"] > SHORT_RUN / 3
        for answered in ("202", "200", "201", "400", "403", "404"):
            assert summary["status"].get(answered, 0) > 0, summary["status"]
        assert running.client().get_app(ApplicationId=app_id)["ApplicationResponse"]["Id"] == app_id
    finally:
        assert running.stop() == 0, running.log()


@pytest.fixture
async def faulty() -> AsyncIterator[str]:
    """A fake edge: CreateApp works; PutEvents answers, in turn, a 202 with a
    per-item 500 (allowed), an HTTP 500, and nothing in time; user paths a
    404 without x-amzn-ErrorType; everything else a proper 400."""
    turn = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal turn
        if request.method == "POST" and request.path == "/v1/apps":
            return web.json_response({"Id": "fake-app"}, status=201)
        if request.path.endswith("/events"):
            turn += 1
            if turn % 3 == 0:
                return web.json_response({"Message": "boom"}, status=500)
            if turn % 3 == 1:
                item = {"StatusCode": 500, "Message": "Kafka did not acknowledge"}
                results = {"e": {"EndpointItemResponse": item, "EventsItemResponse": {"x": item}}}
                return web.json_response({"Results": results}, status=202)
            await asyncio.sleep(FAKE_TIMEOUT_S * 4)  # a hang: past the client's timeout
        if "/users/" in request.path:
            return web.Response(status=404, text="no such user")
        return web.json_response(
            {"Message": "no"}, status=400, headers={"x-amzn-ErrorType": "BadRequestException"}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_fuzzer_finds_5xx_untyped_4xx_and_timeouts(faulty: str, tmp_path: Path) -> None:
    samples = tmp_path / "failures.txt"
    options = FuzzOptions(
        url=faulty, requests=300, seed=1, timeout_s=FAKE_TIMEOUT_S, victims=0, samples_path=samples
    )
    summary = await execute(options, Key("AKIAFAKE0000", "not-checked"))
    assert not summary["ok"]
    assert summary["failures"]["http_500"] > 0
    assert summary["failures"]["http_404_without_error_type"] > 0
    assert summary["failures"]["timeout"] > 0
    assert summary["item_500"] > 0  # counted, and not a failure
    assert summary["failed"] == sum(summary["failures"].values())
    written = [orjson.loads(line) for line in samples.read_text().splitlines()]
    assert 0 < len(written) <= options.max_samples
    assert {s["verdict"] for s in written} <= set(summary["failures"])
    assert all(s["method"] and s["path"].startswith("'/") for s in written)


def test_the_command_refuses_a_server_off_this_machine() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "load", "fuzz", "--url", "http://192.0.2.1:8080", "-n", "10"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert b"loopback" in done.stderr
