"""Statistics for experiment results: pure functions of summary statistics, returning frozen dataclasses.

Everything takes counts, means and standard deviations (what the rollups keep), never raw rows, and uses only the
standard library, so the results page never needs scipy. tests/experiments/test_statistics.py checks every figure
against scipy and statsmodels.
"""

import math
from dataclasses import dataclass
from statistics import NormalDist

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 500
_NORMAL = NormalDist()


@dataclass(frozen=True)
class MeanComparison:
    """Welch's t-test of treatment against control."""

    diff: float
    rel_diff: float | None
    se: float
    df: float
    t: float
    p_value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ProportionComparison:
    """Two-proportion z-test of treatment against control."""

    rate_c: float
    rate_t: float
    diff: float
    rel_diff: float | None
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Interval:
    """A confidence interval."""

    low: float
    high: float


@dataclass(frozen=True)
class SampleRatioCheck:
    """χ² goodness of fit of units per variant against the configured weights."""

    chi2: float
    df: int
    p_value: float
    mismatch: bool


# --- special functions -------------------------------------------------------------------------------------------


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Return the continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes 6.4)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError("incomplete beta continued fraction did not converge")


def _log_beta(a: float, b: float) -> float:
    if b == 0.5 and a >= 20.0:
        # lgamma(a + 1/2) - lgamma(a) cancels badly for the large a of big-sample t-tests; its asymptotic series
        # (error below 1e-15 from a = 20) keeps the t CDF accurate at millions of degrees of freedom.
        ratio = 0.5 * math.log(a) - 1 / (8 * a) + 1 / (192 * a**3) - 1 / (640 * a**5) + 17 / (14336 * a**7)
        return math.lgamma(0.5) - ratio
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def regularized_beta(a: float, b: float, x: float, y: float | None = None) -> float:
    """Return the regularized incomplete beta function I_x(a, b); y, if given, is 1 - x computed without rounding."""
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_x = math.log1p(-y) if y < 0.5 else math.log(x)
    log_y = math.log1p(-x) if x < 0.5 else math.log(y)
    front = math.exp(a * log_x + b * log_y - _log_beta(a, b))
    # The fraction converges fast only on this side of the mean; use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, y) / b


def regularized_gamma_upper(a: float, x: float) -> float:
    """Return the regularized upper incomplete gamma function Q(a, x) (Numerical Recipes 6.2)."""
    if x <= 0.0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        # Series for P(a, x).
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITER * 10):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                return 1.0 - total * math.exp(log_front)
        raise ArithmeticError("incomplete gamma series did not converge")
    # Continued fraction for Q(a, x), modified Lentz.
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER + 1):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + an / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return math.exp(log_front) * h
    raise ArithmeticError("incomplete gamma continued fraction did not converge")


def t_two_sided_p(t: float, df: float) -> float:
    """Return P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0
    # x = df / (df + t²) sits near 1 at large df: pass 1 - x exactly rather than rounded.
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """Return P(T <= t) for Student's t with df degrees of freedom."""
    tail = t_two_sided_p(t, df) / 2.0
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Return the q-quantile of Student's t with df degrees of freedom (bisection on the CDF)."""
    if not 0.0 < q < 1.0:
        raise ValueError("q must be in (0, 1)")
    if q == 0.5:
        return 0.0
    # Solve |t| on the two-sided p from the nearer tail, which keeps precision where q or 1 - q is tiny.
    sign, target = (-1.0, 2.0 * q) if q < 0.5 else (1.0, 2.0 * (1.0 - q))
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > target:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_two_sided_p(mid, df) > target:
            low = mid
        else:
            high = mid
        if high - low <= 1e-14 * max(1.0, high):
            break
    return sign * (low + high) / 2.0


def _normal_two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def _relative(diff: float, base: float) -> float | None:
    return None if base == 0 else diff / base


# --- tests -------------------------------------------------------------------------------------------------------


def welch(
    mean_c: float, sd_c: float, n_c: int, mean_t: float, sd_t: float, n_t: int, alpha: float = 0.05
) -> MeanComparison:
    """Return Welch's t-test of the difference of means (treatment - control) with its 1 - alpha CI."""
    if n_c < 2 or n_t < 2:
        raise ValueError("each group needs at least two units")
    var_c, var_t = sd_c * sd_c / n_c, sd_t * sd_t / n_t
    se = math.sqrt(var_c + var_t)
    diff = mean_t - mean_c
    if se == 0:
        # No spread at all: the difference is either exactly nothing or certain.
        df = float(n_c + n_t - 2)
        t = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        return MeanComparison(diff, _relative(diff, mean_c), 0.0, df, t, 1.0 if diff == 0 else 0.0, diff, diff)
    df = (var_c + var_t) ** 2 / (var_c * var_c / (n_c - 1) + var_t * var_t / (n_t - 1))
    t = diff / se
    half = t_ppf(1.0 - alpha / 2.0, df) * se
    return MeanComparison(diff, _relative(diff, mean_c), se, df, t, t_two_sided_p(t, df), diff - half, diff + half)


def two_proportions(
    successes_c: int, n_c: int, successes_t: int, n_t: int, alpha: float = 0.05
) -> ProportionComparison:
    """Return the pooled two-proportion z-test and the unpooled (Wald) 1 - alpha CI of the rate difference."""
    if n_c < 1 or n_t < 1:
        raise ValueError("each group needs at least one unit")
    rate_c, rate_t = successes_c / n_c, successes_t / n_t
    diff = rate_t - rate_c
    pooled = (successes_c + successes_t) / (n_c + n_t)
    se_pooled = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_t))
    if se_pooled == 0:
        z, p_value = 0.0, 1.0
    else:
        z = diff / se_pooled
        p_value = _normal_two_sided_p(z)
    se = math.sqrt(rate_c * (1.0 - rate_c) / n_c + rate_t * (1.0 - rate_t) / n_t)
    half = _NORMAL.inv_cdf(1.0 - alpha / 2.0) * se
    return ProportionComparison(rate_c, rate_t, diff, _relative(diff, rate_c), se, z, p_value, diff - half, diff + half)


