"""Experiment results: every metric of every variant against the control, read from the rollups only.

The unit (the OpenAI `user`, the session or the API key: what assignment hashed) is the randomisation unit, so it
is the observation: each unit's mean of a per-request metric (its success rate, its mean latency, its mean feedback
score, ...) counts once, whatever number of requests it made. Requests of one unit are not independent, and
counting them as if they were would make every interval too narrow. Per variant, the number of units, the mean and
the sample standard deviation of those unit means are aggregated in SQL over UnitRollup, so a results page costs one
grouped query however many units there are (and one read of the variant-hour rollups for the percentiles).

- Means (latency_ms, ttft_ms, tokens, cost_usd, feedback metrics): Welch's t-test over unit means.
- Rates (success_rate): a two-proportion z-test. When every unit made exactly one request, that is the classic
  pooled test on (successes, units); otherwise a z-test on the unit means (the unit's success rate is the
  observation, with the unequal-variance standard error), the same unit aggregation as every other metric.
- Always-valid 95 % intervals (`statistics.sequential_ci`, tau SEQUENTIAL_TAU units) beside the fixed-horizon ones.
- Holm's correction over the p-values of every (metric × treatment variant) comparison of the experiment.
- A verdict (better / worse) needs both the always-valid interval to exclude zero (so looking every day does not
  inflate false positives) and the Holm-adjusted p-value below ALPHA (so many metrics do not either); otherwise it
  is inconclusive. docs/experiments.md says the same for analysts.

`compare_metric` and `summarise` are pure; `experiment_results` and `metric_timeseries` read the database.
"""

import functools
import math
from dataclasses import dataclass
from datetime import UTC, timedelta
from statistics import NormalDist

from django.db.models import Avg, Count, F, FloatField, Q, StdDev, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, NullIf
from django.utils import timezone

from experiments import statistics
from experiments.models import (
    BUILTIN_METRICS,
    FEEDBACK_METRIC,
    Experiment,
    ExperimentStatus,
    UnitRollup,
    VariantRollup,
)
from routing import histogram

ALPHA = 0.05
# Units at which the always-valid interval is tightest relative to the fixed-horizon one (GrowthBook's default).
SEQUENTIAL_TAU = 5000.0
PROPORTION_METRICS = frozenset({"success_rate"})
PERCENTILE_METRICS = ("latency_ms", "ttft_ms")
# UnitRollup's <metric>_sum / <metric>_n column pairs, success_rate's being successes over requests.
_UNIT_COLUMNS = {
    "success_rate": ("successes", "requests"),
    "latency_ms": ("latency_ms_sum", "latency_ms_n"),
    "ttft_ms": ("ttft_ms_sum", "ttft_ms_n"),
    "prompt_tokens": ("prompt_tokens_sum", "prompt_tokens_n"),
    "completion_tokens": ("completion_tokens_sum", "completion_tokens_n"),
    "cost_usd": ("cost_usd_sum", "cost_usd_n"),
}
AGGREGATION = (
    "The unit (OpenAI user, else session, else API key) is the randomisation unit and the observation: each unit's "
    "mean of a per-request metric (its success rate, mean latency of its successful requests, mean TTFT, mean "
    "tokens, mean cost, mean feedback score) counts once. n is the number of units with a value; requests the "
    "requests (or ratings) behind them. Means: Welch's t-test over unit means. success_rate: two-proportion z-test "
    "on (successes, units) when every unit made one request, else a z-test on the unit success rates with the "
    "unequal-variance standard error. p50/p95 are over requests."
)
CORRECTION = {
    "method": "holm",
    "family": (
        "Holm's step-down correction over the p-values of every metric × treatment variant comparison in this "
        "experiment; a verdict needs the adjusted p-value below 0.05 and the always-valid (sequential) 95 % "
        "interval away from zero."
    ),
}
_Z = NormalDist().inv_cdf(1.0 - ALPHA / 2.0)


