"""Operator endpoints under `/v1/admin/`: `GET /v1/admin/load-balancer/stats` and `GET /v1/admin/model-selector/stats`.

These are served by Django's full handler (see `chatvault_site.handlers.is_api_path`), not the lean API handler,
because a staff member's browser session must work as well as an admin API key; errors still come in OpenAI's shape.

Operators look here most when something is down, so the endpoint never waits long on the database: its two reads
(a staff session, the latest probes) each get DATABASE_WAIT_SECONDS, on threads of their own that a hung query may
keep, and then the endpoint answers without them.
"""

import logging
import time
from datetime import UTC, datetime

from django.contrib.auth import get_user
from django.db import DatabaseError
from django.db.models import OuterRef, Subquery
from django.http import JsonResponse
from django.utils import timezone

from experiments.results import experiment_summaries
from routing import rollups, state
from routing.api import GatewayView, authenticate_request, current_snapshot
from routing.db_threads import DatabaseThreads
from routing.errors import AuthenticationFailed, GatewayError, InvalidRequest, PermissionDenied
from routing.health import OPEN
from routing.models import InstanceProbe
from routing.snapshot import NO_KEY, NO_KEY_REASON

logger = logging.getLogger(__name__)

# The longest the endpoint waits for one database read before it answers without it.
DATABASE_WAIT_SECONDS = 1.0
# Not Django's per-request thread, nor the loop's default executor (DNS lookups for upstream calls): a query hung in
# a network partition or on a lock keeps its thread until it ends, so it must only ever hold one of these.
_database_threads = DatabaseThreads("admin-api-db")
# Names of the reads whose last try failed: an outage is logged when it starts and when it ends, not on every call.
_failing_reads = set()


class DatabaseUnavailable(GatewayError):
    """The database failed or did not answer in time; as an answer, it means a staff session cannot be checked."""

    status_code = 503
    default_detail = "The database is not answering, so a staff session cannot be checked; an admin API key works."
    default_code = "database_unavailable"


async def read_database(func, *args):
    """Return func(*args) run on an abandonable thread; raise DatabaseUnavailable if it fails or takes too long."""
    name = func.__name__
    try:
        result = await _database_threads.run(func, *args, timeout=DATABASE_WAIT_SECONDS)
    except (DatabaseError, TimeoutError) as exc:
        if name not in _failing_reads:
            _failing_reads.add(name)
            reason = f"no answer within {DATABASE_WAIT_SECONDS:g} s" if isinstance(exc, TimeoutError) else exc
            logger.warning("admin endpoints go on without %s from the database until it answers: %s", name, reason)
        raise DatabaseUnavailable() from exc
    if name in _failing_reads:
        _failing_reads.discard(name)
        logger.warning("admin endpoints read %s from the database again", name)
    return result


def _iso(epoch_seconds):
    """Return epoch seconds as an ISO-8601 UTC time."""
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat()


def _probe_entry(probe):
    """Return one probe result as the stats endpoint shows it."""
    error = probe.error or (f"HTTP {probe.status_code}" if not probe.ok and probe.status_code else None)
    return {
        "at": probe.checked_at.astimezone(UTC).isoformat(),
        "ok": probe.ok,
        "latency_ms": probe.latency_ms,
        "error": error,
    }


def latest_probes(instance_ids):
    """Return {instance id: its latest InstanceProbe} in one query (a correlated subquery on the probe index)."""
    newest = InstanceProbe.objects.filter(instance_id=OuterRef("instance_id")).order_by("-checked_at").values("pk")[:1]
    probes = InstanceProbe.objects.filter(instance_id__in=instance_ids, pk=Subquery(newest))
    return {probe.instance_id: probe for probe in probes}


def instance_stats(inst, routing_state, now, probe=None):
    """Return one instance's breaker, load and latency as seen by this worker (pure).

    `requests`, `error_rate` and the latencies are client traffic; active probes, which feed the same breaker, are
    counted apart in `probes` (ok and failed over the breaker window, and the latest stored result).
    """
    breaker = routing_state.breaker(inst.id)
    current = breaker.current(now)
    # An instance without a key is never routed to, whatever its breaker says.
    return {
        "id": inst.id,
        "api_base": inst.api_base,
        "state": NO_KEY if inst.missing_key else current,
        "reason": NO_KEY_REASON if inst.missing_key else breaker.reason or None,
        "until": _iso(breaker.until) if current == OPEN and not inst.missing_key else None,
        "drained": inst.drained,
        "in_flight": routing_state.total_in_flight(inst.id),
        **routing_state.summary(inst.id, now),
        "probes": {
            **routing_state.probe_counts(inst.id, now),
            "last": _probe_entry(probe) if probe is not None else None,
        },
    }


