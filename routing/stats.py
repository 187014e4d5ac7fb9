"""Statistics over plain numbers, shared by the gateway and bench/run.py (which runs without Django: keep it so)."""

import math


def percentile(sorted_values, p):
    """Return the nearest-rank p-th percentile (0 <= p <= 100) of ascending values, or None when there are none.

    Nearest rank: the ⌈p/100 · n⌉-th smallest of the n values (the smallest when that is 0), so always a value that
    was seen, and the smallest one with at least p % of the values at or below it: p95 of 1..100 is 95, p50 of
    1..4 is 2, p100 is the largest.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"a percentile is between 0 and 100, not {p!r}")
    n = len(sorted_values)
    if not n:
        return None
    # Rounded first so that float noise cannot push an exact rank to the next one (2.2 * 1500 / 100 is 33.0000…01).
    rank = math.ceil(round(p * n / 100, 9))
    return sorted_values[max(rank, 1) - 1]