def sequential_ci(diff: float, se: float, n: int, alpha: float = 0.05, tau: float = 5000.0) -> Interval:
    """Return an always-valid 1 - alpha confidence interval for a difference (normal-mixture confidence sequence).

    This is the mixture SPRT of Johari, Pekelis & Walsh, "Always Valid Inference: Continuous Monitoring of A/B
    Tests" (2017, arXiv:1512.04922), in the form GrowthBook's gbstats uses for its "sequential" method
    (Howard et al., "Time-uniform, nonparametric, nonasymptotic confidence sequences", 2021, eq. 14):

        s² = se² · n
        ρ² = (-2 ln α + ln(1 - 2 ln α)) / tau
        half-width = sqrt(s²) · sqrt( 2 (n ρ² + 1) / (n² ρ²) · ln( sqrt(n ρ² + 1) / α ) )

    n is the number of units behind se (both arms together). The tuning parameter tau is the sample size at which
    the interval is tightest relative to the fixed-horizon one: set it near the expected final number of units.
    The interval holds at every n simultaneously, so analysts may look daily; the price is that it is always wider
    than the fixed-horizon interval.
    """
    if n < 1 or se < 0 or tau <= 0:
        raise ValueError("n and tau must be positive, se non-negative")
    rho2 = (-2.0 * math.log(alpha) + math.log(1.0 - 2.0 * math.log(alpha))) / tau
    s2 = se * se * n
    spread = 2.0 * (n * rho2 + 1.0) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1.0) / alpha)
    half = math.sqrt(s2) * math.sqrt(spread)
    return Interval(diff - half, diff + half)


def srm(observed_units_per_variant: list[int], weights: list[float]) -> SampleRatioCheck:
    """Return the χ² goodness-of-fit check of units per variant against the weights, flagged at p < 0.001."""
    if len(observed_units_per_variant) != len(weights) or len(weights) < 2:
        raise ValueError("need one weight per variant and at least two variants")
    total, weight_sum = sum(observed_units_per_variant), sum(weights)
    if total == 0:
        return SampleRatioCheck(0.0, len(weights) - 1, 1.0, False)
    chi2 = 0.0
    for observed, weight in zip(observed_units_per_variant, weights, strict=True):
        expected = total * weight / weight_sum
        chi2 += (observed - expected) ** 2 / expected
    df = len(weights) - 1
    p_value = regularized_gamma_upper(df / 2.0, chi2 / 2.0)
    return SampleRatioCheck(chi2, df, p_value, p_value < 0.001)


def adjust(p_values: list[float], method: str = "holm") -> list[float]:
    """Return p-values adjusted for multiple comparisons ("holm" or "bh" Benjamini–Hochberg), in input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    if method == "holm":
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p_values[i]))
            adjusted[i] = running
    elif method == "bh":
        running = 1.0
        for rank in range(m - 1, -1, -1):
            i = order[rank]
            running = min(running, m * p_values[i] / (rank + 1))
            adjusted[i] = running
    else:
        raise ValueError(f"unknown method {method!r}")
    return adjusted


def verdict(ci_low: float, ci_high: float, higher_is_better: bool) -> str:
    """Return "better", "worse" or "inconclusive" for a treatment whose difference CI is [ci_low, ci_high]."""
    if ci_low > 0:
        return "better" if higher_is_better else "worse"
    if ci_high < 0:
        return "worse" if higher_is_better else "better"
    return "inconclusive"


def _power_normal(effect: float, n: float, alpha: float) -> float:
    crit = _NORMAL.inv_cdf(1.0 - alpha / 2.0)
    shift = effect * math.sqrt(n / 2.0)
    return _NORMAL.cdf(shift - crit) + _NORMAL.cdf(-shift - crit)


def _power_t(effect: float, n: float, alpha: float) -> float:
    # Central-t approximation of the noncentral t power: the critical value and the shifted tails both use df.
    df = 2.0 * n - 2.0
    crit = t_ppf(1.0 - alpha / 2.0, df)
    shift = effect * math.sqrt(n / 2.0)
    return (1.0 - t_cdf(crit - shift, df)) + t_cdf(-crit - shift, df)


def sample_size_per_variant(
    baseline_sd_or_rate: float, mde: float, alpha: float = 0.05, power: float = 0.8, kind: str = "mean"
) -> int:
    """Return the units needed per variant (equal split) to detect an absolute difference of mde.

    kind="mean": baseline_sd_or_rate is the metric's standard deviation; two-sided t-test.
    kind="proportion": it is the baseline rate, whose sd is sqrt(p(1 - p)); two-sided z-test.
    """
    if mde == 0:
        raise ValueError("mde must be non-zero")
    if kind == "mean":
        sd, power_at = baseline_sd_or_rate, _power_t
    elif kind == "proportion":
        rate = baseline_sd_or_rate
        if not 0.0 < rate < 1.0:
            raise ValueError("the baseline rate must be in (0, 1)")
        sd, power_at = math.sqrt(rate * (1.0 - rate)), _power_normal
    else:
        raise ValueError(f"unknown kind {kind!r}")
    if sd <= 0:
        raise ValueError("the baseline sd must be positive")
    effect = abs(mde) / sd
    low, high = 2.0, 4.0
    while power_at(effect, high, alpha) < power:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if power_at(effect, mid, alpha) < power:
            low = mid
        else:
            high = mid
        if high - low < 1e-9:
            break
    return math.ceil(high - 1e-9)