async def load_balancer_stats(*, snapshot, routing_state, now):
    """Return every model's strategy and the live state of each of its instances.

    Only the latest probes come from the database (one query, off the event loop); the rest is read from the
    snapshot and this worker's routing state, on the event loop that owns it. Without the database (or when it does
    not answer within DATABASE_WAIT_SECONDS), `probes.last` is null: breaker states matter most during an outage, so
    they are still shown.
    """
    ids = [inst.id for model in snapshot.models.values() for inst in model.instances]
    try:
        probes = await read_database(latest_probes, ids) if ids else {}
    except DatabaseUnavailable:
        probes = {}
    return {
        "models": [
            {
                "model": model.name,
                "strategy": model.strategy,
                "instances": [
                    instance_stats(inst, routing_state, now, probes.get(inst.id)) for inst in model.instances
                ],
            }
            for _, model in sorted(snapshot.models.items())
        ]
    }


async def _authorize(request, snap):
    """Let through an admin API key or a staff session; raise AuthenticationFailed or PermissionDenied otherwise.

    A presented key decides alone (a bad key is 401 even in a staff member's browser), so scripts get a clear answer.
    """
    if request.headers.get("Authorization"):
        key = authenticate_request(request, snap)
        if not key.is_admin:
            raise PermissionDenied(
                "This API key may not call the admin endpoints; create one with `create_api_key --admin`.",
                code="admin_key_required",
            )
        return
    # The session and its user are database reads: Django's own `auser()` would wait on them without a bound.
    user = await read_database(get_user, request._request)
    if not user.is_authenticated:
        raise AuthenticationFailed(
            "Send an admin API key ('Authorization: Bearer <key>') or sign in to the admin as staff.",
            code="missing_api_key",
        )
    if not (user.is_active and user.is_staff):
        raise PermissionDenied("Only staff members may call the admin endpoints.", code="staff_required")


class LoadBalancerStatsView(GatewayView):
    """GET /v1/admin/load-balancer/stats — breaker state, load and latency of every instance, per model.

    No RequestLog row is written for these calls: the log is for model traffic, and operator polling would only
    crowd it (and its cost and usage reports).
    """

    async def get(self, request):
        """Return the load balancer's view of every model and instance."""
        snap = await current_snapshot()
        await _authorize(request, snap)
        stats = await load_balancer_stats(snapshot=snap, routing_state=state.get(), now=time.time())
        return JsonResponse(stats)


class ModelSelectorStatsView(GatewayView):
    """GET /v1/admin/model-selector/stats?window=1h|24h|7d — per model: traffic, success, latency, cost, selections.

    Read from the request-log rollups only (one query of at most a few hundred rows per model and instance), never
    from the log itself, so it stays fast however long the log is; read and summed on a database thread, off the
    event loop that serves model traffic. The figures live in the database: when it does not answer within
    DATABASE_WAIT_SECONDS, the answer is a 503 (`database_unavailable`). No RequestLog row, as above. `experiments`
    summarises each running experiment (variants, units, the primary metric's verdicts, the SRM flag) from the
    experiment rollups (`experiments.results.experiment_summaries`), over the experiment's whole life, not the window.
    """

    async def get(self, request):
        """Return the selector's figures over the window."""
        snap = await current_snapshot()
        await _authorize(request, snap)
        name = request.query_params.get("window", rollups.DEFAULT_WINDOW)
        if name not in rollups.WINDOWS:
            raise InvalidRequest(
                f"window must be one of {', '.join(rollups.WINDOWS)}.", param="window", code="invalid_window"
            )
        end = timezone.now()
        start = rollups.window_start(end, rollups.WINDOWS[name])
        stats = await read_database(rollups.model_selector_stats, start, end, sorted(snap.models))
        experiments = await read_database(experiment_summaries)
        window = {"name": name, "start": start.isoformat(), "end": end.astimezone(UTC).isoformat()}
        return JsonResponse({"window": window, **stats, "experiments": experiments})
