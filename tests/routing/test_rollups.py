"""Tests for routing/rollups.py (request-log rollups), its Celery task and its command, on the test Postgres."""

import io
import uuid
from datetime import UTC, timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from routing import histogram, rollups
from routing.auth import api_key_create
from routing.models import KeyRollup, RequestLog, RequestRollup
from routing.rollups import floor_hour, floor_minute, rollup_request_logs
from routing.tasks import rollup_request_logs as rollup_task

pytestmark = pytest.mark.django_db

FIELDS = [
    "granularity",
    "bucket_start",
    "model",
    "instance_id",
    "requests",
    "successes",
    "outcomes",
    "context_types",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms_histogram",
    "ttft_ms_histogram",
]


def log(at, *, model="vault-a", instance="inst-a", outcome="ok", latency_ms=100.0, ttft_ms=None, **fields):
    """Write one chat-completions RequestLog row created at `at`."""
    return RequestLog.objects.create(
        request_id=uuid.uuid4(),
        created_at=at,
        served_model=model,
        instance_id=instance,
        outcome=outcome,
        status_code=200 if outcome == "ok" else 502,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        **fields,
    )


def histogram_of(values):
    """Return the histogram of some milliseconds, the Python way."""
    counts = []
    for ms in values:
        histogram.add(counts, histogram.bucket_index(ms))
    return counts


def rows(**filters):
    """Return every rollup row as a tuple of its fields, in a stable order."""
    return list(RequestRollup.objects.filter(**filters).order_by(*FIELDS[:4]).values_list(*FIELDS))


def rollup(granularity, bucket_start, model="vault-a", instance="inst-a"):
    """Return one rollup row."""
    return RequestRollup.objects.get(
        granularity=granularity, bucket_start=bucket_start, model=model, instance_id=instance
    )


@pytest.fixture
def hour():
    """Return the start of an hour three hours ago (its minutes are kept, and it is closed)."""
    return floor_hour(timezone.now()) - timedelta(hours=3)


def test_known_rows_give_known_counts_tokens_cost_and_histograms(hour):
    minute = hour + timedelta(minutes=10)
    latencies = [20.0, 40.0, 80.0, 160.0]
    for ms in latencies:
        log(minute + timedelta(seconds=5), latency_ms=ms, prompt_tokens=10, completion_tokens=5, cost_usd="0.001")
    log(minute, latency_ms=900.0, ttft_ms=30.0, stream=True, context_type="math", prompt_tokens=7)
    log(minute, outcome="upstream_timeout", latency_ms=30_000.0, context_type="math")
    log(minute, outcome="client_error", latency_ms=2.0, context_type="code_review")
    log(hour + timedelta(minutes=50), latency_ms=50.0)  # another minute of the same hour

    run = rollup_request_logs(since=hour)

    assert (run.start, run.end) == (hour, floor_hour(timezone.now()) + timedelta(hours=1))
    assert run.requests == 8
    row = rollup("minute", minute)
    assert (row.requests, row.successes) == (7, 5)
    assert row.outcomes == {"ok": 5, "upstream_timeout": 1, "client_error": 1}
    assert row.context_types == {"math": 2, "code_review": 1}
    assert (row.prompt_tokens, row.completion_tokens, row.cost_usd) == (47, 20, Decimal("0.004"))
    # latency and TTFT of the successful requests only
    assert row.latency_ms_histogram == histogram_of([*latencies, 900.0])
    assert row.ttft_ms_histogram == histogram_of([30.0])
    assert histogram.percentile(row.latency_ms_histogram, 50) == pytest.approx(80, rel=0.06)
    assert histogram.percentile(row.latency_ms_histogram, 95) == pytest.approx(900, rel=0.06)

    hour_row = rollup("hour", hour)
    assert (hour_row.requests, hour_row.successes) == (8, 6)
    assert hour_row.latency_ms_histogram == histogram_of([*latencies, 900.0, 50.0])
    assert len(rows(granularity="minute")) == 2


def test_each_model_and_instance_has_its_own_rows(hour):
    at = hour + timedelta(minutes=1)
    log(at, model="vault-a", instance="inst-a")
    log(at, model="vault-a", instance="inst-b")
    log(at, model="vault-b", instance="inst-c")
    log(at, model="", instance=None, outcome="client_error", context_type="translation")  # nothing eligible

    rollup_request_logs(since=hour)

    series = {(m, i, r) for _, _, m, i, r, *_ in rows(granularity="hour")}
    assert series == {("vault-a", "inst-a", 1), ("vault-a", "inst-b", 1), ("vault-b", "inst-c", 1), ("", "", 1)}


