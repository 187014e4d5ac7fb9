"""Celery tasks of the routing app: active health checks, request-log rollups and partitions (scheduled by beat, see
CELERY_BEAT_SCHEDULE)."""

from datetime import timedelta

from celery import shared_task


@shared_task(ignore_result=True)
def probe_instances():
    """Probe every instance that is due; return how many were probed."""
    from routing.probes import instances_probe_due

    return len(instances_probe_due())


@shared_task(ignore_result=True)
def probe_instance(instance_id):
    """Probe one instance now; return whether it answered."""
    from routing.probes import instance_probe

    return instance_probe(instance_id=instance_id).ok


@shared_task(ignore_result=True)
def rollup_request_logs(lookback_seconds=15 * 60):
    """Roll the request log up from the newest rollup, or lookback_seconds back if that is earlier."""
    from routing.rollups import rollup_request_logs as rollup

    rollup(lookback=timedelta(seconds=lookback_seconds))


@shared_task(ignore_result=True)
def maintain_request_log():
    """Create the request log's coming day partitions and drop the expired ones; return what was done."""
    from routing.partitions import maintain

    run = maintain()
    return {"created": run.created, "dropped": run.dropped, "deleted_rows": run.deleted_rows, "skipped": run.skipped}