@dataclass(frozen=True)
class Arm:
    """One variant's unit-level summary of one metric."""

    units: int
    requests: int
    n: int
    mean: float | None
    sd: float | None
    successes: int = 0  # success_rate only: the variant's successful requests


@dataclass(frozen=True)
class Comparison:
    """A treatment against the control on one metric."""

    diff: float
    rel_diff: float | None
    se: float
    p_value: float
    ci_low: float
    ci_high: float
    seq_ci_low: float
    seq_ci_high: float


# --- pure ---------------------------------------------------------------------------------------------------------


def z_test_means(mean_c, sd_c, n_c, mean_t, sd_t, n_t):
    """Return (diff, se, two-sided p, ci_low, ci_high) of a z-test on two means with unequal variances."""
    diff = mean_t - mean_c
    se = math.sqrt(sd_c * sd_c / n_c + sd_t * sd_t / n_t)
    if se == 0:
        return diff, 0.0, 1.0 if diff == 0 else 0.0, diff, diff
    p_value = math.erfc(abs(diff / se) / math.sqrt(2.0))
    return diff, se, p_value, diff - _Z * se, diff + _Z * se


def compare_metric(kind, control, treatment):
    """Return the Comparison of treatment against control (two Arms), or None when either has under two units."""
    if control.n < 2 or treatment.n < 2:
        return None
    if kind == "proportion" and control.requests == control.n and treatment.requests == treatment.n:
        test = statistics.two_proportions(control.successes, control.n, treatment.successes, treatment.n)
        diff, se, p_value, ci_low, ci_high = test.diff, test.se, test.p_value, test.ci_low, test.ci_high
    elif kind == "proportion":
        diff, se, p_value, ci_low, ci_high = z_test_means(
            control.mean, control.sd, control.n, treatment.mean, treatment.sd, treatment.n
        )
    else:
        test = statistics.welch(control.mean, control.sd, control.n, treatment.mean, treatment.sd, treatment.n)
        diff, se, p_value, ci_low, ci_high = test.diff, test.se, test.p_value, test.ci_low, test.ci_high
    sequential = statistics.sequential_ci(diff, se, control.n + treatment.n, alpha=ALPHA, tau=SEQUENTIAL_TAU)
    rel_diff = None if control.mean == 0 else diff / control.mean
    return Comparison(diff, rel_diff, se, p_value, ci_low, ci_high, sequential.low, sequential.high)


def metric_kind(metric):
    """Return "proportion" for a rate metric, else "mean"."""
    return "proportion" if metric in PROPORTION_METRICS else "mean"


def metric_role(metric, primary, guardrails):
    """Return "primary", "guardrail" or "secondary"."""
    if metric == primary:
        return "primary"
    return "guardrail" if metric in guardrails else "secondary"


def summarise(*, metrics, variants, control, arms, percentiles, primary, guardrails, higher_is_better):
    """Return the metric rows of the results (plain values in, plain values out).

    variants: variant names in display order; arms: {(metric, variant): Arm}; percentiles: {(metric, variant):
    (p50, p95)}; higher_is_better: {metric: bool}. Holm's correction runs over every comparison made.
    """
    rows, compared = [], []
    for metric in metrics:
        kind = metric_kind(metric)
        base = arms[(metric, control)]
        for variant in variants:
            arm = arms[(metric, variant)]
            p50, p95 = percentiles.get((metric, variant), (None, None))
            row = {
                "metric": metric,
                "variant": variant,
                "is_control": variant == control,
                "kind": kind,
                "units": arm.units,
                "requests": arm.requests,
                "n": arm.n,
                "mean": arm.mean,
                "sd": arm.sd,
                "diff": None,
                "rel_diff": None,
                "ci_low": None,
                "ci_high": None,
                "seq_ci_low": None,
                "seq_ci_high": None,
                "p_value": None,
                "p_value_adjusted": None,
                "verdict": "control" if variant == control else "insufficient data",
                "higher_is_better": higher_is_better[metric],
                "role": metric_role(metric, primary, guardrails),
                "p50": p50,
                "p95": p95,
            }
            rows.append(row)
            if variant == control:
                continue
            comparison = compare_metric(kind, base, arm)
            if comparison is None:
                continue
            row.update(
                diff=comparison.diff,
                rel_diff=comparison.rel_diff,
                ci_low=comparison.ci_low,
                ci_high=comparison.ci_high,
                seq_ci_low=comparison.seq_ci_low,
                seq_ci_high=comparison.seq_ci_high,
                p_value=comparison.p_value,
            )
            compared.append(row)
    for row, adjusted in zip(compared, statistics.adjust([r["p_value"] for r in compared], "holm"), strict=True):
        row["p_value_adjusted"] = adjusted
        significant = adjusted < ALPHA
        sequential = statistics.verdict(row["seq_ci_low"], row["seq_ci_high"], row["higher_is_better"])
        row["verdict"] = sequential if significant else "inconclusive"
    return rows


