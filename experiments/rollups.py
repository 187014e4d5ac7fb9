"""Experiment rollups: per variant and hour (charts, latency percentiles) and per unit (the results' observations).

`rollup_experiments` recomputes, from the request log and the feedback, everything a window of time changed:

- VariantRollup: whole hours from the start of `since`'s hour through the open hour, for every experiment, plus the
  hours of requests rated in the window (feedback counts in the hour of the request it rates), replaced;
- UnitRollup: every unit that made a request or got feedback in the window, recomputed from ALL its rows in the
  experiment (the unit's totals over the whole experiment), replaced.

So a rerun gives the same rows, and a late row (a long stream is logged when it ends; feedback comes later still)
is counted by the next run whose window holds its write. When retention drops old log rows (`routing.partitions`),
`retire_units` first adds their units' totals to RetiredUnitTotals, which a unit's recomputation adds back, and the
hours of dropped rows are never recomputed: the rollups outlive the log. Every figure is grouped in SQL (Django's
ORM, so SQLite works too); Python only assembles the grouped rows. Per-request metrics: success_rate is 1 per request
whose outcome is ok, else 0; latency_ms and ttft_ms are of successful requests; tokens and cost of the requests that
have them. A feedback metric that shares a built-in metric's name is left out (the built-in one is what results
mean by it).
"""

import dataclasses
from datetime import UTC, timedelta

from django.db import connection, transaction
from django.db.models import Count, F, FloatField, Max, Min, Q, Sum
from django.db.models.functions import Cast, Coalesce, TruncHour
from django.utils import timezone

from experiments.models import BUILTIN_METRICS, Feedback, RetiredUnitTotals, UnitRollup, VariantRollup
from routing import histogram, partitions
from routing.models import Outcome, RequestLog
from routing.rollups import floor_hour, histogram_bucket

# Hours recomputed per transaction: bounds the time a bucket's readers wait on the replacement.
CHUNK = timedelta(hours=6)
# Units recomputed per transaction (and per IN list).
UNIT_BATCH = 5000
# Postgres advisory lock held by a run while it replaces rows, so two runs (beat and a hand run) take turns.
_LOCK_KEY = 0x6376_6578_7072  # "cvexpr"
# The per-request metrics with a column of their own: {metric: only successful requests count}.
REQUEST_METRICS = {
    "latency_ms": True,
    "ttft_ms": True,
    "prompt_tokens": False,
    "completion_tokens": False,
    "cost_usd": False,
}
_OK = Q(outcome=Outcome.OK)
# The totals a unit's rows add up to, in UnitRollup and RetiredUnitTotals alike.
TOTALS = (
    "requests",
    "successes",
    *(f"{metric}_{part}" for metric in REQUEST_METRICS for part in ("n", "sum")),
)


@dataclasses.dataclass(slots=True)
class RollupRun:
    """What one run recomputed: the window, the requests in its hours and the rows written."""

    start: object = None
    end: object = None
    requests: int = 0
    variant_rows: int = 0
    unit_rows: int = 0


def rollup_experiments(*, since=None, until=None, lookback=timedelta(0)):
    """Recompute and replace the experiment rollups of everything written from since's hour to until; return the run.

    Without since: from the newest variant rollup's hour, or lookback before now if that is earlier, or the first
    experiment row of the request log when nothing was rolled up yet.
    """
    now = timezone.now()
    if since is None:
        since = _resume_from(now, lookback)
        if since is None:
            return RollupRun()
    run = RollupRun(start=floor_hour(since), end=floor_hour(until or now) + timedelta(hours=1))
    kept_from = _kept_hours_from()
    _replace_hours(run, kept_from)
    _replace_rated_hours(run, kept_from)
    _replace_units(run)
    return run


def _kept_hours_from():
    """Return the first hour whose log rows retention has not dropped (hours before it keep their rollups), or None."""
    purged = partitions.kept_since()
    return None if purged is None else floor_hour(purged + timedelta(hours=1) - timedelta(microseconds=1))


def _experiment_logs():
    """Return the request log rows that belong to an experiment (the partial indexes' condition)."""
    return RequestLog.objects.exclude(experiment="").order_by()


