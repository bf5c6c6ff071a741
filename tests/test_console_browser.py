"""The console in a real browser (Debian's chromium, driven by Playwright)
against a real `ingest run`, its app seeded through PutEvents with boto3.

One pipeline and one browser for the module; each test its own browser
context (its own cookies). Every request each page makes is recorded, and
each test ends by checking none went to another origin. Screenshots of each
page at desktop and phone width go to ``test-artifacts/console/`` (printed).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.conftest import ROOT, Pipeline, eventually, run_cli, signed_headers, start_pipeline
from tests.test_api import put

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "test-artifacts" / "console"
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
HOSTILE_NAME = "<img src=x onerror=window.__xss=1>"
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
REFRESH_S = 0.2
KINESIS = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
ROLE = "arn:aws:iam::123456789012:role/pinpoint-events"
SEGMENT = "Pro <b>users</b>"
# Seeded: on each of the last SEEDED_DAYS days, one endpoint more than the
# day after, each sending seeded_events' seven.
SEEDED_DAYS = 4
SEEDED = 7 * sum(range(1, SEEDED_DAYS + 1))


def at(day: datetime, minute: int) -> str:
    return (
        (day + timedelta(hours=10, minutes=minute)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def seeded_events(day: datetime, n: int) -> dict[str, Any]:
    session = {"Id": f"s-{day.day}-{n}", "StartTimestamp": at(day, 0)}
    return {
        str(uuid.uuid4()): {"EventType": "_session.start", "Timestamp": at(day, 1), "Session": session},
        str(uuid.uuid4()): {
            "EventType": "_monetization.purchase",
            "Timestamp": at(day, 2),
            "Session": session,
            "Attributes": {"_currency": "USD" if n % 2 else "EUR"},
            "Metrics": {"_item_price": 1.5 + n, "_quantity": 2},
        },
        str(uuid.uuid4()): {
            "EventType": "_session.stop",
            "Timestamp": at(day, 3),
            "Session": {**session, "Duration": 60_000 * (n + 1), "StopTimestamp": at(day, 3)},
        },
        str(uuid.uuid4()): {"EventType": "_userauth.sign_in", "Timestamp": at(day, 4)},
        str(uuid.uuid4()): {"EventType": "_userauth.sign_up", "Timestamp": at(day, 4)},
        str(uuid.uuid4()): {"EventType": "_userauth.auth_fail", "Timestamp": at(day, 4)},
        str(uuid.uuid4()): {"EventType": "level_up", "Timestamp": at(day, 5), "Attributes": {"lvl": str(n)}},
    }


class World:
    def __init__(self, running: Pipeline) -> None:
        self.running = running
        admin = running.client()
        self.admin = admin
        self.app = admin.create_app(CreateApplicationRequest={"Name": "Shop"})["ApplicationResponse"]["Id"]
        self.other = admin.create_app(CreateApplicationRequest={"Name": "Other"})["ApplicationResponse"]["Id"]
        self.hostile = admin.create_app(CreateApplicationRequest={"Name": HOSTILE_NAME})[
            "ApplicationResponse"
        ]["Id"]
        for back in range(SEEDED_DAYS):
            day = TODAY - timedelta(days=back)
            for n in range(back + 1):
                endpoint = {
                    "User": {"UserId": f"u{n}"},
                    "ChannelType": "APNS",
                    "Attributes": {"plan": ["pro"]},
                }
                put(admin, self.app, {f"ep-{n}": {"Endpoint": endpoint, "Events": seeded_events(day, n)}})
        # Every seeded event counted before any page is read, so the page and
        # the API calls after it read the same aggregates.
        eventually(lambda: self.events_counted(), lambda c: c == SEEDED, "every seeded event counted", 40)
        admin.put_event_stream(
            ApplicationId=self.app, WriteEventStream={"DestinationStreamArn": KINESIS, "RoleArn": ROLE}
        )
        self.segment_id = admin.create_segment(
            ApplicationId=self.app,
            WriteSegmentRequest={
                "Name": SEGMENT,
                "Dimensions": {"Attributes": {"plan": {"AttributeType": "INCLUSIVE", "Values": ["pro"]}}},
            },
        )["SegmentResponse"]["Id"]
        self.export_prefix = f"file://{running.data_dir.resolve()}/export/console/"
        self.job_id = admin.create_export_job(
            ApplicationId=self.app, ExportJobRequest={"RoleArn": ROLE, "S3UrlPrefix": self.export_prefix}
        )["ExportJobResponse"]["Id"]
        self.reader = running.create_key("read", self.app, self.hostile)
        self.outsider = running.create_key("read", self.other)

    def events_counted(self) -> float:
        return counted(self.admin, self.app, TODAY - timedelta(days=6))


# The module counts "today" against KPIs of the UTC day it started in: one
# that began within this long of midnight waits for the next day instead.
MODULE_WITHIN_S = 180


def _today_for_the_module() -> datetime:
    """TODAY, once the UTC day has at least MODULE_WITHIN_S left (sleeping
    into the next day when it has not)."""
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    if (midnight - now).total_seconds() < MODULE_WITHIN_S:
        time.sleep((midnight - now).total_seconds() + 1)
        return midnight
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    global TODAY  # the module's day, fixed before anything is seeded
    TODAY = _today_for_the_module()
    running = start_pipeline(tmp_path_factory.mktemp("console"), INGEST_AUTH_REFRESH_S=str(REFRESH_S))
    try:
        yield World(running)
    finally:
        assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed: scripts/test.sh installs Debian's chromium")
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {SHOTS}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


class Visit:
    """One browser context: its page, and every request it made."""

    def __init__(self, browser: Browser, world: World, width: str = "desktop") -> None:
        w, h = WIDTHS[width]
        self.world = world
        self.context: BrowserContext = browser.new_context(viewport={"width": w, "height": h})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page: Page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        # What the Content-Security-Policy blocked (Chrome says so on the console).
        self.page.on(
            "console",
            lambda m: self.errors.append(m.text) if "Content Security Policy" in m.text else None,
        )

    def open(self, fragment: str = "") -> Page:
        self.page.goto(f"{self.world.running.url}/console/{fragment}")
        return self.page

    def sign_in(self, key: tuple[str, str]) -> Page:
        page = self.open()
        page.fill("#key-id", key[0])
        page.fill("#secret", key[1])
        page.click("#sign-in button[type=submit]")
        page.wait_for_selector("#sign-out")
        return page

    def go(self, fragment: str, page_name: str) -> Page:
        self.page.evaluate("fragment => { location.hash = fragment }", fragment)
        self.page.wait_for_selector(f"main[data-page='{page_name}']")
        self.page.wait_for_load_state("networkidle")
        return self.page

    def cookie(self) -> str | None:
        return next((c["value"] for c in self.context.cookies() if c["name"] == "ingest_console"), None)

    def close(self) -> None:
        origin = self.world.running.url
        foreign = [url for url in self.requests if not url.startswith(origin + "/")]
        self.context.close()
        assert not foreign, f"requests to another origin: {foreign}"
        assert not self.errors, self.errors


@pytest.fixture
def visit(browser: Browser, world: World) -> Iterator[Visit]:
    opened = Visit(browser, world)
    yield opened
    opened.close()


def table_rows(within: Any, rows: str = "table.numbers tbody tr") -> list[list[str]]:
    """The cells of a KPI section's table (not uPlot's legend, also a table)."""
    return [
        [cell.text_content() or "" for cell in row.query_selector_all("td")]
        for row in within.query_selector_all(rows)
    ]


def api_rows(world: World, app_id: str, name: str, start: str, end: str) -> list[list[str]]:
    response = world.admin.get_application_date_range_kpi(
        ApplicationId=app_id,
        KpiName=name,
        StartTime=datetime.fromisoformat(start.replace("Z", "+00:00")),
        EndTime=datetime.fromisoformat(end.replace("Z", "+00:00")),
    )
    return [
        [g["Value"] for g in row["GroupedBys"]] + [v["Value"] for v in row["Values"]]
        for row in response["ApplicationDateRangeKpiResponse"]["KpiResult"]["Rows"]
    ]


def same_numbers(shown: list[list[str]], answered: list[list[str]]) -> bool:
    """The table's cells as the API's: group keys as text, values as numbers
    (the table prints 1,368 for the API's "1368.0")."""

    def norm(cells: list[str]) -> tuple[object, ...]:
        out: list[object] = []
        for cell in cells:
            try:
                out.append(round(float(cell.replace(",", "")), 2))
            except ValueError:
                out.append(cell)
        return tuple(out)

    return [norm(r) for r in shown] == [norm(r) for r in answered]


def test_every_chart_table_equals_the_kpi_api_for_the_same_range(visit: Visit, world: World) -> None:
    visit.sign_in(world.reader)
    page = visit.go(f"#/apps/{world.app}?days=7", "Overview")
    bounds = page.query_selector(".range")
    assert bounds is not None
    start, end = bounds.get_attribute("data-start") or "", bounds.get_attribute("data-end") or ""
    sections = page.query_selector_all("section.kpi")
    assert len(sections) == 13
    for section in sections:
        name = section.get_attribute("data-kpi") or ""
        shown, answered = table_rows(section), api_rows(world, world.app, name, start, end)
        assert answered, f"{name}: the seeded app has data for every overview KPI"
        assert same_numbers(shown, answered), (name, shown, answered)
        assert section.query_selector("canvas") is not None, f"{name} has no chart"


def test_the_events_page_counts_by_type_and_per_day_as_the_api(visit: Visit, world: World) -> None:
    visit.sign_in(world.reader)
    page = visit.go(f"#/apps/{world.app}/events?days=7&type=level_up", "Events")
    start = page.get_attribute(".range", "data-start") or ""
    end = page.get_attribute(".range", "data-end") or ""
    by_type = table_rows(page, "#event-types tbody tr")
    assert same_numbers(by_type, api_rows(world, world.app, "events-grouped-by-event-type", start, end))
    per_day = table_rows(page.query_selector("section[data-kpi='events-per-day']"))
    assert len(per_day) == 4  # level_up on each of the four seeded days (the range's last four)
    for day, count in per_day:
        rows = api_rows(
            world, world.app, "events-grouped-by-event-type", f"{day}T00:00:00Z", f"{day}T23:59:59Z"
        )
        assert [float(count)] == [float(r[1]) for r in rows if r[0] == "level_up"]


def test_endpoint_lookup_by_endpoint_and_by_user(visit: Visit, world: World) -> None:
    visit.sign_in(world.reader)
    page = visit.go(f"#/apps/{world.app}/endpoints?by=endpoint&id=ep-1", "Endpoints")
    card = page.inner_text("article.endpoint")
    assert "ep-1" in card and "APNS" in card and "u1" in card and "plan" in card and "pro" in card
    page = visit.go(f"#/apps/{world.app}/endpoints?by=user&id=u0", "Endpoints")
    assert page.inner_text("article.endpoint h3") == "ep-0"
    page = visit.go(f"#/apps/{world.app}/endpoints?by=endpoint&id=nobody", "Endpoints")
    assert "not found" in page.inner_text("main").lower()


def test_the_stream_page_shows_the_destination_and_the_workers_health(visit: Visit, world: World) -> None:
    visit.sign_in(world.running.credentials())
    text = visit.go(f"#/apps/{world.app}/stream", "Event stream").inner_text("main")
    assert KINESIS in text and ROLE in text
    # Read from `ingest run`'s own /metrics (every child's samples): figures
    # or "none yet", never "not available".
    assert "kinesis" in text and "not available" not in text, text
    status, _, body = world.running.request("GET", "/metrics", sign=False)
    assert status == 200 and b"ingest_stream_lag_records" in body


def test_a_read_key_is_told_it_may_not_see_the_stream(visit: Visit, world: World) -> None:
    visit.sign_in(world.reader)
    text = visit.go(f"#/apps/{world.app}/stream", "Event stream").inner_text("main")
    assert "admin key" in text and KINESIS not in text


def test_a_read_key_of_another_app_sees_nothing_of_this_one(visit: Visit, world: World) -> None:
    page = visit.sign_in(world.outsider)
    page.wait_for_selector("#apps")
    listed = page.inner_text("#apps")
    assert "Other" in listed and "Shop" not in listed and world.app not in listed
    for fragment, name in (
        (f"#/apps/{world.app}", "Overview"),
        (f"#/apps/{world.app}/events", "Events"),
        (f"#/apps/{world.app}/endpoints?by=endpoint&id=ep-1", "Endpoints"),
    ):
        text = visit.go(fragment, name).inner_text("main")
        assert "may not see" in text and "Shop" not in text and "ep-1" not in text.replace(fragment, "")
    # The API answers of the session itself: refused, the same as a signed call's.
    status = page.evaluate(
        """url => fetch(url, {headers: {"X-Ingest-Console": "1"}}).then(r => [r.status,
             r.headers.get("x-amzn-ErrorType")])""",
        f"/v1/apps/{world.app}/kpis/daterange/daily-active-endpoints",
    )
    assert status == [403, "AccessDeniedException"]


SESSION_STATUS = """() => fetch("/console/api/session", {headers: {"X-Ingest-Console": "1"}})
    .then(r => r.status)"""


def test_a_revoked_keys_session_ends(visit: Visit, world: World) -> None:
    key = world.running.create_key("read", world.app)
    page = visit.sign_in(key)
    page.wait_for_selector("#apps")
    run_cli(world.running, "keys", "revoke", key[0])
    eventually(
        lambda: page.evaluate(SESSION_STATUS),
        lambda status: status == 403,
        "the revoked key's session refused",
        within_s=REFRESH_S * 20 + 5,
    )
    page.evaluate("() => { location.hash = '#/apps/' + Date.now() }")
    page.wait_for_selector("#sign-in")
    assert "session has ended" in page.inner_text("main")


def test_sign_out_clears_the_cookie(visit: Visit, world: World) -> None:
    page = visit.sign_in(world.reader)
    assert visit.cookie()
    cookie = next(c for c in visit.context.cookies() if c["name"] == "ingest_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.click("#sign-out")
    page.wait_for_selector("#sign-in")
    assert visit.cookie() is None
    page.reload()
    page.wait_for_selector("#sign-in")


def test_client_chosen_text_shows_as_text(visit: Visit, world: World) -> None:
    page = visit.sign_in(world.reader)
    page.wait_for_selector("#apps")
    link = page.get_by_role("link", name=HOSTILE_NAME)
    assert link.inner_text() == HOSTILE_NAME
    assert page.query_selector("main img") is None
    assert page.evaluate("() => window.__xss") is None


def test_screenshots_of_every_page_at_desktop_and_phone_width(browser: Browser, world: World) -> None:
    pages = {
        "apps": ("#/", "Apps"),
        "overview": (f"#/apps/{world.app}?days=7", "Overview"),
        "events": (f"#/apps/{world.app}/events?days=7", "Events"),
        "endpoints": (f"#/apps/{world.app}/endpoints?by=user&id=u1", "Endpoints"),
        "stream": (f"#/apps/{world.app}/stream", "Event stream"),
        "segments": (f"#/apps/{world.app}/segments", "Segments"),
        "jobs": (f"#/apps/{world.app}/jobs", "Jobs"),
    }
    for width in WIDTHS:
        visit = Visit(browser, world, width)
        try:
            visit.open().wait_for_selector("#sign-in")
            visit.page.screenshot(path=str(SHOTS / f"sign-in-{width}.png"), full_page=True)
            visit.sign_in(world.running.credentials())
            for name, (fragment, page_name) in pages.items():
                page = visit.go(fragment, page_name)
                page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
                # Nothing wider than the screen: no sideways scrolling at phone width.
                overflow = page.evaluate("() => document.documentElement.scrollWidth - innerWidth")
                assert overflow <= 0, (name, width, overflow)
        finally:
            visit.close()
    assert len(list(SHOTS.glob("*.png"))) >= 2 * (len(pages) + 1)


def http_sign_in(world: World, key: tuple[str, str], origin: str) -> tuple[int, dict[str, str]]:
    """Sign in as the page does, SigV4-signed by botocore instead, from ``origin``."""
    url = f"{world.running.url}/console/api/session"
    headers = signed_headers(key, "POST", url, b"", {"X-Ingest-Console": "1", "Origin": origin})
    status, answered, _ = world.running.request("POST", "/console/api/session", b"", headers, sign=False)
    return status, answered


def test_cross_origin_console_requests_are_refused(world: World) -> None:
    origin = world.running.url
    status, answered = http_sign_in(world, world.reader, "https://evil.example")
    assert (status, answered["x-amzn-errortype"]) == (403, "ForbiddenException")
    assert "set-cookie" not in answered
    status, answered = http_sign_in(world, world.reader, origin)
    assert status == 200
    cookie = answered["set-cookie"].split(";")[0]
    kpi = f"/v1/apps/{world.app}/kpis/daterange/daily-active-endpoints"

    def with_cookie(method: str, path: str, **headers: str) -> int:
        return world.running.request(method, path, None, {"Cookie": cookie} | headers, sign=False)[0]

    assert with_cookie("GET", kpi, **{"X-Ingest-Console": "1"}) == 200
    assert with_cookie("GET", kpi) == 403  # no custom header: a cross-site <img>, a link
    assert with_cookie("GET", kpi, **{"X-Ingest-Console": "1", "Sec-Fetch-Site": "cross-site"}) == 403
    # A cross-origin write with the session refused; the same from the console's origin goes through.
    assert (
        with_cookie("DELETE", "/console/api/session", **{"X-Ingest-Console": "1", "Origin": "http://evil"})
        == 403
    )
    assert with_cookie("DELETE", "/console/api/session", **{"X-Ingest-Console": "1", "Origin": origin}) == 200
    # Even an admin key's session only reads: a same-origin DeleteApp with it is refused.
    _, answered = http_sign_in(world, world.running.credentials(), origin)
    admin_cookie = answered["set-cookie"].split(";")[0]
    same_origin = {"Cookie": admin_cookie, "X-Ingest-Console": "1", "Origin": origin}
    assert (
        world.running.request("DELETE", f"/v1/apps/{world.hostile}", None, same_origin, sign=False)[0] == 403
    )
    assert world.admin.get_app(ApplicationId=world.hostile)["ApplicationResponse"]["Name"] == HOSTILE_NAME
    # Neither a secret nor a session token is ever logged.
    log = world.running.log()
    assert world.reader[1] not in log and cookie.split("=", 1)[1] not in log
    assert admin_cookie.split("=", 1)[1] not in log


def test_console_pages_carry_the_csp(world: World) -> None:
    for path in ("/console/", "/console/main.js", "/console/vendor/uPlot.esm.js"):
        status, headers, _ = world.running.request("GET", path, sign=False)
        assert status == 200, path
        policy = headers["content-security-policy"]
        assert (
            "script-src 'self'" in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy
        )
        assert headers["x-content-type-options"] == "nosniff"


def test_a_page_refreshes_itself_without_keeping_the_session_alive(visit: Visit, world: World) -> None:
    visit.context.clock.install()
    page = visit.sign_in(world.running.credentials())
    page.wait_for_selector("#apps")

    def shown() -> str:
        row = page.locator("#apps tbody tr", has_text="Other")
        return row.locator("td").nth(3).inner_text()

    before = int(shown())
    today = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    new = {str(uuid.uuid4()): {"EventType": "level_up", "Timestamp": today} for _ in range(3)}
    put(world.admin, world.other, {"ep-refresh": {"Endpoint": {}, "Events": new}})
    eventually(
        lambda: counted(world.admin, world.other, TODAY),
        lambda n: n == before + 3,
        "the new events counted",
        40,
    )
    refreshes: list[dict[str, str]] = []
    page.on("request", lambda r: refreshes.append(r.headers) if "/v1/apps" in r.url else None)
    renewed: list[str] = []
    page.on("response", lambda r: renewed.append(r.url) if r.headers.get("set-cookie") else None)
    page.clock.fast_forward(31_000)
    page.wait_for_function(
        "n => document.querySelector('#apps') && "
        "[...document.querySelectorAll('#apps tbody tr')].some(r => r.innerText.includes('Other') "
        "&& r.cells[3].innerText === String(n))",
        arg=before + 3,
        timeout=10_000,
    )
    assert refreshes and all(h.get("x-ingest-console") == "refresh" for h in refreshes)
    assert not renewed, f"a refresh renewed the session: {renewed}"
    assert "refreshes every 30 s" in page.inner_text("footer")


def counted(admin: Any, app_id: str, first: datetime) -> float:
    """Events of ``app_id`` counted from the day of ``first`` to today (UTC)."""
    rows = admin.get_application_date_range_kpi(
        ApplicationId=app_id,
        KpiName="events-grouped-by-date",
        StartTime=first,
        EndTime=TODAY + timedelta(hours=23),
    )["ApplicationDateRangeKpiResponse"]["KpiResult"]["Rows"]
    return sum(float(row["Values"][0]["Value"]) for row in rows)


def test_custom_ranges_empty_states_and_errors_are_in_words(visit: Visit, world: World) -> None:
    visit.sign_in(world.reader)
    first, last = (TODAY - timedelta(days=40)).date(), (TODAY - timedelta(days=2)).date()
    page = visit.go(f"#/apps/{world.app}?from={first}&to={last}", "Overview")
    # 39 days: asked for in two windows, the table still the API's rows for the range.
    section = page.query_selector("section[data-kpi='daily-active-endpoints']")
    shown = table_rows(section)
    answered = api_rows(
        world,
        world.app,
        "daily-active-endpoints",
        f"{TODAY - timedelta(days=9):%Y-%m-%d}T00:00:00Z",
        f"{last}T23:59:59Z",
    )
    assert same_numbers(shown, answered) and len(shown) == 2
    empty = visit.go(f"#/apps/{world.hostile}?days=30", "Overview").inner_text("main")
    assert empty.count("No data in this range.") == 13
    too_long = visit.go(f"#/apps/{world.app}?from=2024-01-01&to=2026-01-01", "Overview").inner_text("main")
    assert "at most 366 days" in too_long


def test_a_browser_whose_clock_is_an_hour_off_still_signs_in(visit: Visit, world: World) -> None:
    """The edge refuses a signature dated beyond the 15-minute skew (as AWS
    does); the page corrects its clock from the answer's Date and signs again."""
    visit.context.clock.install(time=datetime.now(UTC) - timedelta(hours=1))
    visit.sign_in(world.reader).wait_for_selector("#apps")


def test_segments_and_jobs_pages_show_what_the_api_answers(visit: Visit, world: World) -> None:
    admin = world.admin
    done = eventually(
        lambda: admin.get_export_job(ApplicationId=world.app, JobId=world.job_id)["ExportJobResponse"],
        lambda found: found["JobStatus"] in ("COMPLETED", "FAILED"),
        "the export job finished",
        within_s=30,
    )
    visit.sign_in(world.reader)
    text = visit.go(f"#/apps/{world.app}/segments", "Segments").inner_text("main")
    assert SEGMENT in text and world.segment_id in text and "DIMENSIONAL" in text and '"plan"' in text
    page = visit.go(f"#/apps/{world.app}/jobs", "Jobs")
    row = page.locator("table.jobs tbody tr", has_text=world.job_id).inner_text()
    assert done["JobStatus"] in row and world.export_prefix in row
    assert f"{done['CompletedPieces']}/{done['TotalPieces']}" in row
