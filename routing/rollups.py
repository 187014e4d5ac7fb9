"""Request-log rollups: per model and instance, per minute and per hour, the figures the selector stats read.

`rollup_request_logs` recomputes whole hours of RequestLog, from the start of `since`'s hour through the open hour,
into RequestRollup rows of both granularities, and replaces the rows of those buckets: a rerun gives the same rows,
and a row written late (a long stream is logged when it ends) is counted by the next run that covers its hour. Each
granularity is grouped in SQL by three queries (counts and sums by outcome and context type; the latency histogram
buckets of the successful requests; their TTFT buckets), which Django writes for Postgres and SQLite alike. Hours
are rolled up straight from the log rather than from minute rows, so they stay right when their minutes are gone.

The same runs recompute KeyRollup, the hourly totals of each API key (requests, errors, tokens, cost) that the admin
dashboard ranks keys by, from the same rows and under the same replace-whole-hours rule.

Minute rows are kept MINUTE_RETENTION, hour rows (of models and keys alike) HOUR_RETENTION. A stats window reads
minute rows for its first, partial hour and hour rows (the open one included) for the rest: at most 59 minute rows
and 168 hour rows per model and instance for seven days, whatever the traffic.
"""

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Case, Count, F, IntegerField, Q, Sum, Value, When
from django.db.models.functions import Cast, Floor, Ln, TruncHour, TruncMinute
from django.utils import timezone

from routing import histogram, partitions
from routing.models import KeyRollup, Outcome, RequestLog, RequestRollup, RollupGranularity

MINUTE = RollupGranularity.MINUTE
HOUR = RollupGranularity.HOUR
MINUTE_AND_HOUR = [MINUTE, HOUR]
MINUTE_RETENTION = timedelta(days=2)
HOUR_RETENTION = timedelta(days=90)
# The requests a model serves (chat, legacy completions, embeddings): calls to /v1/models and /v1/models/recommend
# serve none.
ROLLED_UP_ENDPOINTS = ("chat.completions", "completions", "embeddings")
# Hours recomputed per transaction: bounds the memory and the time a bucket's readers wait on the replacement.
CHUNK = timedelta(hours=6)
# Postgres advisory lock held by a run while it replaces buckets, so two runs (beat and a hand run) take turns.
_LOCK_KEY = 0x6376_726F_6C6C  # "cvroll"

WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
DEFAULT_WINDOW = "24h"


@dataclasses.dataclass(slots=True)
class RollupRun:
    """What one run recomputed: the buckets from start to end, the log rows they hold and the rows written."""

    start: datetime | None = None
    end: datetime | None = None
    requests: int = 0
    minute_rows: int = 0
    hour_rows: int = 0
    key_rows: int = 0


def floor_minute(moment):
    """Return the start of the UTC minute of an aware datetime."""
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def floor_hour(moment):
    """Return the start of the UTC hour of an aware datetime."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# --- writing ------------------------------------------------------------------------------------------------------


def rollup_request_logs(*, since=None, until=None, lookback=timedelta(0)):
    """Recompute and replace the rollups of every hour from since's through until's (default: now); return the run.

    Without since: from the newest rollup's bucket, or lookback before now if that is earlier, or the whole log
    when nothing was rolled up yet. Never from before HOUR_RETENTION: those rows would be deleted at once; nor from
    before the log's retention dropped its rows (`routing.partitions`). Rows older than their retention are deleted
    at the end.
    """
    now = timezone.now()
    if since is None:
        since = _resume_from(now, lookback)
        if since is None:
            return RollupRun()
    start = max(floor_hour(since), floor_hour(now - HOUR_RETENTION))
    purged = partitions.kept_since()
    if purged is not None:
        # Hours whose log rows retention dropped keep their rollups: recomputed, they would be replaced by nothing.
        start = max(start, floor_hour(purged + timedelta(hours=1) - timedelta(microseconds=1)))
    run = RollupRun(start=start, end=floor_hour(until or now) + timedelta(hours=1))
    minute_horizon = floor_minute(now - MINUTE_RETENTION)
    chunk_start = run.start
    while chunk_start < run.end:
        with transaction.atomic():
            _take_turns()
            first = _first_logged(chunk_start, run.end)
            if first is None or floor_hour(first) > chunk_start:
                # Hours without a log row have no buckets: replaced by nothing at once, so that a run from a quiet
                # week ago costs a few queries, not one round per chunk.
                chunk_end = run.end if first is None else floor_hour(first)
                _delete(MINUTE_AND_HOUR, chunk_start, chunk_end)
                _delete_keys(chunk_start, chunk_end)
            else:
                chunk_end = min(chunk_start + CHUNK, run.end)
                hours = _replace(HOUR, chunk_start, chunk_end)
                run.hour_rows += len(hours)
                run.requests += sum(row.requests for row in hours)
                run.key_rows += len(_replace_keys(chunk_start, chunk_end))
                if chunk_end > minute_horizon:
                    run.minute_rows += len(_replace(MINUTE, max(chunk_start, minute_horizon), chunk_end))
        chunk_start = chunk_end
    RequestRollup.objects.filter(granularity=MINUTE, bucket_start__lt=minute_horizon).delete()
    RequestRollup.objects.filter(granularity=HOUR, bucket_start__lt=floor_hour(now - HOUR_RETENTION)).delete()
    KeyRollup.objects.filter(bucket_start__lt=floor_hour(now - HOUR_RETENTION)).delete()
    return run


def _first_logged(start, end):
    """Return when the first log row rolled up between start and end was created, or None."""
    return (
        RequestLog.objects.filter(endpoint__in=ROLLED_UP_ENDPOINTS, created_at__gte=start, created_at__lt=end)
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )


def _resume_from(now, lookback):
    """Return where a run without since starts, or None when the log is empty."""
    newest = (
        RequestRollup.objects.filter(granularity=HOUR)
        .order_by("-bucket_start")
        .values_list("bucket_start", flat=True)
        .first()
    )
    if newest is not None:
        return min(newest, now - lookback)
    return (
        RequestLog.objects.filter(endpoint__in=ROLLED_UP_ENDPOINTS)
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )


def _take_turns():
    """Wait for any other run's transaction to end (Postgres; SQLite lets one writer in at a time anyway)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])