def _experiment_feedback():
    """Return the feedback on requests in an experiment, on metrics results read as feedback."""
    return Feedback.objects.exclude(experiment="").exclude(metric__in=BUILTIN_METRICS).order_by()


def _resume_from(now, lookback):
    """Return where a run without since starts, or None when no request was in an experiment."""
    newest = VariantRollup.objects.order_by("-bucket_start").values_list("bucket_start", flat=True).first()
    if newest is not None:
        return min(newest, now - lookback)
    return _experiment_logs().aggregate(first=Min("created_at"))["first"]


def _take_turns():
    """Wait for any other run's transaction to end (Postgres; SQLite lets one writer in at a time anyway)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])


# --- per variant and hour -----------------------------------------------------------------------------------------


def _replace_hours(run, kept_from):
    """Replace the variant rollups of every hour of the run whose rows are kept, chunk by chunk; hours without
    requests cost nothing."""
    chunk_start = run.start if kept_from is None else max(run.start, kept_from)
    while chunk_start < run.end:
        with transaction.atomic():
            _take_turns()
            first = (
                _experiment_logs()
                .filter(created_at__gte=chunk_start, created_at__lt=run.end)
                .aggregate(first=Min("created_at"))["first"]
            )
            if first is None or floor_hour(first) > chunk_start:
                chunk_end = run.end if first is None else floor_hour(first)
                VariantRollup.objects.filter(bucket_start__gte=chunk_start, bucket_start__lt=chunk_end).delete()
            else:
                chunk_end = min(chunk_start + CHUNK, run.end)
                rows = _replace(chunk_start, chunk_end)
                run.variant_rows += len(rows)
                run.requests += sum(row.requests for row in rows)
        chunk_start = chunk_end


def _replace_rated_hours(run, kept_from):
    """Replace the hours before the run's window whose requests were rated (or re-rated) inside it and are kept."""
    rated = (
        _experiment_feedback()
        .filter(updated_at__gte=run.start, updated_at__lt=run.end)
        .annotate(bucket=TruncHour(Coalesce("request_created_at", "created_at"), tzinfo=UTC))
        .filter(bucket__lt=run.start)
    )
    if kept_from is not None:
        rated = rated.filter(bucket__gte=kept_from)
    for experiment, bucket in list(rated.values_list("experiment", "bucket").distinct()):
        with transaction.atomic():
            _take_turns()
            run.variant_rows += len(_replace(bucket, bucket + timedelta(hours=1), experiment=experiment))


def _replace(start, end, experiment=None):
    """Recompute the variant rollups of the hours from start to end (of one experiment, or all); replace them."""
    stale = VariantRollup.objects.filter(bucket_start__gte=start, bucket_start__lt=end)
    if experiment is not None:
        stale = stale.filter(experiment=experiment)
    stale.delete()
    rows = _aggregate_hours(start, end, experiment)
    VariantRollup.objects.bulk_create(rows, batch_size=1000)
    return rows


def metric_aggregates(squares=True):
    """Return the ORM aggregates of the per-request metrics: `<metric>_n`, `_sum` (and `_sumsq`) of each."""
    aggregates = {}
    for metric, ok_only in REQUEST_METRICS.items():
        # As floats: integer squares of token counts would overflow Postgres' int4.
        value = Cast(metric, FloatField())
        counted = Q(**{f"{metric}__isnull": False}) & (_OK if ok_only else Q())
        aggregates[f"{metric}_n"] = Count("pk", filter=counted)
        aggregates[f"{metric}_sum"] = Sum(value, filter=counted)
        if squares:
            aggregates[f"{metric}_sumsq"] = Sum(value * value, filter=counted)
    return aggregates


