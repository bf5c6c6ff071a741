"""What apps send: devices with sessions, custom events, purchases; the
request shapes of each SDK. Pure: a seeded ``random.Random`` and the time
passed in; no clock reads, no I/O.

Shapes (research/pinpoint-compat.md, §4 and the SDK table):

* ``amplify-js``: UpdateEndpoint with the device's profile before its first
  events (``resolveEndpointId`` awaits it), then PutEvents with
  ``"Endpoint": {}``; lowercase UUID v4 IDs; session IDs are UUIDs.
* ``native`` (Amplify Swift and Android, the legacy mobile SDKs): the full
  endpoint profile in every PutEvents, one endpoint per request; Swift's IDs
  are uppercase UUIDs; session IDs ``<appKey8>-<id8>-yyyyMMdd-HHmmssSSS``;
  events carry ``AppPackageName``, ``SdkName`` and friends.
* ``boto3``: a backend posting for several endpoints in one request (the
  endpoint's user and a server attribute), no sessions.
* ``mixed``: devices of all three (40 / 40 / 20 %).

Every event carries its own Timestamp, recent (the KPI worker counts only
events dated inside its dedupe window). Custom event types end in the run ID,
so each run's events are its own even in a shared app. A share of events can
be made invalid in ways Pinpoint rejects per event (400), never failing the
batch: that share is known per event ID, so the harness can account for them.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import orjson

Profile = Literal["amplify-js", "native", "boto3"]
ProfileChoice = Literal["mixed", "amplify-js", "native", "boto3"]
PROFILE_CHOICES: tuple[str, ...] = get_args(ProfileChoice)
MIXED_WEIGHTS: dict[Profile, float] = {"amplify-js": 0.4, "native": 0.4, "boto3": 0.2}

SESSION_START = "_session.start"
SESSION_STOP = "_session.stop"
PURCHASE = "_monetization.purchase"
CUSTOM_NAMES = ("screen_view", "level_complete", "add_to_cart", "search")
# Events per session, drawn uniformly: a few minutes of app use.
SESSION_EVENTS = (10, 120)
PURCHASE_SHARE = 0.03
# A batch's events are spaced this far apart, the last one dated "now".
EVENT_SPACING_MS = 10
# A backend (boto3) request spreads its events over this many endpoints.
BOTO3_ENDPOINTS_PER_REQUEST = 10
# The hot share of traffic goes to this share of the endpoints.
HOT_ENDPOINT_SHARE = 0.1
# Custom events' attributes are drawn from a fixed pool (shared dicts).
ATTRIBUTE_POOL = tuple({"screen": f"screen-{n}", "source": src} for n in range(20) for src in ("tab", "link"))
APP_KEY = "4a1f0c9e"  # first 8 characters of the app key in native session IDs

# Ways an event breaks a rule that Pinpoint (and the edge) judge per event.
INVALID_KINDS = (
    "value_too_long",
    "key_too_long",
    "too_many_keys",
    "missing_timestamp",
    "bad_timestamp",
    "session_without_id",
)


@functools.lru_cache(maxsize=8)
def _second_text(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s))


def iso(epoch_ms: int) -> str:
    """``2026-11-23T10:00:00.000Z``, what every SDK sends."""
    return f"{_second_text(epoch_ms // 1000)}.{epoch_ms % 1000:03d}Z"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def uuid4(rng: random.Random, *, upper: bool = False) -> str:
    """A version-4 UUID from ``rng`` (seeded runs repeat their IDs; each run
    has its own app, and the dedupe key includes the app)."""
    h = f"{rng.getrandbits(128):032x}"
    text = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
    return text.upper() if upper else text


@dataclass(slots=True)
class Device:
    """One endpoint: an app install (or a backend's user) and its session."""

    endpoint_id: str
    profile: Profile
    platform: Literal["web", "ios", "android", "server"]
    user_id: str
    profile_body: dict[str, Any]
    # Members every event of this device carries (the native SDKs' app fields).
    event_fields: dict[str, str] = field(default_factory=dict)
    registered: bool = False
    session_id: str | None = None
    session_start_ms: int = 0
    session_left: int = 0
    # The in-session events' ``Session`` member, shared: it never changes.
    session: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Item:
    """One ``BatchItem`` entry: an endpoint and its events."""

    endpoint_id: str
    endpoint: dict[str, Any]
    events: dict[str, dict[str, Any]]


@dataclass(slots=True)
class Batch:
    """One PutEvents call as an SDK makes it, and what the harness needs to
    account for it: each event's type and which events are invalid."""

    seq: int
    profile: Profile
    items: list[Item]
    types: dict[str, str]
    invalid: set[str] = field(default_factory=set)
    # (endpoint ID, UpdateEndpoint body): Amplify JS registers a new device first.
    register: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Sent once more, whole, after it settled: an SDK that timed out on an
    # answer the server had sent.
    resend: bool = False
    invocation_id: str = ""

    def body(self, only: Collection[str] | None = None) -> bytes:
        """The request body; with ``only``, just those events (an SDK
        re-sending what was not accepted), same IDs and content."""
        if only is None:
            batch_item = {i.endpoint_id: {"Endpoint": i.endpoint, "Events": i.events} for i in self.items}
        else:
            batch_item = {}
            for i in self.items:
                events = {k: v for k, v in i.events.items() if k in only}
                if events:
                    batch_item[i.endpoint_id] = {"Endpoint": i.endpoint, "Events": events}
        return orjson.dumps({"BatchItem": batch_item})


class Traffic:
    """An endless, seeded stream of batches for ``endpoints`` devices.

    ``next_batch`` is deterministic given the seed, the call order and the
    ``now_ms`` values passed in.
    """

    def __init__(
        self,
        *,
        seed: int,
        run_id: str,
        endpoints: int,
        batch_size: int,
        profile: ProfileChoice,
        invalid_rate: float = 0.0,
        retry_rate: float = 0.0,
        hot_share: float = 0.0,
    ) -> None:
        if not 1 <= batch_size <= 100:
            raise ValueError("batch_size must be 1-100 (Pinpoint's limit per request)")
        if endpoints < 1:
            raise ValueError("endpoints must be at least 1")
        self._rng = random.Random(seed)  # noqa: S311 - repeatable traffic, not secrets
        self._batch_size = batch_size
        self._invalid_rate = invalid_rate
        self._retry_rate = retry_rate
        self._hot_share = hot_share
        self._custom = [f"{name}.{run_id}" for name in CUSTOM_NAMES]
        self._seq = 0
        profiles: list[Profile] = list(MIXED_WEIGHTS) if profile == "mixed" else [profile]
        weights = [MIXED_WEIGHTS[p] for p in profiles]
        self.devices = [self._device(self._rng.choices(profiles, weights)[0]) for _ in range(endpoints)]
        self._hot = max(1, int(len(self.devices) * HOT_ENDPOINT_SHARE))
        self._backend = [d for d in self.devices if d.profile == "boto3"]

    # --- devices -----------------------------------------------------------

    def _device(self, profile: Profile) -> Device:
        rng = self._rng
        if profile == "boto3":
            user = f"user-{rng.getrandbits(40):010x}"
            body = {"ChannelType": "CUSTOM", "Address": user, "User": {"UserId": user}}
            body["Attributes"] = {"source": ["backend"]}
            return Device(uuid4(rng), profile, "server", user, body)
        identity = f"us-east-1:{uuid4(rng)}"
        if profile == "amplify-js":
            demographic = {
                "AppVersion": "3.4.1",
                "Locale": rng.choice(("en-US", "de-DE", "nb-NO", "ja-JP")),
                "Make": "Google Inc.",
                "Model": "Chrome",
                "ModelVersion": "131.0.0.0",
                "Platform": "Linux x86_64",
            }
            body = {"Demographic": demographic, "Location": {}, "Metrics": {}, "Attributes": {}}
            body["User"] = {"UserId": identity, "UserAttributes": {}}
            return Device(uuid4(rng), profile, "web", identity, body)
        ios = rng.random() < 0.5
        demographic = {
            "AppVersion": "4.2.0",
            "Locale": rng.choice(("en_US", "de_DE", "nb_NO", "ja_JP")),
            "Make": "apple" if ios else "samsung",
            "Model": "iPhone15,2" if ios else "SM-S911B",
            "ModelVersion": "15,2" if ios else "S911B",
            "Platform": "ios" if ios else "android",
            "PlatformVersion": "18.1" if ios else "14",
            "Timezone": "Europe/Oslo",
        }
        body = {
            "ChannelType": "APNS" if ios else "GCM",
            "Address": f"{rng.getrandbits(256):064x}",
            "OptOut": "NONE",
            "Demographic": demographic,
            "Location": {"Country": "NO", "City": "Oslo", "PostalCode": "0150", "Region": "Oslo"},
            "Attributes": {"plan": [rng.choice(("free", "pro"))]},
            "Metrics": {},
            "User": {"UserId": identity, "UserAttributes": {}},
        }
        fields = {
            "AppPackageName": "com.example.shop",
            "AppTitle": "Shop",
            "AppVersionCode": "42",
            "SdkName": "amplify-swift" if ios else "amplify-android",
            "ClientSdkVersion": "2.45.0" if ios else "2.27.0",
        }
        platform: Literal["ios", "android"] = "ios" if ios else "android"
        return Device(uuid4(rng, upper=ios), profile, platform, identity, body, fields)

    def _pick(self) -> Device:
        rng = self._rng
        if self._hot_share and rng.random() < self._hot_share:
            return self.devices[rng.randrange(self._hot)]
        return self.devices[rng.randrange(len(self.devices))]

    # --- events ------------------------------------------------------------

    def _session_id(self, device: Device, start_ms: int) -> str:
        if device.platform == "web":
            return uuid4(self._rng)
        moment = time.strftime("%Y%m%d-%H%M%S", time.gmtime(start_ms // 1000))
        return f"{APP_KEY}-{device.endpoint_id[:8]}-{moment}{start_ms % 1000:03d}"

    def _custom_event(self, device: Device, at: str) -> dict[str, Any]:
        rng = self._rng
        draw = rng.random()
        if draw < PURCHASE_SHARE:
            quantity = rng.randint(1, 3)
            return {
                "EventType": PURCHASE,
                "Timestamp": at,
                "Attributes": {
                    "_product_id": f"sku-{rng.randrange(50)}",
                    "_currency": rng.choice(("USD", "EUR", "NOK")),
                    "_store": "Apple" if device.platform == "ios" else "Virtual",
                    "_transaction_id": uuid4(rng),
                },
                "Metrics": {"_item_price": rng.choice((0.99, 4.99, 9.99)), "_quantity": quantity},
                **device.event_fields,
            }
        # One draw picks the type, the attributes and the metric.
        custom = self._custom
        draw = (draw - PURCHASE_SHARE) / (1 - PURCHASE_SHARE)
        return {
            "EventType": custom[int(draw * len(custom))],
            "Timestamp": at,
            "Attributes": ATTRIBUTE_POOL[int(draw * 1_000_003) % len(ATTRIBUTE_POOL)],
            "Metrics": {"dwell_ms": float(100 + int(draw * 1_000_000_007) % 29_900)},
            **device.event_fields,
        }

    def _next_event(self, device: Device, at_ms: int) -> dict[str, Any]:
        """The device's next valid event at ``at_ms``, moving its session on."""
        at = iso(at_ms)
        if device.platform == "server":
            return self._custom_event(device, at)
        if device.session_id is None:
            device.session_id = self._session_id(device, at_ms)
            device.session_start_ms = at_ms
            device.session_left = self._rng.randint(*SESSION_EVENTS)
            device.session = {"Id": device.session_id, "StartTimestamp": at}
            return {
                "EventType": SESSION_START,
                "Timestamp": at,
                "Session": device.session,
                **device.event_fields,
            }
        if device.session_left <= 0:
            session = {
                **device.session,
                "StopTimestamp": at,
                # Never negative: a hot device's batches may overlap in time.
                "Duration": max(0, at_ms - device.session_start_ms),
            }
            device.session_id = None
            return {"EventType": SESSION_STOP, "Timestamp": at, "Session": session, **device.event_fields}
        device.session_left -= 1
        event = self._custom_event(device, at)
        event["Session"] = device.session
        return event

    def _invalid_event(self, at_ms: int) -> dict[str, Any]:
        """A custom event broken in one of the ways judged per event."""
        rng = self._rng
        event: dict[str, Any] = {"EventType": rng.choice(self._custom), "Timestamp": iso(at_ms)}
        kind = rng.choice(INVALID_KINDS)
        if kind == "value_too_long":
            event["Attributes"] = {"note": "x" * 201}
        elif kind == "key_too_long":
            event["Metrics"] = {"k" * 51: 1.0}
        elif kind == "too_many_keys":
            event["Attributes"] = {f"a{n}": "v" for n in range(41)}
        elif kind == "missing_timestamp":
            del event["Timestamp"]
        elif kind == "bad_timestamp":
            event["Timestamp"] = "yesterday"
        else:
            event["Session"] = {"StartTimestamp": iso(at_ms)}
        return event

    def _fill(self, device: Device, count: int, now_ms: int, batch: Batch) -> dict[str, dict[str, Any]]:
        rng = self._rng
        events: dict[str, dict[str, Any]] = {}
        types = batch.types
        upper = device.platform == "ios"
        invalid_rate = self._invalid_rate
        first_ms = now_ms - (count - 1) * EVENT_SPACING_MS
        for n in range(count):
            at_ms = first_ms + n * EVENT_SPACING_MS
            event_id = uuid4(rng, upper=upper)
            if invalid_rate and rng.random() < invalid_rate:
                event = self._invalid_event(at_ms)
                batch.invalid.add(event_id)
            else:
                event = self._next_event(device, at_ms)
            events[event_id] = event
            types[event_id] = event["EventType"]
        return events

    # --- batches -----------------------------------------------------------

    def next_batch(self, now_ms: int) -> Batch:
        """The next PutEvents call, its events dated up to ``now_ms``."""
        rng = self._rng
        self._seq += 1
        first = self._pick()
        batch = Batch(self._seq, first.profile, [], {}, invocation_id=uuid4(rng))
        if first.profile == "boto3":
            drawn = rng.sample(self._backend, min(len(self._backend), BOTO3_ENDPOINTS_PER_REQUEST))
            others = [d for d in drawn if d is not first]
            chosen = [first, *others][: min(BOTO3_ENDPOINTS_PER_REQUEST, self._batch_size)]
            share, extra = divmod(self._batch_size, len(chosen))
            for n, device in enumerate(chosen):
                events = self._fill(device, share + (n < extra), now_ms, batch)
                batch.items.append(Item(device.endpoint_id, device.profile_body, events))
        else:
            if first.profile == "amplify-js":
                endpoint: dict[str, Any] = {}
                if not first.registered:
                    first.registered = True
                    update = {"RequestId": uuid4(rng), "EffectiveDate": iso(now_ms), **first.profile_body}
                    batch.register.append((first.endpoint_id, update))
            else:
                endpoint = {**first.profile_body, "EffectiveDate": iso(now_ms)}
            events = self._fill(first, self._batch_size, now_ms, batch)
            batch.items.append(Item(first.endpoint_id, endpoint, events))
        batch.resend = bool(self._retry_rate) and rng.random() < self._retry_rate
        return batch
