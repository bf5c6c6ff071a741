"""The access keys we issue, what each may do, and the master key that keeps
their secrets.

A key's secret must be recoverable (SigV4 verification recomputes an HMAC
with it), so the store holds it encrypted with AES-256-GCM under a subkey of
the master key, bound to the key's ID: a dump of the store alone yields no
usable secret, and a ciphertext moved to another row does not decrypt. The
master key comes from ``INGEST_AUTH_MASTER_KEY`` or ``{data_dir}/master.key``
(generated, mode 0600, on first use).

:class:`KeyRing` is an edge's view of the keys and identity pools, reloaded
from the store every ``auth_refresh_s`` by a task it owns; a lookup is a dict
read. The scope table is :mod:`ingest.scopes`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import stat
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ingest.errors import KeyRequestError, SecretUnreadable, SettingsError, StoreError
from ingest.scopes import SCOPES, Principal, Scope
from ingest.settings import MASTER_KEY_BYTES, Settings

log = logging.getLogger(__name__)

# AWS's own shapes: "AKIA" + 16 base32 characters; a 40-character secret.
ACCESS_KEY_PREFIX = "AKIA"
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_ID_CHARS = 16
_SECRET_BYTES = 30  # 40 base64 characters
# Bounds on what an operator may ask for: a name, and the apps of one key.
MAX_NAME_CHARS = 128
MAX_KEY_APPS = 100
MAX_APP_ID_CHARS = 256
# AES-GCM's standard nonce; random per encryption (2^-32 collision risk only
# after ~2^32 encryptions under one key, far beyond any key count here).
_NONCE_BYTES = 12
_MASTER_KEY_FILE = "master.key"
CREDENTIALS_FILE = "credentials"
CREDENTIALS_PROFILE = "ingest"
BOOTSTRAP_NAME = "bootstrap"


@dataclass(frozen=True, slots=True)
class AccessKey:
    """A key as the store keeps it (the secret encrypted by MasterKey)."""

    access_key_id: str
    name: str
    scope: Scope
    apps: tuple[str, ...]
    """Empty: every app (admin keys only; read and ingest need at least one)."""
    secret_ciphertext: bytes
    created_ms: int
    revoked_ms: int | None


class KeyStore(Protocol):
    """What of ingest.store.base.Store this module uses (every Store is one)."""

    async def create_key(self, key: AccessKey) -> None: ...
    async def list_keys(self) -> Sequence[AccessKey]: ...
    async def list_identity_pools(self) -> Sequence[IdentityPool]: ...


@dataclass(frozen=True, slots=True)
class IdentityPool:
    """A Cognito-style identity pool: unauthenticated identities get
    temporary ``ingest`` credentials for ``app_id``."""

    id: str
    """``REGION:UUID``, as Cognito's."""
    app_id: str
    created_ms: int


def principal_of(key: AccessKey) -> Principal:
    return Principal(
        access_key_id=key.access_key_id, scope=key.scope, apps=frozenset(key.apps), temporary=False
    )


