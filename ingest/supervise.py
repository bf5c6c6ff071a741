"""`ingest run` as a supervisor: the roles `deploy/` runs, as processes of one machine.

It earns its size (about 520 lines): a child's whole life (start, status,
readiness, restart with backoff, stop), the drain across processes in order,
and one /readyz and one /metrics for all of them.

With ``INGEST_EDGE_PROCESSES`` not 0 (by default one per CPU), `ingest run`
starts the embedded broker (unless ``INGEST_KAFKA_BOOTSTRAP`` names one),
brings the store's schema up to date, and then supervises:

- ``edge-0`` … ``edge-{N-1}``: `ingest edge`, all listening on the API port
  with SO_REUSEPORT, among which the kernel spreads new connections. This
  process keeps the port bound (never listening, so it takes no
  connections): port 0 names one port for all of them, and no other program
  takes it while an edge restarts.
- ``worker-endpoints``, ``worker-kpis``, ``worker-streams`` and
  ``worker-jobs``: `ingest worker endpoints`, `ingest worker kpis`, `ingest
  worker streams` and `ingest worker jobs`.

Each child runs in a session of its own (a terminal's Ctrl-C reaches only
this process, which then drains in order), is killed by the kernel if this
process dies, even by SIGKILL (PR_SET_PDEATHSIG), and writes to this
process's stderr, every line naming it.

**Readiness**: this process's /readyz answers 200 once every child's
/readyz does (each polled every READY_POLL_S) and this process is neither
starting nor draining; it names the first child that is not ready, and
lists under ``degraded`` what each child lists (a parked event stream).
**Metrics**: this process's /metrics is its own registry and every child's
/metrics, fetched when scraped, each sample labelled with the process that
reported it (``process="run"``, ``"edge-0"``, ``"worker-kpis"`` …).

**A child that exits** while the pipeline is not draining is logged and
started again after a backoff: RESTART_MIN_S, doubling up to RESTART_MAX_S,
back to the minimum once a child has run for RESTART_RESET_S. During
start-up, before the pipeline first serves, a child that exits fails
`ingest run` instead (a bad configuration must not restart forever).

**Drain** (SIGTERM or SIGINT), in the in-process order: readiness off; the
edges SIGTERMed together, each stops accepting, answers what is in flight
and flushes its producer; then the workers, each applying its partitions to
their end and committing; then the broker stops. Each step is bounded by
``INGEST_DRAIN_TIMEOUT_S`` plus STOP_MARGIN_S, after which what is left of
it is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import orjson
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from ingest.api.probes import Check, Probes, http_get
from ingest.errors import SupervisorError
from ingest.kafka.broker import die_with_parent
from ingest.keys import MasterKey, bootstrap_admin
from ingest.launch import Child, Status, reachable, write_status
from ingest.metrics import HttpMetrics, SupervisorMetrics
from ingest.process import STARTING, kafka_of, probe_listener, settle_gc, stop_on_signals
from ingest.settings import Settings
from ingest.store.backends import open_store

log = logging.getLogger(__name__)

# A child's start-up (interpreter, imports, store, Kafka) takes 1-3 s here;
# this bounds a hang on a loaded machine, not a normal start.
START_TIMEOUT_S = 60.0
# How often each child's /readyz is asked; readiness lags a child by this.
READY_POLL_S = 0.5
# One probe or scrape of a child; a child slower than this is not ready, and
# its samples are left out of that scrape.
PROBE_TIMEOUT_S = 2.0
# The largest /metrics answer read from one child (a few hundred KiB at most
# with its closed label sets); beyond it the scrape fails.
MAX_SCRAPE_BYTES = 16 * 1024 * 1024
# Restart backoff: a crash loop costs at most one start per RESTART_MAX_S.
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0
# Beyond the drain deadline a child gets this long to exit before SIGKILL
# (its own drain is bounded by the same deadline; this covers its exit).
STOP_MARGIN_S = 5.0
# Between looks for a starting child's status file.
STATUS_POLL_S = 0.05


class Supervised:
    """One child: its command, and the process now running it."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], status_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.status_path = status_path
        self.process: asyncio.subprocess.Process | None = None
        self.probes: tuple[str, int] | None = None
        self.ready = False
        self.reason = "starting"  # why it is not ready, as its /readyz said
        self.degraded: list[str] = []  # what its /readyz said is degraded
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        return 0 if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def is_edge(self) -> bool:
        return self.name.startswith("edge-")

    async def start(self) -> None:
        self.status_path.unlink(missing_ok=True)
        self.ready = False
        self.reason = "starting"
        self.probes = None
        # Before the spawn, so a spawn that fails counts as a start that died
        # at once (the restart backoff keeps growing).
        self.started_at = asyncio.get_running_loop().time()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        log.info("%s started (pid %d)", self.name, self.pid)

    async def wait_status(self, timeout_s: float, *, abandon: asyncio.Event) -> bool:
        """Until the child has written its status file (→ True, its probe
        address read) or ``abandon`` is set (→ False). SupervisorError if it
        exits first or ``timeout_s`` passes."""
        assert self.process is not None
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.status_path.exists():
            if abandon.is_set():
                return False
            if self.process.returncode is not None:
                raise SupervisorError(f"{self.name} exited {self.process.returncode} before it served")
            if asyncio.get_running_loop().time() > deadline:
                raise SupervisorError(f"{self.name} wrote no status in {timeout_s:g} s")
            await asyncio.sleep(STATUS_POLL_S)  # polling a file the child writes
        status = Status.from_json(self.status_path.read_bytes())
        self.probes = reachable(status.probes or ":0")
        return True

    async def poll_ready(self) -> bool:
        """Ask the child's /readyz now; → and remember whether it said 200,
        and the reason it gave if not."""
        if not self.running:
            self.ready, self.reason = False, "not running"
        elif self.probes is None:
            self.ready, self.reason = False, "starting"
        else:
            try:
                code, body = await http_get(
                    self.probes, "/readyz", max_bytes=64 * 1024, timeout_s=PROBE_TIMEOUT_S
                )
                self.ready = code == 200
                self.reason, self.degraded = _reason(body)
            except (OSError, TimeoutError, ValueError):
                # Not answering (starting, stuck or gone): not ready.
                self.ready, self.reason = False, "its /readyz does not answer"
        return self.ready

    async def stop(self, timeout_s: float) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; → its exit code (None if
        it was not running)."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                log.error(  # noqa: TRY400 - a deadline passed; there is no traceback to show
                    "%s (pid %d) did not stop within %g s: killed", self.name, process.pid, timeout_s
                )
                process.kill()
                await process.wait()
        self.ready = False
        return process.returncode


