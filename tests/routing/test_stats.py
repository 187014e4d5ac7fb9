"""Unit tests for routing.stats: the one percentile the gateway and bench/ use."""

import pytest

from routing.stats import percentile

HUNDRED = list(range(1, 101))


@pytest.mark.parametrize(
    "values, p, expected",
    [
        (HUNDRED, 95, 95),  # not the 96th value: ⌈0.95 · 100⌉ = 95
        (HUNDRED, 50, 50),
        (HUNDRED, 99, 99),
        (HUNDRED, 100, 100),
        (HUNDRED, 0, 1),
        (HUNDRED, 0.5, 1),
        (HUNDRED, 94.1, 95),
        ([1, 2, 3, 4], 50, 2),  # an even count: the lower middle value, never an average
        ([10, 20, 30], 50, 20),
        ([7.5], 50, 7.5),
        ([7.5], 99, 7.5),
        (list(range(1, 1501)), 2.2, 33),  # 2.2 * 1500 / 100 is a hair over 33 in floating point
    ],
)
def test_it_is_the_nearest_rank_value(values, p, expected):
    assert percentile(values, p) == expected


def test_no_values_have_no_percentile():
    assert percentile([], 50) is None


@pytest.mark.parametrize("p", [-1, 100.5, 950])
def test_a_percentile_outside_0_to_100_is_refused(p):
    with pytest.raises(ValueError):
        percentile(HUNDRED, p)
