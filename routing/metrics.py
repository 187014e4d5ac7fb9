"""Prometheus metrics: `GET /metrics`, and the per-request update that feeds it (see docs/metrics.md).

Each figure is kept where it costs least:

- Per request, `observe(row)`: `routing.request_log.record` hands it every request's RequestLog row, which already
  holds the facts (endpoint, model, instance, outcome, status, latency, TTFT, tokens, cost, attempts). A dict look-up
  of the cached labelled children and a few increments; no I/O beyond writes to memory.
- Per worker, `worker_gauge`: figures a worker holds for itself (its request-log queue, the configuration revision it
  serves, that it is alive), published every PUBLISH_SECONDS by a task each worker runs, and by the answering worker
  just before a scrape; the event loop's lag (`routing.loop_monitor`) is one of them.
- At scrape time, `RoutingCollector`: breaker state, drained and usable instances and in-flight requests per
  instance, read from the answering worker's routing state, which every worker shares through Redis (`REDIS_URL`).

Several workers (gunicorn or `uvicorn --workers`): with PROMETHEUS_MULTIPROC_DIR set, prometheus_client's
multiprocess mode keeps each worker's values in memory-mapped files there and a scrape adds every worker's up,
whichever worker answers. A worker starting (`worker()`) clears out the directory when no other live process uses it
(a new server) and otherwise folds the files of dead workers into one archive per type, so totals survive worker
restarts without the directory growing; a worker stopping removes its live gauges (`mark_process_dead`), and so does
a scrape for workers that died without stopping. Without the directory, values live in this process only: right for
a single worker.
"""

import asyncio
import contextlib
import fcntl
import glob
import hmac
import ipaddress
import logging
import os
import time

from django.conf import settings
from django.http import HttpResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, exposition
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from experiments import feedback
from routing import loop_monitor, request_log, snapshot, state
from routing.errors import AuthenticationFailed, MethodNotAllowed, PermissionDenied
from routing.health import CLOSED, HALF_OPEN, OPEN

logger = logging.getLogger(__name__)

# How often each worker publishes its own figures (`worker_gauge`).
PUBLISH_SECONDS = 1.0
# From 5 ms (a refused or listed request) to 5 minutes (a long stream); Prometheus interpolates inside a bucket.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30)
BREAKER_STATES = (CLOSED, HALF_OPEN, OPEN)
# Headers a proxy adds: a request carrying one came through a proxy, whatever address it claims or arrives from.
FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")
# The classic text format, which every Prometheus reads (our names need none of version 1.0.0's escaping).
CONTENT_TYPE = exposition.CONTENT_TYPE_PLAIN_0_0_4

# No `_created` series: multiprocess mode has none, and both modes answer the same.
disable_created_metrics()
registry = CollectorRegistry(auto_describe=False)

requests_total = Counter(
    "chatvault_requests",
    "Authenticated requests, by how they ended (one per RequestLog row).",
    ["endpoint", "model", "instance", "outcome", "status"],
    registry=registry,
)
request_duration = Histogram(
    "chatvault_request_duration_seconds",
    "Time from a request's arrival to its last byte (a whole stream), as logged in RequestLog.latency_ms.",
    ["endpoint", "model", "instance"],
    buckets=DURATION_BUCKETS,
    registry=registry,
)
time_to_first_token = Histogram(
    "chatvault_time_to_first_token_seconds",
    "Time from a streamed request's arrival to its first token.",
    ["model", "instance"],
    buckets=TTFT_BUCKETS,
    registry=registry,
)
tokens_total = Counter(
    "chatvault_tokens", "Tokens the upstreams reported, by kind (prompt or completion).", ["model", "instance", "kind"],
    registry=registry,
)  # fmt: skip
cost_total = Counter(
    "chatvault_cost_usd", "Cost of the requests served, in US dollars, at the instances' prices.",
    ["model", "instance"], registry=registry,
)  # fmt: skip
retries_total = Counter(
    "chatvault_retries", "Upstream attempts beyond a request's first (retries and failovers).", ["model"],
    registry=registry,
)  # fmt: skip