def _reason(body: bytes) -> tuple[str, list[str]]:
    """The reason a /readyz answer gives (ingest.api.probes), or a stand-in;
    and what it lists as degraded."""
    try:
        answer = orjson.loads(body)
        reason, degraded = answer.get("reason"), answer.get("degraded")
    except (orjson.JSONDecodeError, AttributeError):
        reason, degraded = None, None
    notes = [str(note) for note in degraded[:100]] if isinstance(degraded, list) else []
    return (str(reason) if reason else "not ready"), notes


def _labelled(families: Iterable[Metric], process: str) -> Iterable[Metric]:
    for family in families:
        family.samples = [s._replace(labels={"process": process, **s.labels}) for s in family.samples]
        yield family


class _Merged:
    """Metric families of several processes as one collector: one family per
    name, its samples from every process (each labelled with its process)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families: dict[str, Metric] = {}
        for family in families:
            known = self._families.get(family.name)
            if known is None:
                self._families[family.name] = family
            else:
                known.samples.extend(family.samples)

    def collect(self) -> Iterable[Metric]:
        return self._families.values()


class Supervisor:
    """The children, started together; entered once every child serves;
    on exit, the drain (module docstring). A child that dies meanwhile is
    restarted by a task of this object's own."""

    def __init__(
        self,
        children: Sequence[Supervised],
        *,
        drain_timeout_s: float,
        metrics: SupervisorMetrics,
        changed: Callable[[], None],
    ) -> None:
        self.children = list(children)
        self._stop_timeout_s = drain_timeout_s + STOP_MARGIN_S
        self._metrics = metrics
        self._changed = changed
        self._draining = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.clean = True  # every child stopped with exit code 0 in the drain

    async def __aenter__(self) -> Supervisor:
        try:
            await asyncio.gather(*(child.start() for child in self.children))
            await asyncio.wait_for(self._first_start(), START_TIMEOUT_S)
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError):
                waiting = ", ".join(child.name for child in self.children if not child.ready)
                raise SupervisorError(f"not ready within {START_TIMEOUT_S:g} s: {waiting}") from exc
            raise
        for child in self.children:
            self._own(self._watch(child), f"{child.name} watch")
        self._own(self._poll(), "readiness poll")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _first_start(self) -> None:
        await asyncio.gather(
            *(child.wait_status(START_TIMEOUT_S, abandon=self._draining) for child in self.children)
        )
        while not all([await child.poll_ready() for child in self.children]):
            for child in self.children:
                if not child.running:
                    assert child.process is not None
                    raise SupervisorError(f"{child.name} exited {child.process.returncode} before it served")
            await asyncio.sleep(READY_POLL_S)  # until every child's /readyz says 200

    def _own(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        task.add_done_callback(self._ended)
        self._tasks.append(task)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def _poll(self) -> None:
        while not self._draining.is_set():
            ready = await asyncio.gather(*(child.poll_ready() for child in self.children))
            for child, is_ready in zip(self.children, ready, strict=True):
                self._metrics.ready.labels(child.name).set(is_ready)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._draining.wait(), READY_POLL_S)

    async def _watch(self, child: Supervised) -> None:
        """Restart ``child`` whenever it exits, until the drain."""
        loop = asyncio.get_running_loop()
        backoff_s = RESTART_MIN_S
        while True:
            assert child.process is not None
            exited = asyncio.ensure_future(child.process.wait())
            draining = asyncio.ensure_future(self._draining.wait())
            await asyncio.wait((exited, draining), return_when=asyncio.FIRST_COMPLETED)
            draining.cancel()
            if self._draining.is_set():
                exited.cancel()
                return
            code = exited.result()
            child.ready = False
            ran_s = loop.time() - child.started_at
            if ran_s >= RESTART_RESET_S:
                backoff_s = RESTART_MIN_S
            log.error(
                "%s (pid %d) exited %s after %.1f s; starting it again in %g s",
                child.name,
                child.pid,
                _exit_text(code),
                ran_s,
                backoff_s,
            )
            self._metrics.restarts.labels(child.name).inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._draining.wait(), backoff_s)
                return  # drained while waiting: nothing to restart
            backoff_s = min(2 * backoff_s, RESTART_MAX_S)
            try:
                await child.start()
            except OSError as exc:  # out of processes or descriptors: try again after the backoff
                log.error("%s could not be started: %s", child.name, exc)  # noqa: TRY400 - no traceback helps
                continue  # the old process is still the one waited on: it has exited, so the backoff follows
            try:
                if not await child.wait_status(START_TIMEOUT_S, abandon=self._draining):
                    return
            except SupervisorError as exc:
                log.error("%s", exc)  # noqa: TRY400 - the message is the whole story
                if child.running and child.process is not None:
                    child.process.kill()  # wrote no status in time: stuck in its start-up
                continue
            self._changed()

    async def stop(self) -> None:
        """The drain: idempotent. Edges first, together; then the workers."""
        if self._draining.is_set():
            return
        self._draining.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for group in (
            [child for child in self.children if child.is_edge],
            [child for child in self.children if not child.is_edge],
        ):
            codes = await asyncio.gather(*(child.stop(self._stop_timeout_s) for child in group))
            for child, code in zip(group, codes, strict=True):
                if code is None:
                    continue
                log.info("%s (pid %d) stopped: %s", child.name, child.pid, _exit_text(code))
                self.clean = self.clean and code == 0

    async def render_metrics(self) -> bytes:
        """This process's registry and every child's /metrics, labelled by process."""

        async def scrape(child: Supervised) -> list[Metric]:
            if not child.running or child.probes is None:
                return []
            try:
                code, body = await http_get(
                    child.probes, "/metrics", max_bytes=MAX_SCRAPE_BYTES, timeout_s=PROBE_TIMEOUT_S
                )
                if code == 200:
                    return list(_labelled(text_string_to_metric_families(body.decode()), child.name))
                failure = f"answered {code}"
            except (OSError, TimeoutError, ValueError) as exc:
                failure = str(exc) or type(exc).__name__
            log.warning("scraping %s's /metrics failed: %s", child.name, failure)
            self._metrics.scrape_failures.labels(child.name).inc()
            return []

        scraped = await asyncio.gather(*(scrape(child) for child in self.children))
        own = list(_labelled(REGISTRY.collect(), "run"))
        merged = _Merged([*own, *(family for families in scraped for family in families)])
        return await asyncio.to_thread(generate_latest, merged)


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"on {signal.Signals(-code).name}"
    return f"with code {code}"