def test_only_requests_a_model_serves_are_rolled_up(hour):
    log(hour, endpoint="models.recommend", context_type="math")
    log(hour, endpoint="models")
    log(hour)
    log(hour, endpoint="completions")
    log(hour, endpoint="embeddings")
    rollup_request_logs(since=hour)
    assert rollup("hour", hour).requests == 3


def test_the_sql_buckets_are_the_python_buckets(hour):
    edges = [10 ** (i / histogram.BUCKETS_PER_DECADE) for i in range(0, histogram.LAST + 1)]
    values = [0.0, 0.5, *edges, *(e * (1 + 1e-12) for e in edges), *(e * (1 - 1e-12) for e in edges), 3e6]
    for ms in values:
        log(hour, latency_ms=ms, ttft_ms=ms)
    rollup_request_logs(since=hour)
    row = rollup("hour", hour)
    assert row.latency_ms_histogram == histogram_of(values)
    assert row.ttft_ms_histogram == histogram_of(values)


def test_a_rerun_gives_the_same_rows(hour):
    for minutes in (0, 1, 1, 59, 61, 200):
        log(hour + timedelta(minutes=minutes), latency_ms=10.0 * (minutes + 1), cost_usd="0.5")
    rollup_request_logs(since=hour)
    first = rows()
    assert first

    rollup_request_logs(since=hour)
    rollup_request_logs(since=hour + timedelta(minutes=30))  # a run from inside an hour redoes the whole hour
    assert rows() == first


def test_a_late_row_in_a_rolled_up_bucket_is_counted_by_a_rerun(hour):
    minute = hour + timedelta(minutes=20)
    log(minute)
    rollup_request_logs(since=hour)
    assert rollup("minute", minute).requests == 1

    log(minute, latency_ms=5000.0)  # a long request is logged when it ends
    rollup_request_logs(since=hour)

    row = rollup("minute", minute)
    assert row.requests == 2 and row.latency_ms_histogram == histogram_of([100.0, 5000.0])
    assert rollup("hour", hour).requests == 2


def test_a_run_covers_the_open_bucket():
    now = log(timezone.now()).created_at

    rollup_request_logs()

    assert rollup("minute", floor_minute(now)).requests == 1
    assert rollup("hour", floor_hour(now)).requests == 1


def test_without_since_the_first_run_covers_the_whole_log():
    old = timezone.now() - timedelta(days=5)
    log(old)
    log(timezone.now())

    run = rollup_request_logs()

    assert run.start == floor_hour(old) and run.requests == 2
    assert rollup("hour", floor_hour(old)).requests == 1
    assert not RequestRollup.objects.filter(granularity="minute", bucket_start__lt=timezone.now() - timedelta(days=2))


def test_without_since_a_run_resumes_at_the_newest_rollup_or_lookback(hour):
    log(hour)
    log(timezone.now())
    rollup_request_logs()
    late = hour + timedelta(minutes=5)
    log(late)  # older than the newest rolled-up hour

    assert rollup_request_logs().start == floor_hour(timezone.now())
    assert rollup("hour", hour).requests == 1

    run = rollup_request_logs(lookback=timedelta(hours=4))
    assert run.start <= hour
    assert rollup("hour", hour).requests == 2


def test_nothing_to_roll_up_in_an_empty_log():
    run = rollup_request_logs()
    assert run.start is None and not RequestRollup.objects.exists()


def test_minute_rows_are_kept_two_days_and_hour_rows_ninety_days():
    now = timezone.now()
    for age in (timedelta(hours=47), timedelta(hours=49), timedelta(days=89), timedelta(days=91)):
        log(now - age)
    rollup_request_logs(since=now - timedelta(days=92))

    minutes = RequestRollup.objects.filter(granularity="minute").values_list("bucket_start", flat=True)
    hours = RequestRollup.objects.filter(granularity="hour").values_list("bucket_start", flat=True)
    assert list(minutes) == [floor_minute(now - timedelta(hours=47))]
    kept = (timedelta(days=89), timedelta(hours=49), timedelta(hours=47))
    assert sorted(hours) == [floor_hour(now - age) for age in kept]