class _Children:
    """The labelled metric children one kind of request updates, looked up once per label combination."""

    __slots__ = ("requests", "duration", "ttft", "prompt", "completion", "cost", "retries")

    def __init__(self, endpoint, model, instance, outcome, status):
        self.requests = requests_total.labels(endpoint, model, instance, outcome, status)
        self.duration = request_duration.labels(endpoint, model, instance)
        self.ttft = time_to_first_token.labels(model, instance)
        self.prompt = tokens_total.labels(model, instance, "prompt")
        self.completion = tokens_total.labels(model, instance, "completion")
        self.cost = cost_total.labels(model, instance)
        self.retries = retries_total.labels(model)


class Trouble:
    """A failure logged when it starts and when it ends, not every time: a broken metric must not flood the log."""

    def __init__(self, what):
        self.what = what
        self.failing = False

    def failed(self):
        """Log the exception being handled, unless this trouble is already known."""
        if not self.failing:
            self.failing = True
            logger.exception("%s failed (logged again only once it works again)", self.what)

    def over(self):
        """Log that it works again."""
        self.failing = False
        logger.warning("%s works again", self.what)


_children = {}  # (endpoint, model, instance, outcome, status) -> _Children: bounded by the configuration
_observing = Trouble("updating the request metrics")


def observe(row):
    """Count one request from its (storable) RequestLog row; never raise, a metric must not fail a request."""
    get = row.get  # a row holds the fields it was given (tests give few)
    try:
        key = (get("endpoint", ""), get("served_model") or "", get("instance_id") or "", get("outcome", ""),
               get("status_code"))  # fmt: skip
        children = _children.get(key)
        if children is None:
            children = _children[key] = _Children(*key[:4], str(key[4]))
        children.requests.inc()
        if (latency_ms := get("latency_ms")) is not None:
            children.duration.observe(latency_ms / 1000)
        if (ttft_ms := get("ttft_ms")) is not None:
            children.ttft.observe(ttft_ms / 1000)
        if prompt_tokens := get("prompt_tokens"):
            children.prompt.inc(prompt_tokens)
        if completion_tokens := get("completion_tokens"):
            children.completion.inc(completion_tokens)
        if cost := get("cost_usd"):
            children.cost.inc(float(cost))
        if (attempts := get("attempts") or 0) > 1:
            children.retries.inc(attempts - 1)
    except Exception:
        _observing.failed()
        return
    if _observing.failing:
        _observing.over()


# --- per-worker figures -----------------------------------------------------------------------------------------


class WorkerFigure:
    """A number each worker publishes as a gauge, combined over the live workers by its multiprocess mode."""

    def __init__(self, name, documentation, read, mode):
        self.name, self.documentation, self.read, self.mode = name, documentation, read, mode
        self.metric = None  # made when publishing starts, after the multiprocess directory is ready
        self.trouble = Trouble(f"publishing {name}")

    def publish(self):
        """Set the gauge to what read() returns now."""
        if self.metric is None:
            self.metric = Gauge(self.name, self.documentation, registry=registry, multiprocess_mode=self.mode)
        self.metric.set(self.read())


class WorkerCounter(WorkerFigure):
    """A count a worker keeps for itself (it only grows), published as a counter summed over every worker."""

    def __init__(self, name, documentation, read):
        super().__init__(name, documentation, read, mode="")
        self.seen = 0

    def publish(self):
        """Add what was counted since the last publish."""
        if self.metric is None:
            self.metric = Counter(self.name, self.documentation, registry=registry)
        now = self.read()
        self.metric.inc(now - self.seen if now >= self.seen else now)  # less than before: the writer restarted
        self.seen = now


_worker_figures = []


def worker_gauge(name, documentation, read, mode="livesum"):
    """Publish read() from every worker as the gauge `name`: summed over live workers (`livesum`), or their
    `livemax` / `livemin`."""
    _worker_figures.append(WorkerFigure(name, documentation, read, mode))