class MasterKey:
    """The 32-byte root secret. Three subkeys are derived from it
    (HKDF-SHA256): one to encrypt stored secrets, one to MAC identities and
    temporary credentials, one to MAC console sessions, so no use can be
    turned against another."""

    __slots__ = ("_aead", "_console_key", "_mac_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise SettingsError(f"a master key is {MASTER_KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(_subkey(key, b"ingest/keys/secrets"))
        self._mac_key = _subkey(key, b"ingest/keys/mac")
        self._console_key = _subkey(key, b"ingest/console/sessions")

    def __repr__(self) -> str:
        return "MasterKey(…)"

    @classmethod
    def load(cls, settings: Settings) -> MasterKey:
        """``INGEST_AUTH_MASTER_KEY`` when set (a bad value is a
        SettingsError that never echoes it), else ``{data_dir}/master.key``,
        created with a new random key (mode 0600, atomically: concurrent
        first starts agree on one key) when absent. A file others may read
        is used, with a warning."""
        if settings.auth_master_key is not None:
            return cls(_decode_master(settings.auth_master_key, "INGEST_AUTH_MASTER_KEY"))
        path = settings.data_dir / _MASTER_KEY_FILE
        if not path.exists():
            new = base64.urlsafe_b64encode(secrets.token_bytes(MASTER_KEY_BYTES)) + b"\n"
            _write_private(path, new, replace=False)
            log.info("generated a master key at %s", path)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("master key file %s has mode %o: others may read it (chmod 600)", path, mode)
        return cls(_decode_master(path.read_text().strip(), str(path)))

    def encrypt(self, plaintext: str, *, context: str) -> bytes:
        """nonce + AES-GCM ciphertext of ``plaintext``, bound to ``context``
        (the access key ID): it decrypts only with the same context."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def decrypt(self, ciphertext: bytes, *, context: str) -> str:
        """The inverse of :meth:`encrypt`. Raises SecretUnreadable when the
        ciphertext was not made by this master key for this context."""
        nonce, sealed = ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, sealed, context.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise SecretUnreadable(f"the secret of {context} does not decrypt with this master key") from exc

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under the MAC subkey (32 bytes)."""
        return hmac.digest(self._mac_key, data, hashlib.sha256)

    def console_mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under the console-session subkey (32 bytes)."""
        return hmac.digest(self._console_key, data, hashlib.sha256)


def _subkey(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _decode_master(raw: str, where: str) -> bytes:
    # Never echo the value: it is the deployment's root secret.
    try:
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)) if len(raw) <= 64 else b""
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != MASTER_KEY_BYTES:
        raise SettingsError(f"{where}: expected base64url of exactly {MASTER_KEY_BYTES} bytes")
    return key


def _write_private(path: Path, content: bytes, *, replace: bool) -> None:
    """Write ``content`` to ``path`` with mode 0600, atomically (written
    aside and synced, then moved into place: never seen half written);
    without ``replace``, only when ``path`` does not exist (a hard link fails
    then, so concurrent first starts agree on one file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# Issuing keys and pools (pure: the caller stores what these return).


def new_access_key_id() -> str:
    return ACCESS_KEY_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_CHARS))


def issue_key(
    master: MasterKey, *, name: str, scope: Scope, apps: Sequence[str], now_ms: int
) -> tuple[AccessKey, str]:
    """A new key and its secret (shown once, never stored in the clear).
    Raises KeyRequestError for a name or apps out of bounds, or a read or
    ingest key without apps (checking that the apps exist is the caller's)."""
    if not 1 <= len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise KeyRequestError(f"a key name is 1-{MAX_NAME_CHARS} printable characters")
    if scope not in SCOPES:
        raise KeyRequestError(f"scope {scope!r}: expected one of {', '.join(SCOPES)}")
    bound = tuple(dict.fromkeys(apps))
    if scope != "admin" and not bound:
        article = "an" if scope == "ingest" else "a"
        raise KeyRequestError(f"{article} {scope} key needs at least one app (--app APP_ID)")
    if len(bound) > MAX_KEY_APPS or any(not 1 <= len(a) <= MAX_APP_ID_CHARS for a in bound):
        raise KeyRequestError(f"a key names at most {MAX_KEY_APPS} apps of 1-{MAX_APP_ID_CHARS} characters")
    access_key_id = new_access_key_id()
    secret = base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()
    key = AccessKey(
        access_key_id=access_key_id,
        name=name,
        scope=scope,
        apps=bound,
        secret_ciphertext=master.encrypt(secret, context=access_key_id),
        created_ms=now_ms,
        revoked_ms=None,
    )
    return key, secret


def new_identity_pool(*, region: str, app_id: str, now_ms: int) -> IdentityPool:
    return IdentityPool(id=f"{region}:{uuid.uuid4()}", app_id=app_id, created_ms=now_ms)


async def bootstrap_admin(store: KeyStore, master: MasterKey, data_dir: Path) -> Path | None:
    """With no unrevoked admin key for every app in the store, create one
    (named "bootstrap") and write it to ``{data_dir}/credentials`` as an AWS
    shared-credentials file (profile ``ingest``, mode 0600); → that path, or
    None when such a key exists already. Logs the path and the key ID, never
    the secret."""
    for key in await store.list_keys():
        if key.scope == "admin" and not key.apps and key.revoked_ms is None:
            return None
    key, secret = issue_key(master, name=BOOTSTRAP_NAME, scope="admin", apps=(), now_ms=_now_ms())
    path = data_dir / CREDENTIALS_FILE
    content = (
        f"[{CREDENTIALS_PROFILE}]\n"
        f"aws_access_key_id = {key.access_key_id}\n"
        f"aws_secret_access_key = {secret}\n"
        "region = us-east-1\n"
    ).encode()
    # The file first: should storing the key fail, no admin key exists and
    # the next start writes the file again.
    await asyncio.to_thread(_write_private, path, content, replace=True)
    await store.create_key(key)
    log.info(
        "created admin key %s; its credentials are in %s (profile %s)",
        key.access_key_id,
        path,
        CREDENTIALS_PROFILE,
    )
    return path


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class KeyRing:
    """The edge's view of keys and identity pools, reloaded every
    ``refresh_s`` from the store; lookups never touch the store.

    :meth:`start` loads once (a StoreError there fails start-up) and starts
    the refresh task it owns; a later StoreError keeps the last view and is
    retried at the next refresh. A key whose secret does not decrypt (a
    master key other than the one that stored it) is left out, with a
    warning. ``healthy`` is False once the refresh task has died."""

    def __init__(self, store: KeyStore, master: MasterKey, *, refresh_s: float) -> None:
        self._store = store
        self._master = master
        self._refresh_s = refresh_s
        self._secrets: dict[str, tuple[str, Principal]] = {}
        self._pools: dict[str, IdentityPool] = {}
        # Decrypted secrets by (ID, ciphertext), so a refresh decrypts only new keys.
        self._plain: dict[tuple[str, bytes], str] = {}
        self._unreadable: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever(), name="keyring-refresh")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done()

    def secret(self, access_key_id: str) -> tuple[str, Principal] | None:
        """The secret and principal of an unrevoked key we issued."""
        return self._secrets.get(access_key_id)

    def pool(self, pool_id: str) -> IdentityPool | None:
        return self._pools.get(pool_id)

    def pools(self) -> Sequence[IdentityPool]:
        return tuple(self._pools.values())

    async def refresh(self) -> None:
        """Reload keys and pools from the store now. Raises StoreError."""
        keys = await self._store.list_keys()
        pools = await self._store.list_identity_pools()
        plain: dict[tuple[str, bytes], str] = {}
        found: dict[str, tuple[str, Principal]] = {}
        for key in keys:
            if key.revoked_ms is not None:
                continue
            cache_key = (key.access_key_id, key.secret_ciphertext)
            secret = self._plain.get(cache_key)
            if secret is None:
                try:
                    secret = self._master.decrypt(key.secret_ciphertext, context=key.access_key_id)
                except SecretUnreadable as exc:
                    if key.access_key_id not in self._unreadable:
                        self._unreadable.add(key.access_key_id)
                        log.warning("key %s left out: %s", key.access_key_id, exc)
                    continue
            plain[cache_key] = secret
            found[key.access_key_id] = (secret, principal_of(key))
        self._plain = plain
        self._secrets = found
        self._pools = {pool.id: pool for pool in pools}

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except StoreError as exc:
                log.warning("keys not reloaded, keeping the last ones: %s", exc)
