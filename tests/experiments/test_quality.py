"""Tests for experiments/quality.py: the daily feedback rollup that selection's quality term reads."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from experiments import feedback
from experiments.models import QualityRollup
from experiments.quality import quality_figures, rollup_quality
from routing import snapshot

pytestmark = pytest.mark.django_db


def rate(score, *, model="m", context_type="math", metric="feedback", at=None, request_id=None, rated_at=None):
    """Write one feedback row as the writer does; return its request id."""
    at = at or timezone.now()
    request_id = request_id or uuid.uuid4()
    feedback.write_batch([{
        "request_id": request_id, "metric": metric, "score": score, "comment": "", "api_key_id": None,
        "experiment": "", "variant": "", "experiment_unit": "", "served_model": model, "context_type": context_type,
        "request_created_at": at, "created_at": rated_at or at, "updated_at": rated_at or at,
    }])  # fmt: skip
    return request_id


def test_figures_count_the_feedback_metric_of_selected_requests_of_the_last_30_days():
    now = timezone.now()
    rate(1.0)
    rate(0.5)
    rate(1.0, context_type="")  # a request that named its model: no context type
    rate(1.0, metric="accuracy")  # another metric
    rate(1.0, at=now - timedelta(days=31))  # rolled up, but outside the window
    assert quality_figures() == {}, "nothing until the rollup runs"
    assert rollup_quality() == 2
    assert quality_figures() == {("m", "math"): (2, 1.5)}
    assert quality_figures(now=now + timedelta(days=31)) == {}


def test_a_rerun_changes_nothing_and_a_replaced_rating_stays_in_its_request_day():
    old = timezone.now() - timedelta(days=3)
    request_id = rate(0.0, at=old)
    rate(1.0, at=old)
    rollup_quality()
    rows = list(QualityRollup.objects.values_list("day", "model", "context_type", "ratings", "score_sum"))
    rollup_quality(since=timezone.now() - timedelta(days=10))
    assert list(QualityRollup.objects.values_list("day", "model", "context_type", "ratings", "score_sum")) == rows
    # Re-rated today: the request's day is recomputed (one rating, its new score), not today's.
    rate(1.0, at=old, request_id=request_id, rated_at=timezone.now())
    assert rollup_quality(lookback=timedelta(minutes=15)) == 1
    assert list(QualityRollup.objects.values_list("day", "ratings", "score_sum")) == [(old.date(), 2, 2.0)]


def test_the_snapshot_loads_the_figures_and_refreshes_them_alone():
    rate(1.0)
    rate(0.5)
    rollup_quality()
    snap = snapshot.reload()
    assert snap.quality == {("m", "math"): (2, 1.5)}
    rate(0.0, model="n")
    rollup_quality()
    snapshot.refresh_quality()
    refreshed = snapshot.current()
    assert refreshed.quality == {("m", "math"): (2, 1.5), ("n", "math"): (1, 0.0)}
    assert refreshed.models is snap.models and refreshed.token == snap.token, "nothing else reloaded"
