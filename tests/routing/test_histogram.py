"""Unit tests for routing.histogram: log-spaced bucket counts that merge by adding, and percentiles read from them."""

import math
import random
import re

import pytest

from routing import histogram
from routing.histogram import LAST, add, bucket_bounds, bucket_index, bucket_value, merge, percentile
from routing.stats import percentile as exact_percentile


def histogram_of(values):
    """Return the histogram of some milliseconds."""
    counts = []
    for ms in values:
        add(counts, bucket_index(ms))
    return counts


@pytest.mark.parametrize(
    "ms, index",
    [
        (0, 0),
        (-5, 0),
        (0.999, 0),
        (1, 1),
        (1.12, 1),  # 10^(1/20) = 1.122…
        (1.13, 2),
        (10, 21),
        (100, 41),
        (999_999, LAST - 1),
        (1e6, LAST),
        (1e9, LAST),
        (math.inf, LAST),
        (math.nan, LAST),  # where Postgres sorts NaN, so the SQL and this agree
    ],
)
def test_a_value_falls_in_its_bucket(ms, index):
    assert bucket_index(ms) == index


def test_every_value_is_within_the_bounds_of_its_bucket():
    rng = random.Random(7)
    for ms in [rng.lognormvariate(5, 3) for _ in range(5000)]:
        low, high = bucket_bounds(bucket_index(ms))
        assert low * (1 - 1e-12) <= ms < high * (1 + 1e-12)


def test_buckets_are_twenty_per_decade_and_contiguous():
    assert LAST == 121
    for index in range(LAST):
        assert bucket_bounds(index)[1] == bucket_bounds(index + 1)[0]
    low, high = bucket_bounds(41)
    assert high / low == pytest.approx(10 ** (1 / 20))
    assert bucket_bounds(0) == (0.0, 1.0) and bucket_bounds(LAST) == (1e6, math.inf)


def test_a_bucket_stands_for_its_geometric_middle():
    low, high = bucket_bounds(41)
    assert bucket_value(41) == pytest.approx(math.sqrt(low * high))
    assert (bucket_value(0), bucket_value(LAST)) == (0.5, 1e6)


def test_add_grows_the_histogram_to_the_bucket_and_counts():
    counts = add([], 3)
    assert counts == [0, 0, 0, 1]
    assert add(counts, 1, 5) == [0, 5, 0, 1]
    assert add(counts, 1, 2) == [0, 7, 0, 1]
    with pytest.raises(ValueError):
        add(counts, LAST + 1)
    with pytest.raises(ValueError):
        add(counts, -1)


def test_merging_adds_counts_whatever_the_lengths():
    assert merge([[1, 2], [0, 0, 3], [], [4]]) == [5, 2, 3]
    assert merge([]) == []


def test_the_merged_histogram_is_the_histogram_of_all_values():
    rng = random.Random(3)
    parts = [[rng.lognormvariate(4, 1.5) for _ in range(rng.randrange(0, 300))] for _ in range(20)]
    merged = merge(histogram_of(part) for part in parts)
    assert merged == histogram_of(ms for part in parts for ms in part)


@pytest.mark.parametrize("p", [50, 95, 99])
def test_a_percentile_is_in_the_bucket_of_the_exact_one_within_six_percent(p):
    rng = random.Random(p)
    values = sorted(rng.lognormvariate(5, 1) for _ in range(2000))
    exact = exact_percentile(values, p)
    estimate = percentile(histogram_of(values), p)
    assert bucket_index(estimate) == bucket_index(exact)
    assert estimate == pytest.approx(exact, rel=10 ** (1 / 40) - 1 + 1e-9)


def test_the_percentile_rank_is_the_nearest_rank():
    # 95 values in bucket 21 (10 ms) and 5 in bucket 41 (100 ms): p95 is the 95th value, not the 96th.
    counts = add(add([], 21, 95), 41, 5)
    assert percentile(counts, 95) == bucket_value(21)
    assert percentile(counts, 95.1) == bucket_value(41)
    assert percentile(counts, 0) == bucket_value(21)
    assert percentile(counts, 100) == bucket_value(41)


def test_an_empty_histogram_has_no_percentile():
    assert percentile([], 50) is None
    assert percentile([0, 0], 50) is None


@pytest.mark.parametrize("p", [-1, 100.5])
def test_a_percentile_outside_0_to_100_is_refused(p):
    with pytest.raises(ValueError):
        percentile([1], p)


def test_the_module_imports_no_django():
    with open(histogram.__file__) as source:
        assert not re.search(r"^\s*(from|import)\s+django", source.read(), re.M)