def _delete(granularities, start, end):
    """Delete the rollups of these granularities whose buckets start between start and end."""
    RequestRollup.objects.filter(granularity__in=granularities, bucket_start__gte=start, bucket_start__lt=end).delete()


def _replace(granularity, start, end):
    """Recompute the buckets of one granularity between start and end from the log; replace theirs; return them."""
    _delete([granularity], start, end)
    rows = _aggregate(granularity, start, end)
    RequestRollup.objects.bulk_create(rows, batch_size=1000)
    return rows


def _delete_keys(start, end):
    """Delete the per-key rollups whose hours start between start and end."""
    KeyRollup.objects.filter(bucket_start__gte=start, bucket_start__lt=end).delete()


def _replace_keys(start, end):
    """Recompute the per-key hours between start and end from the log; replace theirs; return them (whole hours)."""
    _delete_keys(start, end)
    totals = (
        RequestLog.objects.filter(
            endpoint__in=ROLLED_UP_ENDPOINTS, created_at__gte=start, created_at__lt=end, api_key__isnull=False
        )
        .annotate(bucket=TruncHour("created_at", tzinfo=UTC))
        .order_by()  # RequestLog's default ordering would join the GROUP BY
        .values("bucket", "api_key")
        .annotate(
            n=Count("*"),
            errors=Count("pk", filter=~Q(outcome=Outcome.OK)),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cost=Sum("cost_usd"),
        )
        .values_list("bucket", "api_key", "n", "errors", "prompt", "completion", "cost")
    )
    rows = [
        KeyRollup(
            bucket_start=bucket_start,
            api_key_id=key,
            requests=n,
            errors=errors,
            prompt_tokens=prompt or 0,
            completion_tokens=completion or 0,
            cost_usd=cost or 0,
        )
        for bucket_start, key, n, errors, prompt, completion, cost in totals
    ]
    KeyRollup.objects.bulk_create(rows, batch_size=1000)
    return rows


def histogram_bucket(field):
    """Return the SQL expression of `routing.histogram.bucket_index` of a float column (NULL stays NULL)."""
    return Case(
        When(**{f"{field}__lt": histogram.MIN_MS}, then=Value(0)),
        When(**{f"{field}__gte": histogram.MAX_MS}, then=Value(histogram.LAST)),
        default=Cast(Floor(Ln(F(field)) * Value(histogram.SCALE)), IntegerField()) + 1,
        output_field=IntegerField(),
    )


