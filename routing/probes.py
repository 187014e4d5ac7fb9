"""Active health checks: probe instances through their adapter and store each result as an InstanceProbe row.

Every gateway worker reads new rows (`snapshot.poll_probes`) and feeds them to its circuit breakers, so a failed
probe counts like a failed request: an instance that is down is taken out of rotation before clients hit it.

Probes run from Celery beat (`routing.tasks.probe_instances`, every few seconds; the per-instance interval is
enforced here, so admins tune it in RoutingSettings without restarting beat) or from `manage.py probe_instances`.
The database is only touched before and after a round: configs are loaded first, the probes run concurrently in
one event loop, then the rows are written in one insert.
"""

import asyncio
import dataclasses
import logging
import time
from datetime import datetime, timedelta

from django.db.models import Max, Q
from django.utils import timezone

from routing import adapters, snapshot, storable
from routing.models import InstanceProbe, ProviderInstance, RoutingSettings

logger = logging.getLogger(__name__)

PROBE_RETENTION = timedelta(hours=24)


@dataclasses.dataclass(slots=True)
class _Target:
    """One instance to probe: its resolved config, or why it could not be built."""

    instance_id: str
    config: snapshot.InstanceConfig | None
    config_error: str = ""


def _target(inst):
    """Return the probe target for a ProviderInstance loaded with its provider and model."""
    try:
        return _Target(inst.id, snapshot.instance_config(inst, inst.model))
    except Exception as exc:  # an undecryptable key or a missing env var must show up as a failed probe
        logger.warning("instance %s not probed: its configuration cannot be loaded", inst.id, exc_info=True)
        return _Target(inst.id, None, f"configuration cannot be loaded: {exc.__class__.__name__}")


async def _probe(target, timeout):
    """Probe one target and return the InstanceProbe fields (without the instance)."""
    checked_at = timezone.now()
    if target.config is None:
        return {"checked_at": checked_at, "ok": False, "error": target.config_error}
    config = target.config
    status_code = None
    error = ""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await adapters.probe(config)
    except adapters.UpstreamFailure as exc:
        status_code = exc.status
        error = f"HTTP {exc.status}: {exc.message}" if exc.status else exc.message
    except TimeoutError:
        error = f"timed out after {timeout:g}s"
    except Exception as exc:  # one broken probe must not lose the results of the rest of the round
        logger.exception("probe of instance %s failed unexpectedly", config.id)
        error = f"probe failed: {exc.__class__.__name__}"
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    return {
        "checked_at": checked_at,
        # Any non-2xx is a failed probe, a 400 included: a deployment whose model or key the upstream does not know
        # answers 400 to every request, and a green check beside it would hide it.
        "ok": not error,
        "status_code": status_code,
        "latency_ms": latency_ms,
        "error": storable.text(error, 1000),  # an upstream's words (masked by the adapter seam), shown in admin
    }


def _load_litellm_if_needed(targets):
    """Import litellm before a round that needs it: the import takes seconds and would stall every probe."""
    if any(t.config is not None and not adapters.uses_passthrough(t.config) for t in targets):
        from routing.adapters import litellm_sdk

        litellm_sdk.load()


def _run(targets, timeout):
    """Probe the targets concurrently and return unsaved InstanceProbe rows, in the same order."""

    async def round_():
        return await asyncio.gather(*(_probe(t, timeout) for t in targets))

    _load_litellm_if_needed(targets)
    results = asyncio.run(round_())
    return [InstanceProbe(instance_id=t.instance_id, **fields) for t, fields in zip(targets, results, strict=True)]


def _instances():
    """Return ProviderInstance rows with what a probe config needs."""
    return ProviderInstance.objects.select_related("provider", "model")


def instance_probe(*, instance_id: str) -> InstanceProbe:
    """Probe one instance now, whatever its state and schedule, and store the result."""
    inst = _instances().get(pk=instance_id)
    timeout = RoutingSettings.load().health_check_timeout_seconds
    (row,) = _run([_target(inst)], timeout)
    row.save()
    return row


def instances_probe_due(*, now: datetime | None = None, ignore_interval: bool = False) -> list[InstanceProbe]:
    """Probe every serving instance whose last probe is older than the interval; prune day-old results.

    Serving means enabled, not drained, of an enabled model. An interval of 0 turns probing off (unless
    `ignore_interval`, for an operator's one-off round).
    """
    now = now or timezone.now()
    InstanceProbe.objects.filter(checked_at__lt=now - PROBE_RETENTION).delete()
    settings = RoutingSettings.load()
    interval = settings.health_check_interval_seconds
    if not interval and not ignore_interval:
        return []
    instances = _instances().filter(enabled=True, drained=False, model__enabled=True)
    if not ignore_interval:
        instances = instances.annotate(last_checked=Max("probes__checked_at")).filter(
            Q(last_checked__isnull=True) | Q(last_checked__lte=now - timedelta(seconds=interval))
        )
    targets = [_target(inst) for inst in instances.order_by("id")]
    if not targets:
        return []
    # Two overlapping rounds (a slow round and the next beat tick on another worker process) can probe an
    # instance twice; that only adds a result, so no lock is taken.
    return InstanceProbe.objects.bulk_create(_run(targets, settings.health_check_timeout_seconds))
