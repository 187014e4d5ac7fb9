"""Tests for experiments/results.py: every figure on fixed data against scipy and statsmodels (to 1e-6), SRM, Holm,
verdicts, the sample size, the JSON's keys and the time series; the data goes through the real rollups."""

import random
import uuid
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from experiments import statistics
from experiments.models import Experiment, Feedback, Variant
from experiments.results import (
    SEQUENTIAL_TAU,
    Arm,
    experiment_results,
    experiment_summaries,
    metric_timeseries,
    summarise,
)
from experiments.rollups import rollup_experiments
from routing.models import Model, RequestLog
from routing.rollups import floor_hour

pytestmark = pytest.mark.django_db

TOP_KEYS = {"experiment", "srm", "variants", "metrics", "correction", "aggregation", "sample_size", "metric_names"}
EXPERIMENT_KEYS = {
    "id",
    "name",
    "status",
    "started_at",
    "stopped_at",
    "ends_at",
    "traffic_percentage",
    "primary_metric",
    "guardrail_metrics",
    "hypothesis",
    "days_running",
}
METRIC_KEYS = {
    "metric",
    "variant",
    "is_control",
    "kind",
    "units",
    "requests",
    "n",
    "mean",
    "sd",
    "diff",
    "rel_diff",
    "ci_low",
    "ci_high",
    "seq_ci_low",
    "seq_ci_high",
    "p_value",
    "p_value_adjusted",
    "verdict",
    "higher_is_better",
    "role",
    "p50",
    "p95",
}


def make_experiment(exp_id="exp-1", weights=(1.0, 1.0), **fields):
    """Create an experiment with variants a (control) and b, on models of the same names."""
    experiment = Experiment.objects.create(id=exp_id, name=f"Experiment {exp_id}", **fields)
    for position, (name, weight) in enumerate(zip("ab", weights, strict=True)):
        model, _ = Model.objects.get_or_create(name=f"model-{name}")
        Variant.objects.create(
            experiment=experiment, name=name, model=model, weight=weight, is_control=name == "a", position=position
        )
    return experiment


def write_units(exp_id, variant, units, at):
    """Write the RequestLog rows (and feedback) of units: [[(ok, latency, feedback score or None), ...], ...]."""
    logs, ratings = [], []
    for u, requests in enumerate(units):
        for i, (ok, latency, score) in enumerate(requests):
            row = RequestLog(
                request_id=uuid.uuid4(),
                created_at=at + timedelta(milliseconds=u * 100 + i),
                served_model=f"model-{variant}",
                outcome="ok" if ok else "upstream_error",
                status_code=200 if ok else 502,
                latency_ms=latency,
                prompt_tokens=100 + u,
                completion_tokens=20 + i,
                experiment=exp_id,
                variant=variant,
                experiment_unit=f"{variant}-{u}",
            )
            logs.append(row)
            if score is not None:
                ratings.append(
                    Feedback(
                        request_id=row.request_id,
                        score=score,
                        experiment=exp_id,
                        variant=variant,
                        experiment_unit=row.experiment_unit,
                        request_created_at=row.created_at,
                    )
                )
    RequestLog.objects.bulk_create(logs)
    Feedback.objects.bulk_create(ratings)


def simulate(rng, n_units, success, latency_mu, score):
    """Return units of 1-4 requests each with random outcomes, latencies and (sometimes) feedback."""
    return [
        [
            (
                rng.random() < success,
                round(rng.lognormvariate(latency_mu, 0.5), 3),
                (1.0 if rng.random() < score else 0.0) if rng.random() < 0.6 else None,
            )
            for _ in range(rng.randint(1, 4))
        ]
        for _ in range(n_units)
    ]


def unit_means(units, metric):
    """Return each unit's mean of a metric the way the results define it (None-less)."""
    means = []
    for requests in units:
        if metric == "success_rate":
            values = [1.0 if ok else 0.0 for ok, _, _ in requests]
        elif metric == "latency_ms":
            values = [latency for ok, latency, _ in requests if ok]
        else:
            values = [score for _, _, score in requests if score is not None]
        if values:
            means.append(sum(values) / len(values))
    return np.array(means)


def row_of(results, metric, variant):
    return next(r for r in results["metrics"] if r["metric"] == metric and r["variant"] == variant)