def sample_size(*, metric, mde_relative, control_arm, smallest_variant_units):
    """Return the sample-size progress of the primary metric, or None when no minimum detectable effect is set."""
    if mde_relative is None:
        return None
    needed = None
    arm = control_arm
    if mde_relative > 0 and arm is not None and arm.mean:
        kind = metric_kind(metric)
        baseline = arm.mean if kind == "proportion" else arm.sd
        try:
            if baseline:
                needed = _units_needed(kind, _rounded(baseline), _rounded(mde_relative * arm.mean))
        except ValueError:  # a rate of exactly 0 or 1: no baseline to size against yet
            needed = None
    return {
        "metric": metric,
        "mde_relative": mde_relative,
        "needed_per_variant": needed,
        "smallest_variant_units": smallest_variant_units,
        "progress": None if not needed else smallest_variant_units / needed,
    }


def _rounded(value):
    """Return value to 9 significant digits: the sample size cannot tell, and the cache below then can hit."""
    return float(f"{value:.9g}")


@functools.lru_cache(maxsize=256)
def _units_needed(kind, baseline, mde):
    """Return statistics.sample_size_per_variant, remembered: its t-test power search costs ~0.1 s a call."""
    return statistics.sample_size_per_variant(baseline, mde, kind=kind)


def sample_ratio(observed, weights):
    """Return the SRM block: χ² of units per variant against the weights (variants of weight 0 left out)."""
    total_weight = sum(weights.values())
    expected = {name: (weight / total_weight if total_weight else None) for name, weight in weights.items()}
    weighted = [name for name, weight in weights.items() if weight > 0]
    p_value, mismatch = None, False
    if len(weighted) >= 2:
        check = statistics.srm([observed.get(name, 0) for name in weighted], [weights[name] for name in weighted])
        p_value, mismatch = check.p_value, check.mismatch
    return {"p_value": p_value, "mismatch": mismatch, "observed": observed, "expected_share": expected}


# --- reading the rollups ---------------------------------------------------------------------------------------


def _float(expression):
    return Cast(expression, FloatField())


def _unit_aggregates(feedback_metrics):
    """Return {alias: aggregate} per metric: units with a value, requests, mean and sd of the unit means."""
    aggregates, aliases = {}, {}
    columns = [
        (metric, F(total), F(count), Q(**{f"{count}__gt": 0})) for metric, (total, count) in _UNIT_COLUMNS.items()
    ]
    for metric in feedback_metrics:
        # {metric: [n, sum]} in a JSON column: key transforms work on Postgres and SQLite alike.
        count = _float(KT(f"feedback__{metric}__0"))
        columns.append((metric, _float(KT(f"feedback__{metric}__1")), count, Q(feedback__has_key=metric)))
    for i, (metric, total, count, has_value) in enumerate(columns):
        ratio = _float(total) / NullIf(_float(count), 0.0)
        aliases[metric] = (f"m{i}_n", f"m{i}_requests", f"m{i}_mean", f"m{i}_sd")
        aggregates[f"m{i}_n"] = Count("pk", filter=has_value)
        aggregates[f"m{i}_requests"] = Sum(count, filter=has_value)
        aggregates[f"m{i}_mean"] = Avg(ratio, filter=has_value)
        aggregates[f"m{i}_sd"] = StdDev(ratio, sample=True, filter=has_value)
    return aggregates, aliases