def worker_counter(name, documentation, read):
    """Publish read(), a count that only grows in each worker, as the counter `name` summed over every worker."""
    _worker_figures.append(WorkerCounter(name, documentation, read))


class ConfigRevision:
    """The configuration revision each worker serves: `chatvault_config_revision{revision}` counts the live workers
    serving each (a revision they left stays at 0 until they restart)."""

    def __init__(self):
        self.metric = None
        self.served = None
        self.trouble = Trouble("publishing chatvault_config_revision")

    def publish(self):
        """Move this worker from the revision it served to the one in force."""
        snap = snapshot.current()
        revision = str(snap.token) if snap is not None and snap.token else ""
        if self.metric is None:
            self.metric = Gauge(
                "chatvault_config_revision",
                "Live workers serving each routing configuration revision (ConfigRevision.token).",
                ["revision"],
                registry=registry,
                multiprocess_mode="livesum",
            )
        if revision != self.served:
            if self.served is not None:
                self.metric.labels(self.served).set(0)
            self.metric.labels(revision).set(1)
            self.served = revision


worker_gauge("chatvault_workers", "Live gateway workers.", lambda: 1)
worker_gauge(
    "chatvault_request_log_pending_rows",
    "Request-log rows queued in the workers and not yet written.",
    lambda: request_log.stats()["pending"],
)
worker_gauge(
    "chatvault_feedback_pending_rows",
    "Feedback rows queued in the workers and not yet written.",
    lambda: feedback.stats()["pending"],
)
# Counts of `routing.request_log.stats()`, each published as a counter: (metric, help, key).
REQUEST_LOG_COUNTS = (
    ("chatvault_request_log_written_rows", "Request-log rows written.", "written"),
    (
        "chatvault_request_log_dropped_rows",
        "Request-log rows given up on (the database refused even their safe form, or stayed down): must stay 0.",
        "dropped",
    ),
    (
        "chatvault_request_log_rewritten_rows",
        "Request-log rows the database refused, written in their safe form instead.",
        "rewritten",
    ),
    (
        "chatvault_unauthenticated_requests",
        "Requests refused for a missing or invalid key (counted, not logged).",
        "unauthenticated_requests",
    ),
    ("chatvault_refused_bodies", "Requests refused (413) for a body over CHATVAULT_MAX_BODY_BYTES.", "refused_bodies"),
)
for _name, _documentation, _key in REQUEST_LOG_COUNTS:
    worker_counter(_name, _documentation, lambda key=_key: request_log.stats()[key])
_worker_figures.append(ConfigRevision())
# The event loop's lag (routing/loop_monitor.py): a stall in production shows here.
worker_gauge(
    "chatvault_event_loop_max_lag_seconds",
    "Largest lateness of the event-loop ticker (every 20 ms) a live worker has seen since it started.",
    lambda: loop_monitor.monitor.max_lag_ms / 1000,
    mode="livemax",
)
worker_counter(
    "chatvault_event_loop_ticks", "Event-loop ticker wake-ups (every 20 ms).", lambda: loop_monitor.monitor.ticks
)
for _threshold in (1, 5, 50):
    worker_counter(
        f"chatvault_event_loop_ticks_late_over_{_threshold}ms",
        f"Event-loop ticker wake-ups more than {_threshold} ms late: the loop was stalled.",
        lambda threshold=_threshold: loop_monitor.monitor.over[threshold],
    )


def publish():
    """Publish this worker's own figures now."""
    for figure in _worker_figures:
        try:
            figure.publish()
        except Exception:
            figure.trouble.failed()
            continue
        if figure.trouble.failing:
            figure.trouble.over()


async def _publish_forever():
    """Publish this worker's figures every PUBLISH_SECONDS."""
    while True:
        publish()
        await asyncio.sleep(PUBLISH_SECONDS)


# --- the multiprocess directory ---------------------------------------------------------------------------------