@pytest.fixture
def data():
    """Return (experiment, control units, treatment units), rolled up."""
    rng = random.Random(9)
    control = simulate(rng, 200, success=0.9, latency_mu=5.0, score=0.5)
    treatment = simulate(rng, 180, success=0.8, latency_mu=4.4, score=0.7)
    experiment = make_experiment(primary_metric="latency_ms", guardrail_metrics=["success_rate"])
    at = floor_hour(timezone.now()) - timedelta(hours=2)
    write_units("exp-1", "a", control, at)
    write_units("exp-1", "b", treatment, at + timedelta(minutes=30))
    rollup_experiments(since=at)
    return experiment, control, treatment


def test_the_results_have_exactly_the_issues_keys(data):
    results = experiment_results(data[0])
    assert set(results) == TOP_KEYS
    assert set(results["experiment"]) == EXPERIMENT_KEYS
    assert set(results["srm"]) == {"p_value", "mismatch", "observed", "expected_share"}
    assert all(set(v) == {"variant", "model", "is_control", "weight", "units", "requests"} for v in results["variants"])
    assert all(set(row) == METRIC_KEYS for row in results["metrics"])
    assert set(results["sample_size"] or {}) <= {
        "metric",
        "mde_relative",
        "needed_per_variant",
        "smallest_variant_units",
        "progress",
    }
    assert results["metric_names"] == [
        "success_rate",
        "latency_ms",
        "ttft_ms",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "feedback",
    ]
    assert len(results["metrics"]) == 2 * len(results["metric_names"])


@pytest.mark.parametrize("metric", ["latency_ms", "feedback"])
def test_means_are_welch_over_unit_means_as_scipy_computes_it(data, metric):
    experiment, control, treatment = data
    a, b = unit_means(control, metric), unit_means(treatment, metric)
    reference = scipy_stats.ttest_ind(b, a, equal_var=False)
    ci = reference.confidence_interval(0.95)
    row = row_of(experiment_results(experiment), metric, "b")
    assert row["kind"] == "mean" and row["n"] == len(b) and row["units"] == len(treatment)
    assert row["mean"] == pytest.approx(b.mean(), abs=1e-6)
    assert row["sd"] == pytest.approx(b.std(ddof=1), abs=1e-6)
    assert row["diff"] == pytest.approx(b.mean() - a.mean(), abs=1e-6)
    assert row["rel_diff"] == pytest.approx((b.mean() - a.mean()) / a.mean(), abs=1e-6)
    assert row["p_value"] == pytest.approx(reference.pvalue, abs=1e-6)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(ci.low, abs=1e-6), pytest.approx(ci.high, abs=1e-6))
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    sequential = statistics.sequential_ci(b.mean() - a.mean(), se, len(a) + len(b), tau=SEQUENTIAL_TAU)
    assert row["seq_ci_low"] == pytest.approx(sequential.low, abs=1e-6)
    assert row["seq_ci_high"] == pytest.approx(sequential.high, abs=1e-6)
    assert row["seq_ci_low"] < row["ci_low"] and row["ci_high"] < row["seq_ci_high"]


def test_a_rate_of_units_with_several_requests_is_a_z_test_on_unit_rates(data):
    experiment, control, treatment = data
    a, b = unit_means(control, "success_rate"), unit_means(treatment, "success_rate")
    compare = CompareMeans(DescrStatsW(b), DescrStatsW(a))
    _, p_value = compare.ztest_ind(usevar="unequal")
    low, high = compare.zconfint_diff(usevar="unequal")
    row = row_of(experiment_results(experiment), "success_rate", "b")
    assert row["kind"] == "proportion" and row["requests"] == sum(len(u) for u in treatment)
    assert row["mean"] == pytest.approx(b.mean(), abs=1e-6)
    assert row["p_value"] == pytest.approx(p_value, abs=1e-6)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))