def unit_statistics(experiment_id, feedback_metrics):
    """Return {variant: {"units", "requests", "successes", "arms": {metric: Arm}}} from one grouped query."""
    aggregates, aliases = _unit_aggregates(feedback_metrics)
    grouped = (
        UnitRollup.objects.filter(experiment=experiment_id)
        .order_by()
        .values("variant")
        .annotate(units=Count("pk"), total_requests=Sum("requests"), total_successes=Sum("successes"), **aggregates)
    )
    found = {}
    for totals in grouped:
        arms = {}
        for metric, (n, requests, mean, sd) in aliases.items():
            arms[metric] = Arm(
                units=totals["units"],
                requests=round(totals[requests] or 0),
                n=totals[n],
                mean=totals[mean],
                sd=totals[sd],
                successes=totals["total_successes"] or 0,
            )
        found[totals["variant"]] = {
            "units": totals["units"],
            "requests": totals["total_requests"] or 0,
            "arms": arms,
        }
    return found


def _hour_rows(experiment_id):
    """Return the variant-hour rollups of the experiment as (variant, bucket, sums, latency, ttft), oldest first."""
    return list(
        VariantRollup.objects.filter(experiment=experiment_id)
        .order_by("bucket_start", "variant")
        .values_list("variant", "bucket_start", "sums", "latency_ms_histogram", "ttft_ms_histogram")
    )


def _metric_names(experiment, hour_rows):
    """Return the built-in metrics, feedback, then custom feedback metrics (seen, primary or guardrail), by name."""
    known = (*BUILTIN_METRICS, FEEDBACK_METRIC)
    custom = {metric for _, _, sums, _, _ in hour_rows for metric in sums}
    custom.update([experiment.primary_metric, *(experiment.guardrail_metrics or [])])
    return [*known, *sorted(metric for metric in custom if metric and metric not in known)]


def _iso(moment):
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _experiment_block(experiment, now):
    """Return the experiment's own fields as the results show them."""
    days = None
    if experiment.started_at is not None:
        end = experiment.stopped_at or now
        days = round(max((end - experiment.started_at).total_seconds(), 0.0) / 86400, 2)
    return {
        "id": experiment.id,
        "name": experiment.name,
        "status": experiment.status,
        "started_at": _iso(experiment.started_at),
        "stopped_at": _iso(experiment.stopped_at),
        "ends_at": _iso(experiment.ends_at),
        "traffic_percentage": experiment.traffic_percentage,
        "primary_metric": experiment.primary_metric,
        "guardrail_metrics": list(experiment.guardrail_metrics or []),
        "hypothesis": experiment.hypothesis,
        "days_running": days,
    }


