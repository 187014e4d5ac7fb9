"""Celery tasks of the experiments app (scheduled by beat, see CELERY_BEAT_SCHEDULE)."""

from celery import shared_task


@shared_task(ignore_result=True)
def stop_ended_experiments():
    """Stop the running experiments whose end time has passed; return how many were stopped."""
    from experiments.services import stop_ended_experiments as stop

    return stop()