def test_a_rate_of_units_with_one_request_each_is_the_pooled_two_proportion_z_test():
    experiment = make_experiment()
    at = floor_hour(timezone.now()) - timedelta(hours=1)
    write_units("exp-1", "a", [[(i % 10 < 9, 100.0, None)] for i in range(200)], at)  # 180 / 200
    write_units("exp-1", "b", [[(i % 10 < 8, 100.0, None)] for i in range(150)], at)  # 120 / 150
    rollup_experiments(since=at)
    _, p_value = proportions_ztest([120, 180], [150, 200])
    row = row_of(experiment_results(experiment), "success_rate", "b")
    assert row["diff"] == pytest.approx(0.8 - 0.9, abs=1e-9)
    assert row["p_value"] == pytest.approx(p_value, abs=1e-6)
    se = np.sqrt(0.9 * 0.1 / 200 + 0.8 * 0.2 / 150)
    assert row["ci_low"] == pytest.approx(-0.1 - scipy_stats.norm.ppf(0.975) * se, abs=1e-6)


def test_holm_runs_over_every_metric_and_treatment(data):
    results = experiment_results(data[0])
    compared = [r for r in results["metrics"] if r["p_value"] is not None]
    assert len(compared) == 5  # success, latency, tokens ×2, feedback (no TTFT: no streams; no cost)
    _, adjusted, _, _ = multipletests([r["p_value"] for r in compared], method="holm")
    assert [r["p_value_adjusted"] for r in compared] == pytest.approx(list(adjusted), abs=1e-9)
    assert results["correction"]["method"] == "holm"


def test_verdicts_follow_each_metrics_direction(data):
    results = experiment_results(data[0])
    latency = row_of(results, "latency_ms", "b")
    assert latency["diff"] < 0 and latency["p_value_adjusted"] < 0.05 and latency["seq_ci_high"] < 0
    assert latency["verdict"] == "better" and latency["role"] == "primary"  # lower latency is better
    assert row_of(results, "latency_ms", "a")["verdict"] == "control"
    assert row_of(results, "ttft_ms", "b")["verdict"] == "insufficient data"
    assert row_of(results, "success_rate", "b")["role"] == "guardrail"
    success = row_of(results, "success_rate", "b")
    assert success["seq_ci_high"] < 0 and success["p_value_adjusted"] < 0.05 and success["verdict"] == "worse"
    compared = [r for r in results["metrics"] if r["p_value"] is not None]
    assert all(r["verdict"] == "inconclusive" for r in compared if r["p_value_adjusted"] >= 0.05)


def verdict_of(control, treatment, higher_is_better=True):
    """Return the treatment's row of summarise() on one mean metric."""
    rows = summarise(
        metrics=["latency_ms"],
        variants=["a", "b"],
        control="a",
        arms={("latency_ms", "a"): control, ("latency_ms", "b"): treatment},
        percentiles={},
        primary="latency_ms",
        guardrails=set(),
        higher_is_better={"latency_ms": higher_is_better},
    )
    return rows[1]


def test_a_verdict_needs_the_sequential_interval_away_from_zero():
    # 50 units a side, a difference of 3 standard errors: the fixed interval excludes zero, the always-valid not.
    control = Arm(units=50, requests=50, n=50, mean=100.0, sd=10.0)
    treatment = Arm(units=50, requests=50, n=50, mean=106.0, sd=10.0)
    row = verdict_of(control, treatment)
    assert row["ci_low"] > 0 and row["p_value_adjusted"] < 0.05 and row["seq_ci_low"] < 0
    assert row["verdict"] == "inconclusive"
    far = verdict_of(control, Arm(units=50, requests=50, n=50, mean=120.0, sd=10.0))
    assert far["seq_ci_low"] > 0 and far["verdict"] == "better"
    assert verdict_of(control, Arm(units=50, requests=50, n=50, mean=120.0, sd=10.0), False)["verdict"] == "worse"


def test_a_verdict_needs_the_adjusted_p_value_under_alpha():
    # 5,000 units a side, z = 3.3: the always-valid interval excludes zero, but among 60 comparisons Holm multiplies
    # the smallest p-value by 60.
    others = [f"metric_{i}" for i in range(59)]
    control, treatment = Arm(5000, 5000, 5000, 100.0, 10.0), Arm(5000, 5000, 5000, 100.66, 10.0)
    arms = {("latency_ms", "a"): control, ("latency_ms", "b"): treatment}
    arms.update({(metric, variant): control for metric in others for variant in "ab"})
    rows = summarise(
        metrics=["latency_ms", *others],
        variants=["a", "b"],
        control="a",
        arms=arms,
        percentiles={},
        primary="latency_ms",
        guardrails=set(),
        higher_is_better=dict.fromkeys(["latency_ms", *others], True),
    )
    latency = rows[1]
    assert latency["seq_ci_low"] > 0 and latency["p_value_adjusted"] == pytest.approx(60 * latency["p_value"])
    assert latency["p_value_adjusted"] >= 0.05 and latency["verdict"] == "inconclusive"