def _aggregate_hours(start, end, experiment):
    """Return the VariantRollup rows (unsaved) of the requests made, and feedback on requests made, start to end."""
    logs = _experiment_logs().filter(created_at__gte=start, created_at__lt=end)
    feedback = _experiment_feedback().annotate(rated_at=Coalesce("request_created_at", "created_at"))
    feedback = feedback.filter(rated_at__gte=start, rated_at__lt=end)
    if experiment is not None:
        logs, feedback = logs.filter(experiment=experiment), feedback.filter(experiment=experiment)
    # An explicit UTC saves looking up the current time zone for every row the grouping returns.
    logs = logs.annotate(bucket=TruncHour("created_at", tzinfo=UTC))
    series = {}

    def row(experiment, variant, bucket_start):
        key = (experiment, variant, bucket_start)
        if key not in series:
            series[key] = VariantRollup(
                experiment=experiment,
                variant=variant,
                bucket_start=bucket_start,
                sums={},
                latency_ms_histogram=[],
                ttft_ms_histogram=[],
            )
        return series[key]

    keys = ("experiment", "variant", "bucket")
    grouped = logs.values(*keys).annotate(
        n=Count("pk"),
        units=Count("experiment_unit", distinct=True),
        successes=Count("pk", filter=_OK),
        **metric_aggregates(),
    )
    for totals in grouped:
        rollup = row(totals["experiment"], totals["variant"], totals["bucket"])
        rollup.requests, rollup.units = totals["n"], totals["units"]
        rollup.sums["success_rate"] = [totals["n"], totals["successes"], totals["successes"]]
        for metric in REQUEST_METRICS:
            if totals[f"{metric}_n"]:
                rollup.sums[metric] = [totals[f"{metric}_n"], totals[f"{metric}_sum"], totals[f"{metric}_sumsq"]]

    rated = (
        feedback.annotate(bucket=TruncHour("rated_at", tzinfo=UTC))
        .values(*keys, "metric")
        .annotate(n=Count("pk"), total=Sum("score"), squares=Sum(F("score") * F("score")))
        .values_list(*keys, "metric", "n", "total", "squares")
    )
    for experiment_id, variant, bucket_start, metric, n, total, squares in rated:
        row(experiment_id, variant, bucket_start).sums[metric] = [n, total, squares]

    # One query per histogram: grouped by both bucket indexes at once, a stream's (latency, TTFT) pairs would be
    # nearly as many groups as rows.
    for field, attribute in (("latency_ms", "latency_ms_histogram"), ("ttft_ms", "ttft_ms_histogram")):
        buckets = (
            logs.filter(_OK, **{f"{field}__isnull": False})
            .annotate(index=histogram_bucket(field))
            .values(*keys, "index")
            .annotate(n=Count("pk"))
            .values_list(*keys, "index", "n")
        )
        for experiment_id, variant, bucket_start, index, n in buckets:
            histogram.add(getattr(row(experiment_id, variant, bucket_start), attribute), index, n)
    return list(series.values())


# --- per unit -----------------------------------------------------------------------------------------------------


def _replace_units(run):
    """Recompute every unit that made a request or got feedback in the run's window, in batches of UNIT_BATCH."""
    touched = set(
        _experiment_logs()
        .filter(created_at__gte=run.start, created_at__lt=run.end)
        .values_list("experiment", "experiment_unit")
        .distinct()
    )
    touched.update(
        _experiment_feedback()
        .filter(updated_at__gte=run.start, updated_at__lt=run.end)
        .values_list("experiment", "experiment_unit")
        .distinct()
    )
    by_experiment = {}
    for experiment, unit in touched:
        by_experiment.setdefault(experiment, []).append(unit)
    for experiment, units in sorted(by_experiment.items()):
        units.sort()
        for first in range(0, len(units), UNIT_BATCH):
            batch = units[first : first + UNIT_BATCH]
            with transaction.atomic():
                _take_turns()
                UnitRollup.objects.filter(experiment=experiment, unit__in=batch).delete()
                rows = _aggregate_units(experiment, batch)
                UnitRollup.objects.bulk_create(rows, batch_size=1000)
                run.unit_rows += len(rows)