def _aggregate(granularity, start, end):
    """Return the RequestRollup rows (unsaved) of the log rows created between start and end."""
    # An explicit UTC saves looking up the current time zone for every row the grouping returns.
    bucket = (TruncMinute if granularity == MINUTE else TruncHour)("created_at", tzinfo=UTC)
    logs = (
        RequestLog.objects.filter(endpoint__in=ROLLED_UP_ENDPOINTS, created_at__gte=start, created_at__lt=end)
        .annotate(bucket=bucket)
        .order_by()  # RequestLog's default ordering would join the GROUP BY
    )
    series = {}

    def row(bucket_start, model, instance_id):
        key = (bucket_start, model, instance_id or "")
        if key not in series:
            series[key] = RequestRollup(
                granularity=granularity,
                bucket_start=bucket_start,
                model=model,
                instance_id=instance_id or "",
                outcomes={},
                context_types={},
                cost_usd=Decimal(0),
                latency_ms_histogram=[],
                ttft_ms_histogram=[],
            )
        return series[key]

    keys = ("bucket", "served_model", "instance_id")
    counts = (
        logs.values(*keys, "outcome", "context_type")
        .annotate(n=Count("*"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cost=Sum("cost_usd"))
        .values_list(*keys, "outcome", "context_type", "n", "prompt", "completion", "cost")
    )
    for bucket_start, model, instance_id, outcome, context_type, n, prompt, completion, cost in counts:
        rollup = row(bucket_start, model, instance_id)
        rollup.requests += n
        rollup.outcomes[outcome] = rollup.outcomes.get(outcome, 0) + n
        if outcome == Outcome.OK:
            rollup.successes += n
        if context_type:
            rollup.context_types[context_type] = rollup.context_types.get(context_type, 0) + n
        rollup.prompt_tokens += prompt or 0
        rollup.completion_tokens += completion or 0
        rollup.cost_usd += cost or 0

    # One query per histogram: grouped by both bucket indexes at once, a stream's (latency, TTFT) pairs would be
    # nearly as many groups as rows.
    for field, attribute in (("latency_ms", "latency_ms_histogram"), ("ttft_ms", "ttft_ms_histogram")):
        buckets = (
            logs.filter(outcome=Outcome.OK, **{f"{field}__isnull": False})
            .annotate(index=histogram_bucket(field))
            .values(*keys, "index")
            .annotate(n=Count("*"))
            .values_list(*keys, "index", "n")
        )
        for bucket_start, model, instance_id, index, n in buckets:
            histogram.add(getattr(row(bucket_start, model, instance_id), attribute), index, n)
    return list(series.values())


# --- reading ------------------------------------------------------------------------------------------------------


def window_start(now, length):
    """Return where the stats window of this length ending now starts.

    At the minute of now - length while minute rows go back that far, else at its hour (a window a little longer
    than asked, never one with a hole).
    """
    if length < MINUTE_RETENTION:
        return floor_minute(now - length)
    return floor_hour(now - length)


def window_rollups(start, end):
    """Return the rollups of the window from start to end: minute rows from start up to its next whole hour, then
    hour rows up to end — every bucket once."""
    whole_hours = floor_hour(start) + timedelta(hours=1) if start != floor_hour(start) else start
    return RequestRollup.objects.filter(
        Q(granularity=MINUTE, bucket_start__gte=start, bucket_start__lt=whole_hours)
        | Q(granularity=HOUR, bucket_start__gte=whole_hours, bucket_start__lte=end)
    )


def rollup_rows(start, end):
    """Return (model, requests, successes, context types, cost, latency and TTFT histograms) of the window's rollups."""
    return list(
        window_rollups(start, end)
        .order_by()
        .values_list(
            "model",
            "requests",
            "successes",
            "context_types",
            "cost_usd",
            "latency_ms_histogram",
            "ttft_ms_histogram",
        )
    )


def model_selector_stats(start, end, models=()):
    """Return the selector's figures from start to end: the rollups read, then summed per model."""
    return selector_stats(rollup_rows(start, end), models=models)


def selector_stats(rows, *, models=()):
    """Return the per-model figures and the context-type counts of rollup rows (plain values, no database).

    Every name in models is listed, with zero requests if it had none; the rows of requests that reached no model
    count in context_types only.
    """
    per_model = {name: {"requests": 0, "successes": 0, "cost": Decimal(0), "selections": {}} for name in models}
    latencies, ttfts = {}, {}
    context_types = {}
    for model, requests, successes, selected, cost, latency, ttft in rows:
        for context_type, n in selected.items():
            context_types[context_type] = context_types.get(context_type, 0) + n
        if not model:
            continue
        totals = per_model.setdefault(model, {"requests": 0, "successes": 0, "cost": Decimal(0), "selections": {}})
        totals["requests"] += requests
        totals["successes"] += successes
        totals["cost"] += cost
        for context_type, n in selected.items():
            totals["selections"][context_type] = totals["selections"].get(context_type, 0) + n
        latencies.setdefault(model, []).append(latency)
        ttfts.setdefault(model, []).append(ttft)
    return {
        "models": [
            _model_entry(name, per_model[name], latencies.get(name, []), ttfts.get(name, []))
            for name in sorted(per_model)
        ],
        "context_types": dict(sorted(context_types.items())),
    }


def _model_entry(name, totals, latencies, ttfts):
    """Return one model's entry of the selector stats."""
    latency = histogram.merge(latencies)
    ttft = histogram.merge(ttfts)
    requests = totals["requests"]
    return {
        "model": name,
        "requests": requests,
        "success_rate": round(totals["successes"] / requests, 4) if requests else None,
        "latency_ms_p50": _rounded(histogram.percentile(latency, 50)),
        "latency_ms_p95": _rounded(histogram.percentile(latency, 95)),
        "ttft_ms_p50": _rounded(histogram.percentile(ttft, 50)),
        "cost_usd": float(totals["cost"]),
        "selections": dict(sorted(totals["selections"].items())),
    }


def _rounded(ms):
    """Return milliseconds to a tenth, or None."""
    return None if ms is None else round(ms, 1)
