"""Feedback as selection's quality term: the `feedback` metric per served model and context type, rolled up by day.

`rollup_quality` recomputes whole days of rated requests (by the day the rated request arrived, so a replaced
rating stays in its day) into QualityRollup; `quality_figures` sums the last QUALITY_WINDOW of those rows, which is
what the routing snapshot loads (`Snapshot.quality`) with every configuration change and every minute. No worker ever
aggregates the Feedback table: the rollup runs once for all of them, from the experiments' beat task.

Only requests whose model was selected have a context type; feedback on a request that named its model is not
counted (selection weighs models for a context type).
"""

from datetime import UTC, datetime, time, timedelta

from django.db import transaction
from django.db.models import Count, Max, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from experiments.models import FEEDBACK_METRIC, Feedback, QualityRollup

# The window of feedback that selection's quality term averages.
QUALITY_WINDOW = timedelta(days=30)


def _rated():
    """Return the feedback rows that count for quality."""
    return (
        Feedback.objects.filter(metric=FEEDBACK_METRIC, request_created_at__isnull=False)
        .exclude(served_model="")
        .exclude(context_type="")
    )


def rollup_quality(*, since=None, lookback=timedelta(0), now=None):
    """Recompute the days of rated requests whose feedback changed since `since`; return how many days.

    Without since: since the newest rollup was computed (less lookback), or every day when there is none yet.
    """
    now = now or timezone.now()
    if since is None:
        newest = QualityRollup.objects.aggregate(newest=Max("computed_at"))["newest"]
        since = newest - lookback if newest is not None else None
    changed = _rated() if since is None else _rated().filter(updated_at__gte=since)
    days = sorted(changed.annotate(day=TruncDate("request_created_at", tzinfo=UTC)).values_list("day", flat=True)
                  .distinct().order_by())  # fmt: skip
    for day in days:
        _replace_day(day, now)
    return len(days)


def _replace_day(day, now):
    """Recompute one day's rows from the feedback of that day's rated requests."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    grouped = (
        _rated()
        .filter(request_created_at__gte=start, request_created_at__lt=start + timedelta(days=1))
        .values_list("served_model", "context_type")
        .annotate(ratings=Count("pk"), total=Sum("score"))
        .order_by()
    )
    with transaction.atomic():
        QualityRollup.objects.filter(day=day).delete()
        QualityRollup.objects.bulk_create(
            QualityRollup(day=day, model=model, context_type=context_type, ratings=ratings, score_sum=float(total),
                          computed_at=now)  # fmt: skip
            for model, context_type, ratings, total in grouped
        )


def quality_figures(now=None):
    """Return {(model, context type): (ratings, sum of scores)} of the rated requests of the last QUALITY_WINDOW."""
    first_day = ((now or timezone.now()) - QUALITY_WINDOW).astimezone(UTC).date()
    rows = (
        QualityRollup.objects.filter(day__gte=first_day)
        .values_list("model", "context_type")
        .annotate(ratings=Sum("ratings"), total=Sum("score_sum"))
        .order_by()
    )
    return {(model, context_type): (ratings, float(total)) for model, context_type, ratings, total in rows}
