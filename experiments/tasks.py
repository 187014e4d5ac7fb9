"""Celery tasks of the experiments app (scheduled by beat, see CELERY_BEAT_SCHEDULE)."""

from datetime import timedelta

from celery import shared_task


@shared_task(ignore_result=True)
def stop_ended_experiments():
    """Stop the running experiments whose end time has passed; return how many were stopped."""
    from experiments.services import stop_ended_experiments as stop

    return stop()


@shared_task(ignore_result=True)
def rollup_experiments(lookback_seconds=15 * 60):
    """Roll the experiments up from the newest rollup, or lookback_seconds back if that is earlier; likewise the
    feedback that selection's quality term reads."""
    from experiments.quality import rollup_quality
    from experiments.rollups import rollup_experiments as rollup

    rollup(lookback=timedelta(seconds=lookback_seconds))
    rollup_quality(lookback=timedelta(seconds=lookback_seconds))
