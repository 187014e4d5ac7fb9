"""Tests for experiments/rollups.py (variant-hour and unit rollups), its Celery task and its command, on Postgres."""

import io
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from experiments.models import Feedback, UnitRollup, VariantRollup
from experiments.rollups import rollup_experiments
from experiments.tasks import rollup_experiments as rollup_task
from routing import histogram
from routing.models import RequestLog
from routing.rollups import floor_hour

pytestmark = pytest.mark.django_db

VARIANT_FIELDS = [
    "experiment",
    "variant",
    "bucket_start",
    "requests",
    "units",
    "sums",
    "latency_ms_histogram",
    "ttft_ms_histogram",
]
UNIT_FIELDS = [
    "experiment",
    "variant",
    "unit",
    "first_seen",
    "last_seen",
    "requests",
    "successes",
    "latency_ms_n",
    "latency_ms_sum",
    "ttft_ms_n",
    "ttft_ms_sum",
    "prompt_tokens_n",
    "prompt_tokens_sum",
    "completion_tokens_n",
    "completion_tokens_sum",
    "cost_usd_n",
    "cost_usd_sum",
    "feedback",
]


def log(at, unit, *, experiment="exp-1", variant="a", outcome="ok", latency_ms=100.0, ttft_ms=None, **fields):
    """Write one RequestLog row of an experiment, created at `at`."""
    fields.setdefault("prompt_tokens", 10)
    fields.setdefault("completion_tokens", 5)
    fields.setdefault("cost_usd", Decimal("0.001"))
    return RequestLog.objects.create(
        request_id=uuid.uuid4(),
        created_at=at,
        served_model=f"model-{variant}",
        outcome=outcome,
        status_code=200 if outcome == "ok" else 502,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        experiment=experiment,
        variant=variant,
        experiment_unit=unit,
        **fields,
    )


def rate(row, score, *, metric="feedback", at=None):
    """Write (or replace) feedback on a logged request, as the feedback writer does."""
    at = at or timezone.now()
    Feedback.objects.update_or_create(
        request_id=row.request_id,
        metric=metric,
        defaults={
            "score": score,
            "experiment": row.experiment,
            "variant": row.variant,
            "experiment_unit": row.experiment_unit,
            "served_model": row.served_model,
            "request_created_at": row.created_at,
            "updated_at": at,
        },
    )


def variant_rows():
    return list(VariantRollup.objects.order_by("experiment", "variant", "bucket_start").values_list(*VARIANT_FIELDS))


def unit_rows():
    return list(UnitRollup.objects.order_by("experiment", "variant", "unit").values_list(*UNIT_FIELDS))


@pytest.fixture
def hour():
    """Return the start of an hour three hours ago."""
    return floor_hour(timezone.now()) - timedelta(hours=3)


def test_known_rows_give_known_sums_units_and_histograms(hour):
    log(hour + timedelta(minutes=1), "u1", latency_ms=20.0, ttft_ms=5.0, prompt_tokens=100_000)
    log(hour + timedelta(minutes=2), "u1", latency_ms=40.0, prompt_tokens=50_000)
    log(
        hour + timedelta(minutes=3), "u2", outcome="upstream_error", latency_ms=900.0, prompt_tokens=None, cost_usd=None
    )
    log(hour + timedelta(minutes=4), "u3", variant="b", latency_ms=80.0)
    rollup_experiments(since=hour)

    a = VariantRollup.objects.get(experiment="exp-1", variant="a", bucket_start=hour)
    assert (a.requests, a.units) == (3, 2)
    assert a.sums["success_rate"] == [3, 2, 2]
    assert a.sums["latency_ms"] == [2, 60.0, 2000.0]  # successful requests only
    assert a.sums["ttft_ms"] == [1, 5.0, 25.0]
    # Squares as floats: 100,000² would overflow a 32-bit integer.
    assert a.sums["prompt_tokens"] == [2, 150_000.0, 1.25e10]
    assert a.sums["cost_usd"][0] == 2 and a.sums["cost_usd"][1] == pytest.approx(0.002)
    expected = histogram.add(histogram.add([], histogram.bucket_index(20.0)), histogram.bucket_index(40.0))
    assert a.latency_ms_histogram == expected
    b = VariantRollup.objects.get(experiment="exp-1", variant="b", bucket_start=hour)
    assert (b.requests, b.units, b.sums["latency_ms"]) == (1, 1, [1, 80.0, 6400.0])

    u1 = UnitRollup.objects.get(experiment="exp-1", variant="a", unit="u1")
    assert (u1.requests, u1.successes, u1.latency_ms_n, u1.latency_ms_sum) == (2, 2, 2, 60.0)
    assert (u1.prompt_tokens_n, u1.prompt_tokens_sum, u1.ttft_ms_n, u1.ttft_ms_sum) == (2, 150_000, 1, 5.0)
    u2 = UnitRollup.objects.get(experiment="exp-1", variant="a", unit="u2")
    assert (u2.requests, u2.successes, u2.latency_ms_n, u2.prompt_tokens_n, u2.cost_usd_n) == (1, 0, 0, 0, 0)


