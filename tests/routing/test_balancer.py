"""Unit tests for the pure instance-selection strategies."""

import random
from collections import Counter

import pytest

from routing.balancer import STRATEGIES, Candidate, choose, normalize_strategy, usage

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
        ("usage-based-routing", "usage-based"),
        ("usage-based-routing-v2", "usage-based"),
        ("cost-based-routing", "cost-based"),
        ("provider-budget-routing", "weighted"),
        ("lar1", "weighted"),
        ("Round-Robin", "round-robin"),
        ("", "round-robin"),
    ],
)
def test_litellm_names_are_accepted_as_aliases(name, canonical):
    assert normalize_strategy(name) == canonical


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown routing strategy 'fastest'"):
        normalize_strategy("fastest")


def test_every_strategy_litellm_documents_is_mapped():
    # litellm.types.router.RoutingStrategy and the Router's routing_strategy Literal, as of litellm 1.110.
    documented = ["simple-shuffle", "least-busy", "usage-based-routing", "usage-based-routing-v2",
                  "latency-based-routing", "cost-based-routing", "provider-budget-routing", "lar1"]  # fmt: skip
    for name in documented:
        assert normalize_strategy(name) in STRATEGIES


def test_usage_based_picks_the_most_headroom_this_minute():
    # a: 90 of 100 rpm used; b: 10 of 20 used (half free); c: 100 of 1000 tpm used.
    cands = [
        Candidate("a", **usage(100, None, 90, 0)),
        Candidate("b", **usage(20, None, 10, 500)),
        Candidate("c", **usage(None, 1000, 3, 100)),
    ]
    assert [c["headroom"] for c in (usage(100, None, 90, 0), usage(20, None, 10, 500))] == [
        pytest.approx(0.1),
        0.5,
    ]
    assert picks("usage-based", cands, n=10) == {"c": 10}


def test_usage_based_takes_the_tighter_of_rpm_and_tpm():
    assert usage(100, 1000, 10, 900)["headroom"] == pytest.approx(0.1)
    assert usage(100, 1000, 100, 2000)["headroom"] == 0.0
    assert usage(None, None, 5, 50) == {"headroom": None, "tokens_used": 50}


def test_usage_based_prefers_fewer_tokens_among_unlimited_and_rotates_ties():
    cands = [Candidate("a", tokens_used=500), Candidate("b", tokens_used=100), Candidate("c", tokens_used=100)]
    assert picks("usage-based", cands, n=10) == {"b": 5, "c": 5}


def test_cost_based_picks_the_cheapest_known_price():
    cands = [Candidate("a", cost=3e-6), Candidate("b", cost=1e-6), Candidate("c"), Candidate("d", cost=1e-6)]
    assert picks("cost-based", cands, n=10) == {"b": 5, "d": 5}
    assert picks("cost-based", [Candidate("x"), Candidate("y")], n=4) == {"x": 2, "y": 2}