def _aggregate_units(experiment, units):
    """Return the UnitRollup rows (unsaved) of these units: each one's totals over all its rows in the experiment,
    those retention dropped included (RetiredUnitTotals)."""
    feedback = {}
    rated = (
        _experiment_feedback()
        .filter(experiment=experiment, experiment_unit__in=units)
        .values("variant", "experiment_unit", "metric")
        .annotate(n=Count("pk"), total=Sum("score"))
        .values_list("variant", "experiment_unit", "metric", "n", "total")
    )
    for variant, unit, metric, n, total in rated:
        feedback.setdefault((variant, unit), {})[metric] = [n, total]

    rows = {}
    for row in _unit_totals(UnitRollup, _experiment_logs().filter(experiment=experiment, experiment_unit__in=units)):
        row.feedback = feedback.get((row.variant, row.unit), {})
        rows[row.variant, row.unit] = row
    # What retention dropped of these units counts as if the rows were still there.
    for retired in RetiredUnitTotals.objects.filter(experiment=experiment, unit__in=units):
        row = rows.get((retired.variant, retired.unit))
        if row is None:
            row = rows[retired.variant, retired.unit] = UnitRollup(
                experiment=experiment,
                variant=retired.variant,
                unit=retired.unit,
                first_seen=retired.first_seen,
                last_seen=retired.last_seen,
                feedback=feedback.get((retired.variant, retired.unit), {}),
            )
            for name in TOTALS:
                setattr(row, name, 0)
        _add_totals(row, retired)
    return list(rows.values())


def _unit_totals(model, logs):
    """Return unsaved `model` rows (UnitRollup or RetiredUnitTotals) of the log rows' totals per variant and unit."""
    grouped = logs.values("experiment", "variant", "experiment_unit").annotate(
        first_seen=Min("created_at"),
        last_seen=Max("created_at"),
        n=Count("pk"),
        successes=Count("pk", filter=_OK),
        **metric_aggregates(squares=False),
    )
    rows = []
    for totals in grouped:
        sums = {f"{metric}_sum": totals[f"{metric}_sum"] or 0 for metric in REQUEST_METRICS}
        # Token sums come back as floats from the float cast; their columns are integers.
        sums["prompt_tokens_sum"] = round(sums["prompt_tokens_sum"])
        sums["completion_tokens_sum"] = round(sums["completion_tokens_sum"])
        rows.append(
            model(
                experiment=totals["experiment"],
                variant=totals["variant"],
                unit=totals["experiment_unit"],
                first_seen=totals["first_seen"],
                last_seen=totals["last_seen"],
                requests=totals["n"],
                successes=totals["successes"],
                **{f"{metric}_n": totals[f"{metric}_n"] for metric in REQUEST_METRICS},
                **sums,
            )
        )
    return rows


def _add_totals(row, other):
    """Add other's totals (and time span) to row's."""
    for name in TOTALS:
        setattr(row, name, getattr(row, name) + getattr(other, name))
    row.first_seen = min(row.first_seen, other.first_seen)
    row.last_seen = max(row.last_seen, other.last_seen)


# --- retention ----------------------------------------------------------------------------------------------------


def retire_units(*, since, before):
    """Add the totals of the experiment rows created from since (None: the log's start) to before, which are about
    to be dropped, to RetiredUnitTotals; return how many units. Call it in the transaction that drops the rows."""
    _take_turns()
    logs = _experiment_logs().filter(created_at__lt=before)
    if since is not None:
        logs = logs.filter(created_at__gte=since)
    fresh = {(row.experiment, row.variant, row.unit): row for row in _unit_totals(RetiredUnitTotals, logs)}
    by_experiment = {}
    for experiment, _, unit in fresh:
        by_experiment.setdefault(experiment, set()).add(unit)
    for experiment, units in by_experiment.items():
        units = sorted(units)
        for first in range(0, len(units), UNIT_BATCH):
            batch = units[first : first + UNIT_BATCH]
            for retired in RetiredUnitTotals.objects.filter(experiment=experiment, unit__in=batch):
                row = fresh.get((experiment, retired.variant, retired.unit))
                if row is not None:
                    _add_totals(row, retired)
    RetiredUnitTotals.objects.bulk_create(
        fresh.values(),
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["experiment", "variant", "unit"],
        update_fields=["first_seen", "last_seen", *TOTALS],
    )
    return len(fresh)
