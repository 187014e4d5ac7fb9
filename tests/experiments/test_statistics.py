"""Tests for experiments/statistics.py: every figure against scipy and statsmodels on fixed data, to 1e-6."""

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats
from scipy.special import betainc, gammaincc
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from experiments import statistics as st

TOL = 1e-6

# Fixed raw samples (control, treatment): equal n, unequal n, small n, very different variances.
_rng = np.random.default_rng(20261130)
MEAN_SAMPLES = [
    pytest.param(_rng.normal(100, 15, 200).round(3), _rng.normal(95, 15, 200).round(3), id="equal-n"),
    pytest.param(_rng.normal(400, 80, 57).round(3), _rng.normal(430, 20, 311).round(3), id="unequal-n"),
    pytest.param(np.array([3.1, 2.7, 4.0]), np.array([5.5, 6.1, 4.9, 7.2]), id="small-n"),
    pytest.param(_rng.exponential(2.0, 1000).round(4), _rng.exponential(2.1, 25).round(4), id="skewed"),
]

PROPORTIONS = [
    pytest.param(480, 1000, 520, 1000, id="equal-n"),
    pytest.param(93, 120, 2050, 2500, id="unequal-n"),
    pytest.param(3, 9, 7, 11, id="small-n"),
    pytest.param(9_912, 10_000, 9_871, 10_000, id="rates-near-one"),
]


def _summary(sample):
    return float(np.mean(sample)), float(np.std(sample, ddof=1)), len(sample)


@pytest.mark.parametrize(("control", "treatment"), MEAN_SAMPLES)
def test_welch_matches_scipy(control, treatment):
    result = st.welch(*_summary(control), *_summary(treatment))

    reference = stats.ttest_ind(treatment, control, equal_var=False)
    ci = reference.confidence_interval(0.95)
    assert result.diff == pytest.approx(treatment.mean() - control.mean(), abs=TOL)
    assert result.rel_diff == pytest.approx((treatment.mean() - control.mean()) / control.mean(), abs=TOL)
    assert result.t == pytest.approx(reference.statistic, abs=TOL)
    assert result.df == pytest.approx(reference.df, abs=TOL)
    assert result.p_value == pytest.approx(reference.pvalue, abs=TOL)
    assert result.ci_low == pytest.approx(ci.low, abs=TOL)
    assert result.ci_high == pytest.approx(ci.high, abs=TOL)


def test_welch_relative_difference_is_none_on_a_zero_control_mean():
    assert st.welch(0.0, 1.0, 10, 0.5, 1.0, 10).rel_diff is None


@pytest.mark.parametrize("df", [1, 2, 3.7, 10, 29.5, 100, 1000, 1e6, 1e7])
@pytest.mark.parametrize("q", [1e-6, 0.001, 0.025, 0.1, 0.5, 0.8, 0.975, 0.9995])
def test_t_quantile_and_cdf_match_scipy(q, df):
    assert st.t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), abs=1e-9 * max(1.0, abs(stats.t.ppf(q, df))))
    x = stats.t.ppf(q, df)
    assert st.t_cdf(x, df) == pytest.approx(stats.t.cdf(x, df), abs=1e-9)


@pytest.mark.parametrize("q", [1e-9, 1e-6, 1e-3])
def test_t_quantile_keeps_relative_precision_far_in_the_tails(q):
    # Closed forms (df = 1: Cauchy; df = 2), written so they lose nothing to rounding q - 0.5 or 1 - q.
    assert st.t_ppf(q, 1) == pytest.approx(-1 / math.tan(math.pi * q), rel=1e-12)
    assert st.t_ppf(1 - q, 1) == pytest.approx(1 / math.tan(math.pi * q), rel=1e-6)
    assert st.t_ppf(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "x"), [(0.5, 0.5, 0.3), (5, 0.5, 0.9), (50, 0.5, 0.99), (2.5, 7, 0.1), (30, 40, 0.5)]
)
def test_regularized_beta_matches_scipy(a, b, x):
    assert st.regularized_beta(a, b, x) == pytest.approx(betainc(a, b, x), abs=1e-12)


@pytest.mark.parametrize(("a", "x"), [(0.5, 0.1), (0.5, 12.0), (1, 3.0), (4.5, 2.0), (4.5, 20.0), (50, 45.0)])
def test_regularized_gamma_upper_matches_scipy(a, x):
    assert st.regularized_gamma_upper(a, x) == pytest.approx(gammaincc(a, x), abs=1e-12)


@pytest.mark.parametrize(("successes_c", "n_c", "successes_t", "n_t"), PROPORTIONS)
def test_two_proportions_match_statsmodels(successes_c, n_c, successes_t, n_t):
    result = st.two_proportions(successes_c, n_c, successes_t, n_t)

    z, p_value = proportions_ztest([successes_t, successes_c], [n_t, n_c])
    ci_low, ci_high = confint_proportions_2indep(successes_t, n_t, successes_c, n_c, method="wald", compare="diff")
    rate_c, rate_t = successes_c / n_c, successes_t / n_t
    assert result.diff == pytest.approx(rate_t - rate_c, abs=TOL)
    assert result.rel_diff == pytest.approx((rate_t - rate_c) / rate_c, abs=TOL)
    assert result.z == pytest.approx(z, abs=TOL)
    assert result.p_value == pytest.approx(p_value, abs=TOL)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), abs=TOL)
    assert result.ci_low == pytest.approx(ci_low, abs=TOL)
    assert result.ci_high == pytest.approx(ci_high, abs=TOL)


def test_two_proportions_relative_difference_is_none_on_a_zero_control_rate():
    assert st.two_proportions(0, 100, 5, 100).rel_diff is None


