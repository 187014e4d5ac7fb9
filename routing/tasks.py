"""Celery tasks of the routing app: active health checks (scheduled by beat, see CELERY_BEAT_SCHEDULE)."""

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
