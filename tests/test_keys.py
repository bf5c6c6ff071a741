"""ingest.keys and the `keys`/`identity-pools` commands: the CLI round trip
as a subprocess, secrets encrypted at rest, the scope table for every
operation the edge routes, the KeyRing seeing new and revoked keys within its
refresh, the bootstrap admin credentials botocore reads, and the store
methods on both backends."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import boto3
import pytest

from ingest.errors import KeyRequestError, SecretUnreadable, SettingsError
from ingest.keys import (
    AccessKey,
    KeyRing,
    MasterKey,
    bootstrap_admin,
    issue_key,
    new_identity_pool,
)
from ingest.scopes import Principal
from ingest.settings import Settings
from ingest.store.base import App, Store
from ingest.store.sqlite import SqliteStore
from tests.test_store import BACKENDS, fresh_store

ROOT = Path(__file__).resolve().parent.parent
ACCESS_KEY_ID = re.compile(r"AKIA[A-Z2-7]{16}")
APP = "a" * 32
OTHER_APP = "b" * 32
T0_MS = 1_700_000_000_000
CLI_TIMEOUT_S = 60.0
RING_DEADLINE_S = 10.0
MASTER = MasterKey(bytes(range(32)))


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m ingest ARGS --data-dir D`, with no INGEST_* variable of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


async def add_app(data_dir: Path, app_id: str) -> None:
    store = await SqliteStore.open(data_dir / "ingest.sqlite3")
    try:
        await store.create_app(App(id=app_id, name="test", arn=f"arn:{app_id}", tags={}, creation_date="now"))
    finally:
        await store.close()


# The CLI


async def test_keys_create_list_revoke_round_trip(tmp_path: Path) -> None:
    await add_app(tmp_path, APP)
    created = cli(tmp_path, "keys", "create", "--name", "backend", "--scope", "ingest", "--app", APP)
    assert created.returncode == 0, created.stderr
    shown = json.loads(created.stdout)
    assert set(shown) == {"AccessKeyId", "SecretAccessKey", "Scope", "Apps"}
    assert ACCESS_KEY_ID.fullmatch(shown["AccessKeyId"])
    assert len(shown["SecretAccessKey"]) == 40
    assert (shown["Scope"], shown["Apps"]) == ("ingest", [APP])
    assert shown["SecretAccessKey"] not in created.stderr

    listed = cli(tmp_path, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert shown["SecretAccessKey"] not in listed.stdout + listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["AccessKeyId"] == shown["AccessKeyId"]
    assert (entry["Name"], entry["Scope"], entry["Apps"], entry["Status"]) == (
        "backend",
        "ingest",
        [APP],
        "Active",
    )

    revoked = cli(tmp_path, "keys", "revoke", shown["AccessKeyId"])
    assert revoked.returncode == 0, revoked.stderr
    (entry,) = json.loads(cli(tmp_path, "keys", "list").stdout)
    assert entry["Status"] == "Inactive"
    assert entry["RevokeDate"] is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--name", "n", "--scope", "read"], "a read key needs at least one app"),
        (["keys", "create", "--name", "n", "--scope", "ingest"], "an ingest key needs at least one app"),
        (["keys", "create", "--name", "n", "--scope", "read", "--app", "nope"], "no such app: nope"),
        (["keys", "create", "--name", "n", "--scope", "admin", "--app", "nope"], "no such app: nope"),
        (["keys", "revoke", "AKIAAAAAAAAAAAAAAAAA"], "no access key 'AKIAAAAAAAAAAAAAAAAA'"),
        (["identity-pools", "create", "--app", "nope"], "no such app: nope"),
    ],
)
def test_a_refused_request_exits_2_saying_why(tmp_path: Path, args: list[str], message: str) -> None:
    done = cli(tmp_path, *args)
    assert (done.returncode, done.stdout) == (2, "")
    assert message in done.stderr


async def test_identity_pools_create_names_its_region_and_app(tmp_path: Path) -> None:
    await add_app(tmp_path, APP)
    done = cli(tmp_path, "identity-pools", "create", "--app", APP)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert set(shown) == {"IdentityPoolId", "ApplicationId"}
    assert shown["ApplicationId"] == APP
    assert re.fullmatch(
        r"us-east-1:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", shown["IdentityPoolId"]
    )


def test_a_dump_of_the_store_alone_yields_no_secret(tmp_path: Path) -> None:
    created = cli(tmp_path, "keys", "create", "--name", "n", "--scope", "admin")
    assert created.returncode == 0, created.stderr
    shown = json.loads(created.stdout)
    dumped = b"".join(p.read_bytes() for p in tmp_path.glob("ingest.sqlite3*"))
    assert shown["AccessKeyId"].encode() in dumped
    assert shown["SecretAccessKey"].encode() not in dumped
    assert stat.S_IMODE((tmp_path / "master.key").stat().st_mode) == 0o600


# The scope table

OPERATIONS = (
    "CreateApp GetApps GetApp DeleteApp PutEvents UpdateEndpoint UpdateEndpointsBatch GetEndpoint "
    "DeleteEndpoint GetUserEndpoints DeleteUserEndpoints GetApplicationDateRangeKpi "
    "GetCampaignDateRangeKpi GetJourneyDateRangeKpi PutEventStream GetEventStream DeleteEventStream "
    "TagResource UntagResource ListTagsForResource GetApplicationSettings UpdateApplicationSettings"
    " CreateSegment GetSegments GetSegment UpdateSegment DeleteSegment GetSegmentVersions GetSegmentVersion"
    # Import and export jobs.
    " CreateImportJob GetImportJob GetImportJobs GetSegmentImportJobs"
    " CreateExportJob GetExportJob GetExportJobs GetSegmentExportJobs"
).split()
READS = {
    "GetApps",
    "GetApp",
    "GetEndpoint",
    "GetUserEndpoints",
    "GetApplicationDateRangeKpi",
    "GetCampaignDateRangeKpi",
    "GetJourneyDateRangeKpi",
    "ListTagsForResource",
    "GetApplicationSettings",
    "GetSegment",
    "GetSegments",
    "GetSegmentVersion",
    "GetSegmentVersions",
    # Import and export jobs.
    "GetImportJob",
    "GetImportJobs",
    "GetSegmentImportJobs",
    "GetExportJob",
    "GetExportJobs",
    "GetSegmentExportJobs",
}
INGESTS = {"PutEvents", "UpdateEndpoint", "UpdateEndpointsBatch"}
ACCOUNT = {"CreateApp", "GetApps"}


def test_the_table_covers_every_operation_the_edge_routes() -> None:
    """Every Pinpoint operation of the route table is below; any other route
    name (the probes, the unsigned Cognito-style endpoint) no key may call."""
    source = (ROOT / "ingest" / "api" / "app.py").read_text()
    routed = set(re.findall(r'\(\s*"([A-Za-z]+)",', source))
    assert set(OPERATIONS) <= routed
    for other in routed - set(OPERATIONS):
        assert not [p for p in PRINCIPALS for app in (None, APP) if p.may(other, app)], other


def expected(scope: str, apps: frozenset[str], operation: str, app_id: str | None) -> bool:
    """The scope table as the issue states it, written out independently."""
    allowed = {"admin": set(OPERATIONS), "read": READS, "ingest": INGESTS}[scope]
    if operation not in allowed:
        return False
    if operation in ACCOUNT:
        return not apps or (scope == "read" and operation == "GetApps")
    return not apps or app_id in apps


PRINCIPALS = [
    Principal("AKIAADMIN", "admin", frozenset(), temporary=False),
    Principal("AKIABOUNDADMIN", "admin", frozenset({APP}), temporary=False),
    Principal("AKIAREAD", "read", frozenset({APP}), temporary=False),
    Principal("AKIAINGEST", "ingest", frozenset({APP}), temporary=False),
    Principal("ASIATEMP", "ingest", frozenset({APP}), temporary=True),
]


@pytest.mark.parametrize("principal", PRINCIPALS, ids=lambda p: p.access_key_id)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_may_follows_the_scope_table(principal: Principal, operation: str) -> None:
    app_ids = [None] if operation in ACCOUNT else [APP, OTHER_APP, None]
    for app_id in app_ids:
        want = expected(principal.scope, principal.apps, operation, app_id)
        assert principal.may(operation, app_id) is want, (operation, app_id)


def test_the_table_in_words() -> None:
    admin, bound_admin, read, ingest, temporary = PRINCIPALS
    assert admin.may("CreateApp", None) and admin.may("DeleteUserEndpoints", OTHER_APP)
    assert not bound_admin.may("CreateApp", None) and not bound_admin.may("DeleteApp", OTHER_APP)
    assert bound_admin.may("DeleteApp", APP)
    assert read.may("GetApps", None) and read.may("GetUserEndpoints", APP)
    assert not read.may("GetEndpoint", OTHER_APP) and not read.may("PutEvents", APP)
    assert ingest.may("PutEvents", APP) and not ingest.may("GetEndpoint", APP)
    assert read.may("ListTagsForResource", APP) and not read.may("TagResource", APP)
    assert not read.may("GetEventStream", APP) and bound_admin.may("PutEventStream", APP)
    assert not temporary.may("PutEvents", OTHER_APP) and not temporary.may("GetApps", None)
    assert not admin.may("metrics", None) and not admin.may("healthz", None)


# Issuing keys; the master key


def test_issued_keys_have_aws_shapes_and_decrypt_only_under_their_id() -> None:
    key, secret = issue_key(MASTER, name="n", scope="admin", apps=(), now_ms=T0_MS)
    assert ACCESS_KEY_ID.fullmatch(key.access_key_id)
    assert len(secret) == 40
    assert secret.encode() not in key.secret_ciphertext
    assert MASTER.decrypt(key.secret_ciphertext, context=key.access_key_id) == secret
    with pytest.raises(SecretUnreadable):
        MASTER.decrypt(key.secret_ciphertext, context="AKIAOTHER")
    with pytest.raises(SecretUnreadable):
        MasterKey(bytes(32)).decrypt(key.secret_ciphertext, context=key.access_key_id)


@pytest.mark.parametrize(
    ("name", "scope", "apps"),
    [
        ("", "admin", []),
        ("x" * 129, "admin", []),
        ("a\nb", "admin", []),
        ("n", "read", []),
        ("n", "ingest", []),
    ],
)
def test_a_key_out_of_bounds_is_refused(name: str, scope: Any, apps: list[str]) -> None:
    with pytest.raises(KeyRequestError):
        issue_key(MASTER, name=name, scope=scope, apps=apps, now_ms=T0_MS)


def test_the_master_key_file_is_made_once_0600_and_read_back(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = MasterKey.load(settings)
    assert stat.S_IMODE((tmp_path / "master.key").stat().st_mode) == 0o600
    again = MasterKey.load(settings)
    sealed = first.encrypt("secret", context="AKIAX")
    assert again.decrypt(sealed, context="AKIAX") == "secret"
    assert first.mac(b"data") == again.mac(b"data") != MASTER.mac(b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]


def test_a_readable_master_key_file_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    MasterKey.load(Settings(data_dir=tmp_path))
    (tmp_path / "master.key").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="ingest.keys"):
        MasterKey.load(Settings(data_dir=tmp_path))
    assert "others may read it" in caplog.text


def test_the_master_key_setting_wins_and_a_bad_one_is_not_echoed(tmp_path: Path) -> None:
    raw = "A" * 43
    from_setting = MasterKey.load(Settings(data_dir=tmp_path, auth_master_key=raw))
    assert not (tmp_path / "master.key").exists()
    assert from_setting.mac(b"x") == MasterKey(bytes(32)).mac(b"x")
    for bad in ("short", "A" * 42, "!" * 43, "A" * 100):
        with pytest.raises(SettingsError, match="INGEST_AUTH_MASTER_KEY: expected base64url") as info:
            MasterKey.load(Settings(data_dir=tmp_path, auth_master_key=bad))
        assert bad not in str(info.value)


# The store, both backends


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with fresh_store(request.param) as opened:
        yield opened


async def test_the_store_keeps_keys_and_pools(store: Store) -> None:
    admin, _ = issue_key(MASTER, name="admin", scope="admin", apps=(), now_ms=T0_MS)
    reader, _ = issue_key(MASTER, name="reader", scope="read", apps=(APP, OTHER_APP), now_ms=T0_MS + 1)
    for key in (admin, reader):
        await store.create_key(key)
    assert sorted(await store.list_keys(), key=lambda k: k.access_key_id) == sorted(
        [admin, reader], key=lambda k: k.access_key_id
    )
    assert await store.revoke_key(reader.access_key_id, T0_MS + 5)
    assert await store.revoke_key(reader.access_key_id, T0_MS + 9)  # keeps the first time
    assert not await store.revoke_key("AKIANOSUCHKEY", T0_MS)
    assert not await store.revoke_key("AKIA\x00", T0_MS)
    by_id = {k.access_key_id: k for k in await store.list_keys()}
    assert by_id[reader.access_key_id].revoked_ms == T0_MS + 5
    assert by_id[admin.access_key_id].revoked_ms is None

    pool = new_identity_pool(region="eu-west-1", app_id=APP, now_ms=T0_MS)
    await store.create_identity_pool(pool)
    assert list(await store.list_identity_pools()) == [pool]


# The KeyRing


async def eventually(check: Any, what: str) -> None:
    deadline = time.monotonic() + RING_DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def test_the_ring_sees_new_and_revoked_keys_within_its_refresh(store: Store) -> None:
    first, first_secret = issue_key(MASTER, name="first", scope="ingest", apps=(APP,), now_ms=T0_MS)
    await store.create_key(first)
    async with KeyRing(store, MASTER, refresh_s=0.05) as ring:
        assert ring.healthy
        assert ring.secret(first.access_key_id) == (
            first_secret,
            Principal(first.access_key_id, "ingest", frozenset({APP}), temporary=False),
        )
        second, second_secret = issue_key(MASTER, name="second", scope="admin", apps=(), now_ms=T0_MS)
        await store.create_key(second)
        pool = new_identity_pool(region="us-east-1", app_id=APP, now_ms=T0_MS)
        await store.create_identity_pool(pool)
        await eventually(lambda: ring.secret(second.access_key_id) is not None, "new key")
        await eventually(lambda: ring.pool(pool.id) == pool, "new pool")
        assert list(ring.pools()) == [pool]
        await store.revoke_key(first.access_key_id, T0_MS)
        await eventually(lambda: ring.secret(first.access_key_id) is None, "revoked key")
        assert ring.secret(second.access_key_id) == (
            second_secret,
            Principal(second.access_key_id, "admin", frozenset(), temporary=False),
        )
    assert not ring.healthy
    await ring.stop()  # idempotent


async def test_a_key_of_another_master_key_is_left_out(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    foreign, _ = issue_key(MasterKey(bytes(32)), name="foreign", scope="admin", apps=(), now_ms=T0_MS)
    await store.create_key(foreign)
    with caplog.at_level(logging.WARNING, logger="ingest.keys"):
        async with KeyRing(store, MASTER, refresh_s=60) as ring:
            assert ring.secret(foreign.access_key_id) is None
    assert foreign.access_key_id in caplog.text


# Bootstrap


def unrevoked_admins(keys: Iterable[AccessKey]) -> list[AccessKey]:
    return [k for k in keys if k.scope == "admin" and not k.apps and k.revoked_ms is None]


async def test_bootstrap_writes_credentials_botocore_reads_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = await SqliteStore.open(tmp_path / "ingest.sqlite3")
    try:
        with caplog.at_level(logging.INFO, logger="ingest.keys"):
            path = await bootstrap_admin(store, MASTER, tmp_path)
        assert path == tmp_path / "credentials"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        (admin,) = unrevoked_admins(await store.list_keys())
        secret = MASTER.decrypt(admin.secret_ciphertext, context=admin.access_key_id)
        assert admin.name == "bootstrap"
        assert admin.access_key_id in caplog.text and str(path) in caplog.text
        assert secret not in caplog.text

        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        credentials = boto3.Session(profile_name="ingest").get_credentials()
        assert credentials is not None
        assert (credentials.access_key, credentials.secret_key) == (admin.access_key_id, secret)

        written = path.read_bytes()
        assert await bootstrap_admin(store, MASTER, tmp_path) is None
        assert path.read_bytes() == written
        assert len(await store.list_keys()) == 1
    finally:
        await store.close()


async def test_bootstrap_again_once_every_admin_key_is_revoked(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "ingest.sqlite3")
    try:
        bound, _ = issue_key(MASTER, name="bound", scope="admin", apps=(APP,), now_ms=T0_MS)
        await store.create_key(bound)
        assert await bootstrap_admin(store, MASTER, tmp_path) is not None
        (admin,) = unrevoked_admins(await store.list_keys())
        await store.revoke_key(admin.access_key_id, T0_MS)
        assert await bootstrap_admin(store, MASTER, tmp_path) is not None
        (renewed,) = unrevoked_admins(await store.list_keys())
        assert renewed.access_key_id in (tmp_path / "credentials").read_text()
    finally:
        await store.close()