def _gbstats_half_width(se, n, alpha, tau):
    # The published formula, written out independently: Howard et al. (2021) eq. 14 as gbstats applies it.
    rho = math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tau)
    s2 = se**2 * n
    return math.sqrt(s2 * (2 * (n * rho**2 + 1)) / (n**2 * rho**2) * math.log(math.sqrt(n * rho**2 + 1) / alpha))


@pytest.mark.parametrize(("control", "treatment"), MEAN_SAMPLES)
def test_sequential_ci_contains_the_fixed_ci(control, treatment):
    fixed = st.welch(*_summary(control), *_summary(treatment))
    n = len(control) + len(treatment)

    for tau in (100, 5000, 100_000):
        sequential = st.sequential_ci(fixed.diff, fixed.se, n, tau=tau)
        assert sequential.low < fixed.ci_low
        assert sequential.high > fixed.ci_high
        assert sequential.high - fixed.diff == pytest.approx(_gbstats_half_width(fixed.se, n, 0.05, tau), abs=TOL)
        assert fixed.diff - sequential.low == pytest.approx(sequential.high - fixed.diff, abs=1e-12)


def test_sequential_ci_is_narrowest_near_tau():
    # Relative to the fixed-horizon half-width (1.96 se), the cost of always-valid inference is least at n ≈ tau.
    ratios = {n: (st.sequential_ci(0.0, 1.0, n, tau=5000).high / stats.norm.ppf(0.975)) for n in (50, 5000, 500_000)}
    assert ratios[5000] < ratios[50]
    assert ratios[5000] < ratios[500_000]


@pytest.mark.parametrize(
    ("observed", "weights"),
    [([5_300, 4_700], [50, 50]), ([5_030, 4_970], [1, 1]), ([2_100, 2_950, 4_950], [20, 30, 50]), ([7, 3], [1, 1])],
)
def test_srm_matches_scipy_chisquare(observed, weights):
    result = st.srm(observed, weights)

    expected = [sum(observed) * w / sum(weights) for w in weights]
    reference = stats.chisquare(observed, expected)
    assert result.chi2 == pytest.approx(reference.statistic, abs=TOL)
    assert result.df == len(observed) - 1
    assert result.p_value == pytest.approx(reference.pvalue, abs=TOL)


def test_srm_flags_a_skewed_split():
    assert st.srm([5_300, 4_700], [50, 50]).mismatch


def test_srm_does_not_flag_a_fair_split():
    assert not st.srm([5_030, 4_970], [50, 50]).mismatch
    assert not st.srm([2_010, 2_990, 5_000], [20, 30, 50]).mismatch


P_VALUE_SETS = [
    [0.01, 0.04, 0.03, 0.005, 0.5],
    [0.2, 0.001, 0.049, 0.049, 0.8, 0.0001, 0.3],
    [0.9, 0.02],
    [0.04],
]


@pytest.mark.parametrize("p_values", P_VALUE_SETS)
@pytest.mark.parametrize(("method", "reference_method"), [("holm", "holm"), ("bh", "fdr_bh")])
def test_adjust_matches_statsmodels(p_values, method, reference_method):
    adjusted = st.adjust(p_values, method=method)

    reference = multipletests(p_values, method=reference_method)[1]
    assert adjusted == pytest.approx(list(reference), abs=TOL)


def test_adjust_rejects_an_unknown_method():
    with pytest.raises(ValueError):
        st.adjust([0.1], method="bonferroni-ish")


@pytest.mark.parametrize(
    ("ci_low", "ci_high", "higher_is_better", "expected"),
    [
        (0.1, 0.5, True, "better"),
        (0.1, 0.5, False, "worse"),
        (-0.5, -0.1, True, "worse"),
        (-0.5, -0.1, False, "better"),
        (-0.1, 0.5, True, "inconclusive"),
        (-0.1, 0.5, False, "inconclusive"),
        (0.0, 0.5, True, "inconclusive"),
    ],
)
def test_verdict(ci_low, ci_high, higher_is_better, expected):
    assert st.verdict(ci_low, ci_high, higher_is_better) == expected


@pytest.mark.parametrize(("sd", "mde"), [(15.0, 5.0), (200.0, 20.0), (1.0, 0.8), (1.0, 2.0), (0.3, 0.01)])
@pytest.mark.parametrize(("alpha", "power"), [(0.05, 0.8), (0.01, 0.9)])
def test_sample_size_for_means_matches_statsmodels(sd, mde, alpha, power):
    reference = TTestIndPower().solve_power(effect_size=mde / sd, alpha=alpha, power=power, ratio=1.0)

    assert st.sample_size_per_variant(sd, mde, alpha=alpha, power=power, kind="mean") == math.ceil(reference)


@pytest.mark.parametrize(("rate", "mde"), [(0.5, 0.05), (0.1, 0.01), (0.95, -0.02), (0.3, 0.2)])
@pytest.mark.parametrize(("alpha", "power"), [(0.05, 0.8), (0.01, 0.9)])
def test_sample_size_for_proportions_matches_statsmodels(rate, mde, alpha, power):
    effect = abs(mde) / math.sqrt(rate * (1 - rate))
    reference = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0)

    assert st.sample_size_per_variant(rate, mde, alpha=alpha, power=power, kind="proportion") == math.ceil(reference)


def test_module_imports_neither_scipy_nor_django():
    # The results page must not need the test-only references, and pure code must not need Django.
    code = "import sys, experiments.statistics; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    for package in ("scipy", "numpy", "statsmodels", "django"):
        assert f"'{package}'" not in loaded