def _directory():
    """Return the multiprocess directory, or "" when values live in this process only."""
    return settings.PROMETHEUS_MULTIPROC_DIR


@contextlib.contextmanager
def _locked(path):
    """Hold the directory's lock: a worker starting, one stopping and a scrape never see each other's halfway state."""
    with open(os.path.join(path, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _alive(pid):
    """Return whether a process with this id runs (in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _files_by_pid(path):
    """Return {pid: [its value files]} of the directory (archives, which have no pid, left out)."""
    by_pid = {}
    for name in glob.glob(os.path.join(path, "*.db")):
        pid = os.path.basename(name)[:-3].rsplit("_", 1)[-1]
        if pid.isdigit():
            by_pid.setdefault(int(pid), []).append(name)
    return by_pid


def prepare_directory(path):
    """Make the directory ready for this worker: emptied when no other live process uses it (a new server), else
    the files of dead workers folded into the archives (their counts kept) and their live gauges removed."""
    os.makedirs(path, exist_ok=True)
    with _locked(path):
        own = os.getpid()
        by_pid = _files_by_pid(path)
        if not any(_alive(pid) for pid in by_pid if pid != own):
            for name in glob.glob(os.path.join(path, "*.db")):
                os.remove(name)
            return
        dead = [name for pid, names in by_pid.items() if pid == own or not _alive(pid) for name in names]
        for kind in ("counter", "histogram"):
            _archive(path, kind, [name for name in dead if os.path.basename(name).startswith(f"{kind}_")])
        for name in dead:
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)


def _archive(path, kind, names):
    """Fold the value files `names` of one kind into `<kind>_archive.db`, replacing it whole."""
    if not names:
        return
    archive = os.path.join(path, f"{kind}_archive.db")
    sources = [*names, archive] if os.path.exists(archive) else names
    partial = os.path.join(path, f"{kind}_archive.partial")  # not *.db: a scrape never reads it
    with contextlib.suppress(FileNotFoundError):
        os.remove(partial)
    merged = MmapedDict(partial)
    try:
        for metric in MultiProcessCollector.merge(sources, accumulate=False):
            for sample in metric.samples:
                key = mmap_key(metric.name, sample.name, list(sample.labels), list(sample.labels.values()),
                               metric.documentation)  # fmt: skip
                merged.write_value(key, sample.value, 0.0)
    finally:
        merged.close()
    os.replace(partial, archive)


def _forget_dead_workers(path):
    """Remove the live gauges of workers that died without stopping (killed), so they count no more."""
    for pid in _files_by_pid(path):
        if not _alive(pid):
            mark_process_dead(pid, path)


class _Worker:
    """This worker's metrics while it serves: `stop()` ends its publishing and removes its live gauges (once)."""

    def __init__(self, path, publisher):
        self.path = path
        self.publisher = publisher
        self.stopped = False

    async def stop(self):
        """Stop publishing and remove this worker's live gauges; later calls do nothing."""
        if self.stopped:
            return
        self.stopped = True
        self.publisher.cancel()
        if self.path:
            await asyncio.to_thread(_mark_dead, self.path)


@contextlib.asynccontextmanager
async def worker():
    """Run this worker's metrics for as long as the block lasts: the directory made ready first, figures published
    all along, its live gauges removed at the end (or at `stop()` on what it yields, which the ASGI lifespan calls
    before it reports the shutdown complete: the server may exit the process as soon as it has)."""
    path = _directory()
    if path:
        try:
            await asyncio.to_thread(prepare_directory, path)
        except OSError:
            # Serve all the same: requests matter more than their metrics (which fail, and say so, until fixed).
            logger.exception("PROMETHEUS_MULTIPROC_DIR %s cannot be used", path)
    handle = _Worker(path, asyncio.get_running_loop().create_task(_publish_forever()))
    try:
        yield handle
    finally:
        await handle.stop()


def _mark_dead(path):
    """Remove this worker's live gauges."""
    with _locked(path):
        mark_process_dead(os.getpid(), path)


# --- at scrape time ---------------------------------------------------------------------------------------------


def routing_families(snap, routing_state, now):
    """Return the routing state's metric families for every configured instance (pure: reads only)."""
    labels = ["model", "instance"]
    breaker = GaugeMetricFamily(
        "chatvault_breaker_state", "1 for the circuit-breaker state an instance is in.", labels=[*labels, "state"]
    )
    drained = GaugeMetricFamily("chatvault_instance_drained", "1 if an operator drained the instance.", labels=labels)
    usable = GaugeMetricFamily(
        "chatvault_instance_usable",
        "1 if a request may go to the instance now (not drained, has a key, breaker lets it through, under rpm/tpm).",
        labels=labels,
    )
    in_flight = GaugeMetricFamily(
        "chatvault_instance_in_flight_requests", "Requests in flight to the instance, across workers.", labels=labels
    )
    for model in snap.models.values() if snap is not None else ():
        for inst in model.instances:
            current = routing_state.breaker(inst.id).current(now)
            for name in BREAKER_STATES:
                breaker.add_metric([model.name, inst.id, name], 1 if current == name else 0)
            drained.add_metric([model.name, inst.id], 1 if inst.drained else 0)
            ok = not (inst.drained or inst.missing_key or routing_state.over_limit(inst, now))
            usable.add_metric([model.name, inst.id], 1 if ok and routing_state.usable(inst.id, now) else 0)
            in_flight.add_metric([model.name, inst.id], routing_state.total_in_flight(inst.id))
    return [breaker, drained, usable, in_flight]


class _Families:
    """A collector of metric families already gathered (what `generate_latest` takes)."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        """Return the families."""
        return self.families


def _render(live):
    """Return the exposition text of every worker's values and the live families (blocking: reads files)."""
    path = _directory()
    if path:
        with _locked(path):
            _forget_dead_workers(path)
            stored = list(MultiProcessCollector(None, path=path).collect())
    else:
        stored = list(registry.collect())
    return exposition.generate_latest(_Families([*stored, *live]))


async def scrape():
    """Return the metrics text: this worker's figures published first, the routing state read on the event loop
    that owns it, the files read on a thread."""
    publish()
    live = routing_families(snapshot.current(), state.get(), time.time())
    return await asyncio.to_thread(_render, live)


# --- the endpoint -----------------------------------------------------------------------------------------------


def is_local_client(remote_addr, forwarded):
    """Return whether a request comes straight from this machine: a loopback address, through no proxy.

    `forwarded` says whether it carries a proxy's header (X-Forwarded-For, Forwarded, X-Real-IP): its address is
    then the proxy's, or one the ASGI server took from the header, and neither says who asks.
    """
    if forwarded or not remote_addr:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    if getattr(address, "ipv4_mapped", None) is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def has_token(authorization, token):
    """Return whether an Authorization header value is `Bearer <token>` (compared in constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def refusal(request):
    """Return the error that refuses this scrape, or None: the token when CHATVAULT_METRICS_TOKEN is set, else a
    local client."""
    token = settings.CHATVAULT_METRICS_TOKEN
    if token:
        if has_token(request.headers.get("Authorization"), token):
            return None
        return AuthenticationFailed("Metrics need `Authorization: Bearer <CHATVAULT_METRICS_TOKEN>`.")
    forwarded = any(request.META.get(name) for name in FORWARDING_HEADERS)
    if is_local_client(request.META.get("REMOTE_ADDR"), forwarded):
        return None
    return PermissionDenied("Metrics are served to local clients only unless CHATVAULT_METRICS_TOKEN is set.")


async def metrics_view(request):
    """GET /metrics — every worker's metrics in Prometheus' text format."""
    if request.method not in ("GET", "HEAD"):
        return MethodNotAllowed(f"Method {request.method} is not allowed here.").response()
    error = refusal(request)
    if error is not None:
        return error.response()
    return HttpResponse(await scrape(), content_type=CONTENT_TYPE)