def experiment_results(experiment, *, now=None):
    """Return the results of an experiment (the shape of `GET /v1/admin/experiments/{id}/results`)."""
    now = now or timezone.now()
    variants = list(experiment.variants.select_related("model").order_by("position", "pk"))
    names = [variant.label for variant in variants]
    control = next((v.label for v in variants if v.is_control), names[0] if names else None)
    hour_rows = _hour_rows(experiment.id)
    metrics = _metric_names(experiment, hour_rows)
    feedback_metrics = [metric for metric in metrics if metric not in BUILTIN_METRICS]
    found = unit_statistics(experiment.id, feedback_metrics)
    empty = Arm(units=0, requests=0, n=0, mean=None, sd=None)
    arms = {
        (metric, name): found.get(name, {}).get("arms", {}).get(metric, empty) for metric in metrics for name in names
    }
    merged = {}
    for variant, _, _, latency, ttft in hour_rows:
        merged.setdefault(("latency_ms", variant), []).append(latency)
        merged.setdefault(("ttft_ms", variant), []).append(ttft)
    percentiles = {}
    for key, histograms in merged.items():
        counts = histogram.merge(histograms)
        percentiles[key] = (histogram.percentile(counts, 50), histogram.percentile(counts, 95))
    units = {name: found.get(name, {}).get("units", 0) for name in names}
    rows = (
        summarise(
            metrics=metrics,
            variants=names,
            control=control,
            arms=arms,
            percentiles=percentiles,
            primary=experiment.primary_metric,
            guardrails=set(experiment.guardrail_metrics or []),
            higher_is_better={metric: experiment.higher_is_better(metric) for metric in metrics},
        )
        if names
        else []
    )
    return {
        "experiment": _experiment_block(experiment, now),
        "srm": sample_ratio(units, {v.label: v.weight for v in variants}),
        "variants": [
            {
                "variant": v.label,
                "model": v.model.name,
                "is_control": v.label == control,
                "weight": v.weight,
                "units": units[v.label],
                "requests": found.get(v.label, {}).get("requests", 0),
            }
            for v in variants
        ],
        "metrics": rows,
        "correction": CORRECTION,
        "aggregation": AGGREGATION,
        "sample_size": sample_size(
            metric=experiment.primary_metric,
            mde_relative=experiment.minimum_detectable_effect,
            control_arm=arms.get((experiment.primary_metric, control)),
            smallest_variant_units=min(units.values(), default=0),
        ),
        "metric_names": metrics,
    }


def metric_timeseries(experiment):
    """Return each metric's per-request mean per variant and hour, every hour from the first to the last rollup."""
    hour_rows = _hour_rows(experiment.id)
    metrics = _metric_names(experiment, hour_rows)
    names = [variant.label for variant in experiment.variants.select_related("model").order_by("position", "pk")]
    if not hour_rows:
        return {"buckets": [], "series": {metric: {name: [] for name in names} for metric in metrics}}
    first, last = hour_rows[0][1], hour_rows[-1][1]
    buckets = [first + timedelta(hours=i) for i in range(int((last - first).total_seconds() // 3600) + 1)]
    position = {bucket: i for i, bucket in enumerate(buckets)}
    series = {metric: {name: [None] * len(buckets) for name in names} for metric in metrics}
    for variant, bucket, sums, _, _ in hour_rows:
        for metric, (n, total, _) in sums.items():
            if metric in series and variant in series[metric] and n:
                series[metric][variant][position[bucket]] = total / n
    return {"buckets": [_iso(bucket) for bucket in buckets], "series": series}


def experiment_summaries(*, now=None):
    """Return a short summary of each running experiment (the model-selector stats' `experiments` list)."""
    summaries = []
    for experiment in Experiment.objects.filter(status=ExperimentStatus.RUNNING).order_by("id"):
        results = experiment_results(experiment, now=now)
        verdicts = {
            row["variant"]: row["verdict"] for row in results["metrics"] if row["metric"] == experiment.primary_metric
        }
        summaries.append(
            {
                "id": experiment.id,
                "name": experiment.name,
                "status": experiment.status,
                "traffic_percentage": experiment.traffic_percentage,
                "primary_metric": experiment.primary_metric,
                "srm_mismatch": results["srm"]["mismatch"],
                "variants": [
                    {
                        "variant": v["variant"],
                        "model": v["model"],
                        "units": v["units"],
                        "requests": v["requests"],
                        "verdict": verdicts.get(v["variant"]),
                    }
                    for v in results["variants"]
                ],
            }
        )
    return summaries
