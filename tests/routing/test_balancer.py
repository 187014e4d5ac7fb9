"""Unit tests for the pure instance-selection strategies."""

import random
from collections import Counter

import pytest

from routing.balancer import Candidate, choose, normalize_strategy

A, B, C = Candidate("a"), Candidate("b"), Candidate("c")


def picks(strategy, candidates, n=3000, seed=1):
    """Return how often each candidate id is chosen over n rounds."""
    rng = random.Random(seed)
    return Counter(choose(strategy, candidates, i, rng).id for i in range(n))


def test_round_robin_is_a_strict_rotation():
    rng = random.Random(0)
    assert [choose("round-robin", [A, B, C], i, rng).id for i in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_random_is_roughly_uniform():
    counts = picks("random", [A, B, C])
    assert all(900 < n < 1100 for n in counts.values()), counts


def test_weighted_follows_weights_and_never_picks_weight_zero():
    counts = picks("weighted", [Candidate("a", weight=3), Candidate("b", weight=1), Candidate("z", weight=0)])
    assert counts["z"] == 0
    assert 2.5 < counts["a"] / counts["b"] < 3.5, counts


def test_weighted_with_all_zero_weights_still_serves():
    assert sum(picks("weighted", [Candidate("a", weight=0), Candidate("b", weight=0)], n=100).values()) == 100


def test_least_loaded_picks_fewest_in_flight_and_rotates_ties():
    busy, idle1, idle2 = Candidate("busy", in_flight=5), Candidate("i1", in_flight=1), Candidate("i2", in_flight=1)
    counts = picks("least-loaded", [busy, idle1, idle2], n=100)
    assert counts["busy"] == 0 and counts["i1"] == counts["i2"] == 50


def test_latency_based_prefers_the_faster_instance():
    fast, slow = Candidate("fast", latency_ms=50), Candidate("slow", latency_ms=400)
    counts = picks("latency-based", [fast, slow, Candidate("slow2", latency_ms=500)])
    assert counts["fast"] > counts["slow"] + counts["slow2"], counts


def test_latency_based_tries_unmeasured_instances_first():
    rng = random.Random(0)
    assert choose("latency-based", [Candidate("m", latency_ms=10), Candidate("new")], 0, rng).id == "new"


def test_latency_based_accounts_for_queued_requests():
    fast_but_busy, slower_idle = Candidate("f", latency_ms=50, in_flight=9), Candidate("s", latency_ms=100)
    assert picks("latency-based", [fast_but_busy, slower_idle], n=200)["s"] == 200


def test_no_candidates_gives_none():
    assert choose("round-robin", [], 0, random.Random(0)) is None


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("simple-shuffle", "weighted"),
        ("least-busy", "least-loaded"),
        ("latency-based-routing", "latency-based"),
        ("Round-Robin", "round-robin"),
        ("", "round-robin"),
    ],
)
def test_litellm_names_are_accepted_as_aliases(name, canonical):
    assert normalize_strategy(name) == canonical


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown routing strategy 'usage-based'"):
        normalize_strategy("usage-based")