def test_rows_outside_experiments_are_not_rolled_up(hour):
    log(hour, "u1", experiment="", variant="")
    assert rollup_experiments(since=hour).requests == 0
    assert not VariantRollup.objects.exists() and not UnitRollup.objects.exists()


def test_a_rerun_gives_the_same_rows(hour):
    for i in range(6):
        row = log(hour + timedelta(minutes=i * 20), f"u{i % 3}", variant="ab"[i % 2], latency_ms=10.0 * (i + 1))
        rate(row, i % 2)
    rollup_experiments(since=hour - timedelta(hours=1))
    first_variants, first_units = variant_rows(), unit_rows()
    assert first_variants and first_units
    rollup_experiments(since=hour - timedelta(hours=1))
    rollup_experiments(since=hour + timedelta(hours=1))
    assert variant_rows() == first_variants and unit_rows() == first_units


def test_a_unit_is_recomputed_from_all_its_rows_when_it_comes_back(hour):
    log(hour - timedelta(days=2), "u1", latency_ms=100.0)
    rollup_experiments(since=hour - timedelta(days=2))
    log(hour, "u1", latency_ms=300.0)
    rollup_experiments(since=hour)  # a window holding the new row only
    unit = UnitRollup.objects.get(unit="u1")
    assert (unit.requests, unit.latency_ms_sum, unit.first_seen) == (2, 400.0, hour - timedelta(days=2))


def test_feedback_after_the_fact_updates_the_unit_and_the_hour_of_the_rated_request(hour):
    old = hour - timedelta(days=1)
    row = log(old, "u1")
    log(timezone.now(), "u2")  # so the newest rollup is this hour's, and a beat run's window leaves old out
    rollup_experiments(since=old)
    assert UnitRollup.objects.get(unit="u1").feedback == {}

    rate(row, 1.0)
    rate(row, 0.5, metric="helpful")
    rollup_experiments(lookback=timedelta(minutes=15))  # the beat task's run: the window holds the feedback only
    assert UnitRollup.objects.get(unit="u1").feedback == {"feedback": [1, 1.0], "helpful": [1, 0.5]}
    assert VariantRollup.objects.get(bucket_start=old).sums["feedback"] == [1, 1.0, 1.0]

    rate(row, 0.0)  # a second post replaces the first
    rollup_experiments(lookback=timedelta(minutes=15))
    assert UnitRollup.objects.get(unit="u1").feedback["feedback"] == [1, 0.0]
    assert VariantRollup.objects.get(bucket_start=old).sums["feedback"] == [1, 0.0, 0.0]


def test_a_removed_log_row_leaves_its_hour_on_a_rerun(hour):
    row = log(hour, "u1")
    rollup_experiments(since=hour)
    RequestLog.objects.filter(pk=row.pk).delete()
    rollup_experiments(since=hour)
    assert not VariantRollup.objects.exists()


def test_the_command_covers_everything_written_before_it_including_the_open_hour():
    now = timezone.now()
    old = log(now - timedelta(days=3), "u1")
    log(now - timedelta(seconds=1), "u2", variant="b")
    rate(old, 1.0)
    out = io.StringIO()
    call_command("rollup_experiments", stdout=out)
    assert "Rolled up 2 experiment requests" in out.getvalue()
    assert VariantRollup.objects.filter(bucket_start=floor_hour(now)).exists()
    assert UnitRollup.objects.get(unit="u1").feedback == {"feedback": [1, 1.0]}
    assert UnitRollup.objects.count() == 2


def test_the_command_says_when_there_is_nothing():
    out = io.StringIO()
    call_command("rollup_experiments", stdout=out)
    assert "nothing to roll up" in out.getvalue()


def test_the_task_rolls_up_from_the_lookback():
    log(timezone.now() - timedelta(minutes=5), "u1")
    rollup_task.delay()
    assert UnitRollup.objects.get(unit="u1").requests == 1