def test_a_run_deletes_the_minute_rows_that_aged_out_since_they_were_written():
    three_days_ago = floor_minute(timezone.now()) - timedelta(days=3)
    aged = RequestRollup.objects.create(granularity="minute", bucket_start=three_days_ago)
    log(timezone.now())
    rollup_request_logs()
    assert not RequestRollup.objects.filter(pk=aged.pk).exists()


def test_a_run_never_starts_before_the_hour_retention():
    now = timezone.now()
    log(now - timedelta(days=100))
    log(now)
    for since in (None, now - timedelta(days=100)):
        run = rollup_request_logs(since=since)
        assert run.start == floor_hour(now - rollups.HOUR_RETENTION) and run.requests == 1


def test_a_run_over_weeks_without_traffic_costs_a_few_queries(django_assert_max_num_queries):
    now = timezone.now()
    log(now - timedelta(days=30))
    log(now)
    with django_assert_max_num_queries(40):  # one round per 6 hours would be over a thousand
        run = rollup_request_logs(since=now - timedelta(days=30))
    assert run.requests == 2 and rollup("hour", floor_hour(now)).requests == 1


def test_a_run_replaces_rows_whose_log_rows_are_gone(hour):
    row = log(hour + timedelta(minutes=3), model="vault-gone")
    rollup_request_logs(since=hour)
    row.delete()
    rollup_request_logs(since=hour)
    assert not RequestRollup.objects.filter(model="vault-gone").exists()


def test_the_task_rolls_up_with_its_lookback(hour):
    log(hour)
    log(timezone.now())
    rollup_request_logs()
    log(hour)

    rollup_task.delay(lookback_seconds=4 * 3600)

    assert rollup("hour", hour).requests == 2


def test_beat_schedules_the_task_every_minute():
    from chatvault_site.celery import app

    app.loader.import_default_modules()
    assert "routing.tasks.rollup_request_logs" in app.tasks
    (entry,) = (e for e in app.conf.beat_schedule.values() if e["task"] == "routing.tasks.rollup_request_logs")
    assert entry["schedule"] == 60.0 and entry["kwargs"]["lookback_seconds"] >= 600


def test_the_command_rolls_up_since_a_time_and_says_what_it_did(hour):
    log(hour + timedelta(minutes=1))
    log(hour - timedelta(hours=2))
    out = io.StringIO()

    call_command("rollup_request_logs", "--since", (hour + timedelta(minutes=30)).isoformat(), stdout=out)

    assert out.getvalue().startswith(f"Rolled up 1 requests from {hour.isoformat()} to ")
    assert list(RequestRollup.objects.filter(granularity="hour").values_list("bucket_start", flat=True)) == [hour]


def test_the_command_reads_a_time_without_offset_as_utc_and_one_with_an_offset_as_given(hour):
    log(hour)
    out = io.StringIO()
    naive = hour.astimezone(UTC).replace(tzinfo=None).isoformat()
    call_command("rollup_request_logs", "--since", naive, stdout=out)
    assert f"from {hour.isoformat()} to " in out.getvalue()
    assert RequestRollup.objects.filter(granularity="hour", bucket_start=hour).exists()

    out = io.StringIO()
    shifted = (hour + timedelta(hours=1)).astimezone(timezone.get_fixed_timezone(120)).isoformat()
    call_command("rollup_request_logs", "--since", shifted, stdout=out)
    assert f"from {(hour + timedelta(hours=1)).isoformat()}" in out.getvalue()


def test_the_command_without_since_covers_the_whole_log_and_says_when_it_is_empty():
    out = io.StringIO()
    call_command("rollup_request_logs", stdout=out)
    assert out.getvalue().strip() == "The request log is empty: nothing to roll up."

    log(timezone.now() - timedelta(days=3))
    out = io.StringIO()
    call_command("rollup_request_logs", stdout=out)
    assert out.getvalue().startswith("Rolled up 1 requests from ")


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00", ""])
def test_the_command_refuses_a_bad_time(value):
    with pytest.raises(CommandError, match="--since needs an ISO time"):
        call_command("rollup_request_logs", "--since", value, stdout=io.StringIO())


# --- per-key hours -------------------------------------------------------------------------------------------------


def key_rows():
    """Return every per-key rollup as (hour, key id, requests, errors, prompt, completion, cost), in a stable order."""
    fields = ("bucket_start", "api_key_id", "requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd")
    return list(KeyRollup.objects.order_by("bucket_start", "api_key_id").values_list(*fields))