def _hold_port(host: str, port: int) -> socket.socket:
    """``host:port`` bound with SO_REUSEPORT and never listened on: the port
    the edges share (port 0 picks one free port for all of them)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    held = socket.socket(family, kind, proto)
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(address)
    except OSError as exc:
        held.close()
        raise SupervisorError(f"the API port {host}:{port} is not free: {exc.strerror}") from exc
    return held


def children_of(
    settings: Settings,
    *,
    bootstrap: str,
    idempotence: bool,
    port: int,
    metrics_url: str | None = None,
) -> list[Supervised]:
    """The processes `ingest run` supervises, with the environment each
    starts in: this process's own, with where to reach the broker, the store
    and the shared port, and probes on a free loopback port of their own;
    the console reads stream health from ``metrics_url`` (this process's
    /metrics, every child's samples) unless the operator named another.
    The same processes with the embedded broker as with a Kafka cluster:
    the workers' consumers wait out the gaps Tansu shows when producers
    append to one partition at once (:mod:`ingest.kafka.gapless`)."""
    data_dir = settings.data_dir.resolve()
    run_dir = data_dir / "processes"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ) | {
        "INGEST_DATA_DIR": str(data_dir),
        "INGEST_KAFKA_BOOTSTRAP": bootstrap,
        # What this process read it as (one with the embedded broker), which
        # the children, given a bootstrap, would read otherwise.
        "INGEST_KAFKA_PARTITIONS": str(settings.topic_partitions),
        "INGEST_KAFKA_IDEMPOTENCE": "true" if idempotence else "false",
        "INGEST_HOST": settings.host,
        "INGEST_PORT": str(port),
        "INGEST_PROBE_HOST": "127.0.0.1",
        "INGEST_PROBE_PORT": "0",
    }
    if metrics_url is not None:
        env.setdefault("INGEST_CONSOLE_STREAM_METRICS_URL", metrics_url)
    roles: list[tuple[str, list[str]]] = [
        (f"edge-{index}", ["edge", "--reuse-port"]) for index in range(settings.edge_process_count)
    ]
    roles += [
        ("worker-endpoints", ["worker", "endpoints"]),
        ("worker-kpis", ["worker", "kpis"]),
        ("worker-streams", ["worker", "streams"]),
        ("worker-jobs", ["worker", "jobs"]),
    ]
    children = []
    for name, command in roles:
        status_path = run_dir / f"{name}.json"
        argv = [sys.executable, "-m", "ingest", *command, "--process-name", name]
        children.append(Supervised(name, [*argv, "--status-file", str(status_path)], env, status_path))
    return children


async def supervise(settings: Settings, *, status_file: Path | None = None) -> int:
    """`ingest run` with child processes until SIGINT/SIGTERM, then the drain
    (module docstring); → 0 when every child stopped cleanly, else 1."""
    stopping = asyncio.Event()
    stop_on_signals(stopping)
    async with AsyncExitStack() as stack:
        checks: list[Check] = [STARTING, ("draining", lambda: not stopping.is_set())]
        metrics = SupervisorMetrics(REGISTRY)
        probes = Probes(checks, REGISTRY)
        probe_address = await probe_listener(stack, settings, probes, HttpMetrics(REGISTRY))
        bootstrap, idempotence, embedded = await kafka_of(stack, settings, "run")
        await _prepare_store(settings)
        held = _hold_port(settings.host, settings.port)
        stack.callback(held.close)
        port = int(held.getsockname()[1])
        own = probe_address.replace("0.0.0.0:", "127.0.0.1:", 1)
        children = children_of(
            settings,
            bootstrap=bootstrap,
            idempotence=idempotence,
            port=port,
            metrics_url=f"http://{own}/metrics",
        )
        api = f"{settings.host}:{port}"

        def status() -> Status:
            listed = tuple(
                Child(c.name, c.pid, None if c.probes is None else f"{c.probes[0]}:{c.probes[1]}")
                for c in children
            )
            return Status(
                os.getpid(), api, kafka=bootstrap, broker=embedded, probes=probe_address, children=listed
            )

        def changed() -> None:
            if status_file is not None:
                write_status(status_file, status())

        log.info(
            "supervising %d edge processes on http://%s and %s",
            settings.edge_process_count,
            api,
            ", ".join(child.name for child in children if not child.name.startswith("edge-")),
        )
        supervisor = await stack.enter_async_context(
            Supervisor(children, drain_timeout_s=settings.drain_timeout_s, metrics=metrics, changed=changed)
        )
        probes.render = supervisor.render_metrics
        probes.explain = functools.partial(_not_ready, children)
        probes.degraded.append(lambda: [f"{c.name}: {note}" for c in children for note in c.degraded])
        settle_gc()
        if status_file is not None:
            changed()
            stack.callback(status_file.unlink, missing_ok=True)
        checks.remove(STARTING)
        log.info(
            "edge listening on http://%s (the Pinpoint API, %d processes)", api, settings.edge_process_count
        )
        await stopping.wait()
        log.info("draining: the edges first, then the workers, then the broker")
    if not supervisor.clean:
        log.error("a process did not stop cleanly (its exit is logged above)")
        return 1
    log.info("stopped cleanly")
    return 0


def _not_ready(children: Sequence[Supervised]) -> str | None:
    """The first child that is not ready, and the reason its /readyz gave."""
    for child in children:
        if not (child.running and child.ready):
            return f"{child.name}: {child.reason}"
    return None


async def _prepare_store(settings: Settings) -> None:
    """The master key, the store's schema up to date and, on the first start
    with authentication on, the admin key and its credentials file; before
    any child opens the store."""
    # Loaded (on a first start: generated) here, once, so that the children
    # all read the one key rather than race to generate their own.
    master = await asyncio.to_thread(MasterKey.load, settings)
    store = await open_store(settings.store_url, data_dir=settings.data_dir)
    try:
        if settings.auth == "sigv4":
            await bootstrap_admin(store, master, settings.data_dir)
    finally:
        await store.close()
