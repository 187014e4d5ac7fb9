"""Fixed-bucket, log-spaced histograms of milliseconds that merge by adding counts (pure: no Django, no I/O).

A histogram is a list of integer counts indexed by bucket, with its trailing empty buckets left off (`[]` is
empty), so two histograms of any lengths merge by adding counts index by index, and a p95 over a day is read from
the merged minute or hour histograms of that day. Bucket 0 holds values under 1 ms; bucket i (1 ≤ i < LAST) holds
[10^((i-1)/20), 10^(i/20)) ms: 20 buckets per decade, each 12 % wide, so a percentile read from them (the middle of
its bucket) is within 6 % of the exact one; bucket LAST holds everything from 10^6 ms (about 17 minutes) up.

`bucket_index` is the one definition of the buckets; the rollup's SQL (routing/rollups.py) computes the same index
from SCALE, MIN_MS, MAX_MS and LAST with the same floating-point operations.
"""

import itertools
import math

BUCKETS_PER_DECADE = 20
MIN_MS = 1.0
MAX_MS = 1e6
# index = floor(ln(ms) · SCALE) + 1 for MIN_MS ≤ ms < MAX_MS: ln, not log10, because SQL has ln everywhere.
SCALE = BUCKETS_PER_DECADE / math.log(10)
LAST = BUCKETS_PER_DECADE * round(math.log10(MAX_MS / MIN_MS)) + 1


def bucket_index(ms):
    """Return the bucket of a value in milliseconds (under 1 ms: 0; 10^6 ms and over, or NaN: LAST)."""
    if ms < MIN_MS:
        return 0
    if not ms < MAX_MS:  # NaN too, where Postgres puts it: above every number
        return LAST
    return min(math.floor(math.log(ms) * SCALE) + 1, LAST)


def bucket_bounds(index):
    """Return the (lowest, highest) milliseconds of a bucket; the highest is not in it."""
    if index <= 0:
        return 0.0, MIN_MS
    if index >= LAST:
        return MAX_MS, math.inf
    return 10 ** ((index - 1) / BUCKETS_PER_DECADE), 10 ** (index / BUCKETS_PER_DECADE)


def bucket_value(index):
    """Return the value that stands for a bucket: its geometric middle (the first's middle, the last's start)."""
    if index <= 0:
        return MIN_MS / 2
    if index >= LAST:
        return MAX_MS
    return 10 ** ((index - 0.5) / BUCKETS_PER_DECADE)


def add(histogram, index, count=1):
    """Add count values to a bucket of the histogram, in place (growing it as needed); return the histogram."""
    if not 0 <= index <= LAST:
        raise ValueError(f"a bucket index is between 0 and {LAST}, not {index!r}")
    if index >= len(histogram):
        histogram.extend([0] * (index + 1 - len(histogram)))
    histogram[index] += count
    return histogram


def merge(histograms):
    """Return one new histogram holding the counts of all the given ones."""
    return [sum(counts) for counts in itertools.zip_longest(*histograms, fillvalue=0)]


def percentile(histogram, p):
    """Return the nearest-rank p-th percentile (0 <= p <= 100) as its bucket's value, or None when it is empty.

    The rank is that of routing.stats.percentile (⌈p/100 · n⌉-th smallest): p95 of 100 values is in the bucket
    of the 95th.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"a percentile is between 0 and 100, not {p!r}")
    total = sum(histogram)
    if not total:
        return None
    rank = max(math.ceil(round(p * total / 100, 9)), 1)
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return bucket_value(index)
    raise AssertionError("unreachable: the rank is at most the total")