def test_each_key_gets_its_hourly_requests_errors_tokens_and_cost(hour):
    billing, _ = api_key_create(name="billing")
    search, _ = api_key_create(name="search")
    later = hour + timedelta(hours=1)
    for minutes in (1, 30, 59):
        log(hour + timedelta(minutes=minutes), api_key=billing, prompt_tokens=10, completion_tokens=4, cost_usd="0.25")
    log(hour + timedelta(minutes=2), api_key=billing, outcome="upstream_error", cost_usd=None)
    log(hour + timedelta(minutes=3), api_key=search, model="vault-b", outcome="no_capacity", instance=None)
    log(later + timedelta(minutes=5), api_key=search, prompt_tokens=7, cost_usd="1.5")
    log(hour, api_key=search, endpoint="models")  # not a chat request: no model's rollup counts it either
    log(hour, api_key=None)  # a row without a key has no key to count against

    run = rollup_request_logs(since=hour)

    assert run.key_rows == 3
    assert key_rows() == [
        (hour, billing.pk, 4, 1, 30, 12, Decimal("0.75")),
        (hour, search.pk, 1, 1, 0, 0, Decimal("0")),
        (later, search.pk, 1, 0, 7, 0, Decimal("1.5")),
    ]


def test_key_hours_are_replaced_like_the_model_hours(hour):
    key, _ = api_key_create(name="billing")
    row = log(hour + timedelta(minutes=3), api_key=key)
    log(hour + timedelta(hours=1), api_key=key)
    rollup_request_logs(since=hour)
    first = key_rows()
    rollup_request_logs(since=hour + timedelta(minutes=30))  # a rerun from inside an hour redoes the whole hour
    assert key_rows() == first

    log(hour + timedelta(minutes=50), api_key=key, outcome="upstream_timeout")  # logged late
    rollup_request_logs(since=hour)
    assert key_rows()[0][2:4] == (2, 1)

    row.delete()
    KeyRollup.objects.filter(bucket_start=hour).update(requests=99)  # a stale figure is never kept
    RequestLog.objects.filter(created_at__lt=hour + timedelta(hours=1)).delete()
    rollup_request_logs(since=hour)  # the hour now has no log row at all: its key rows go
    assert [r[0] for r in key_rows()] == [hour + timedelta(hours=1)]


def test_key_hours_are_kept_as_long_as_the_model_hours():
    key, _ = api_key_create(name="billing")
    now = timezone.now()
    for age in (timedelta(days=89), timedelta(days=91)):
        log(now - age, api_key=key)
    rollup_request_logs(since=now - timedelta(days=92))
    stale = KeyRollup.objects.create(bucket_start=floor_hour(now - timedelta(days=95)), api_key=key, requests=1)
    rollup_request_logs()
    assert [r[0] for r in key_rows()] == [floor_hour(now - timedelta(days=89))]
    assert not KeyRollup.objects.filter(pk=stale.pk).exists()


# --- reading ------------------------------------------------------------------------------------------------------


def test_a_window_starts_at_a_minute_while_minutes_are_kept_else_at_an_hour():
    now = timezone.now().replace(minute=25, second=30)
    assert rollups.window_start(now, timedelta(hours=1)) == floor_minute(now - timedelta(hours=1))
    assert rollups.window_start(now, timedelta(days=1)) == floor_minute(now - timedelta(days=1))
    assert rollups.window_start(now, timedelta(days=7)) == floor_hour(now - timedelta(days=7))


def test_a_window_reads_minutes_up_to_its_first_whole_hour_then_hours(hour):
    # minutes 10 and 40 of the hour before `hour`, minute 10 of `hour`, and now
    before = hour - timedelta(hours=1)
    for at in (before + timedelta(minutes=10), before + timedelta(minutes=40), hour + timedelta(minutes=10)):
        log(at)
    log(timezone.now())
    rollup_request_logs(since=before)

    def requests(start):
        return sum(r[1] for r in rollups.rollup_rows(start, timezone.now()))

    assert requests(before + timedelta(minutes=30)) == 3  # minute 40, then the hours from `hour`
    assert requests(before) == 4
    assert requests(before + timedelta(minutes=41)) == 2


def test_a_window_older_than_the_minute_rows_reads_its_first_hour_from_the_hour_row():
    old = floor_hour(timezone.now() - timedelta(days=3))
    log(old + timedelta(minutes=5))
    rollup_request_logs(since=old)
    assert not RequestRollup.objects.filter(granularity="minute").exists()
    assert [r[1] for r in rollups.rollup_rows(old, timezone.now())] == [1]