def test_latency_percentiles_come_from_the_hour_histograms(data):
    _, control, _ = data
    row = row_of(experiment_results(data[0]), "latency_ms", "a")
    latencies = sorted(latency for requests in control for ok, latency, _ in requests if ok)
    exact = latencies[int(np.ceil(0.95 * len(latencies))) - 1]
    assert row["p95"] == pytest.approx(exact, rel=0.07)
    assert row_of(experiment_results(data[0]), "cost_usd", "a")["p95"] is None


def test_srm_is_flagged_on_a_skewed_split_and_not_on_a_fair_one():
    experiment = make_experiment(weights=(1.0, 1.0))
    at = floor_hour(timezone.now()) - timedelta(hours=1)
    write_units("exp-1", "a", [[(True, 50.0, None)]] * 1000, at)
    write_units("exp-1", "b", [[(True, 50.0, None)]] * 850, at)
    rollup_experiments(since=at)
    srm = experiment_results(experiment)["srm"]
    reference = scipy_stats.chisquare([1000, 850], [925, 925])
    assert srm["p_value"] == pytest.approx(reference.pvalue, abs=1e-9) and reference.pvalue < 0.001
    assert srm["mismatch"] is True and srm["observed"] == {"a": 1000, "b": 850}
    assert srm["expected_share"] == {"a": 0.5, "b": 0.5}

    fair = make_experiment("exp-2", weights=(2.0, 1.0))
    write_units("exp-2", "a", [[(True, 50.0, None)]] * 1010, at)
    write_units("exp-2", "b", [[(True, 50.0, None)]] * 490, at)
    rollup_experiments(since=at)
    srm = experiment_results(fair)["srm"]
    assert srm["p_value"] == pytest.approx(scipy_stats.chisquare([1010, 490], [1000, 500]).pvalue, abs=1e-9)
    assert srm["mismatch"] is False


def test_the_sample_size_is_the_primary_metrics_against_the_smallest_variant(data):
    experiment = data[0]
    experiment.minimum_detectable_effect = 0.05
    experiment.save()
    results = experiment_results(experiment)
    control = row_of(results, "latency_ms", "a")
    needed = statistics.sample_size_per_variant(control["sd"], 0.05 * control["mean"], kind="mean")
    assert results["sample_size"] == {
        "metric": "latency_ms",
        "mde_relative": 0.05,
        "needed_per_variant": needed,
        "smallest_variant_units": 180,
        "progress": 180 / needed,
    }
    experiment.minimum_detectable_effect = None
    experiment.save()
    assert experiment_results(experiment)["sample_size"] is None


def test_an_experiment_without_traffic_has_no_comparisons():
    results = experiment_results(make_experiment())
    assert [v["units"] for v in results["variants"]] == [0, 0]
    assert {r["verdict"] for r in results["metrics"]} == {"control", "insufficient data"}
    assert results["srm"]["mismatch"] is False


def test_the_time_series_gives_each_hours_mean_per_variant(data):
    series = metric_timeseries(data[0])
    assert len(series["buckets"]) == 1
    _, control, _ = data
    latencies = [latency for requests in control for ok, latency, _ in requests if ok]
    assert series["series"]["latency_ms"]["a"][0] == pytest.approx(sum(latencies) / len(latencies))
    assert series["series"]["ttft_ms"]["a"] == [None]


def test_the_summaries_list_running_experiments_with_their_primary_verdicts(data):
    experiment = data[0]
    Experiment.objects.filter(pk=experiment.pk).update(status="running")
    make_experiment("exp-2")  # a draft
    summaries = experiment_summaries()
    assert [s["id"] for s in summaries] == ["exp-1"]
    assert [(v["variant"], v["units"], v["verdict"]) for v in summaries[0]["variants"]] == [
        ("a", 200, "control"),
        ("b", 180, "better"),
    ]
    assert summaries[0]["srm_mismatch"] is False
