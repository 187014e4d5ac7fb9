"""Unit tests for routing.scoring: hard filters, the score's parts (quality included), tie-breaking and the one-line
reason."""

import dataclasses
from decimal import Decimal

import pytest

from routing.scoring import (
    PRIOR_QUALITY,
    PRIOR_RATINGS,
    Candidate,
    Need,
    Weights,
    posterior_quality,
    rank,
    summary,
)

CHEAP = {"input_cost_per_token": Decimal("1e-7"), "output_cost_per_token": Decimal("4e-7")}
DEAR = {"input_cost_per_token": Decimal("5e-6"), "output_cost_per_token": Decimal("1.5e-5")}


def names(ranked):
    """Return the eligible models' names, best first."""
    return [r.name for r in ranked if r.eligible]


def test_a_model_tagged_for_the_type_wins_over_an_untagged_cheaper_faster_one():
    coder = Candidate("coder", tags=("code_generation",), latency_ms=900, **DEAR)
    chat = Candidate("chat", tags=(), latency_ms=100, **CHEAP)
    assert names(rank([chat, coder], Need(context_type="code_generation"))) == ["coder", "chat"]


def test_an_untagged_model_serves_when_no_tagged_one_is_eligible():
    coder = Candidate("coder", tags=("code_generation",), supports_vision=False, **CHEAP)
    chat = Candidate("chat", tags=(), supports_vision=True, **DEAR)
    ranked = rank([coder, chat], Need(context_type="code_generation", vision=True))
    assert names(ranked) == ["chat"]
    assert ranked[-1].reasons == ("does not support image input",)


def test_with_equal_capability_and_health_the_cheaper_model_wins():
    a = Candidate("a", tags=("math",), **DEAR)
    b = Candidate("b", tags=("math",), **CHEAP)
    ranked = rank([a, b], Need(context_type="math", prompt_tokens=1000, max_output_tokens=500))
    assert names(ranked) == ["b", "a"]
    assert ranked[0].breakdown["cost"] == 1.0 and ranked[1].breakdown["cost"] < 0.1
    assert ranked[0].estimated_cost_usd == Decimal("1e-7") * 1000 + Decimal("4e-7") * 500


def test_a_slower_model_loses_to_a_healthy_peer_and_an_unmeasured_one_is_not_punished():
    fast = Candidate("fast", tags=("analysis",), latency_ms=200, **DEAR)
    slow = Candidate("slow", tags=("analysis",), latency_ms=2000, **CHEAP)
    assert names(rank([fast, slow], Need(context_type="analysis"))) == ["fast", "slow"]
    stale = Candidate("slow", tags=("analysis",), latency_ms=None, **CHEAP)  # no recent figures: tried again
    assert names(rank([fast, stale], Need(context_type="analysis"))) == ["slow", "fast"]


def test_a_failing_model_is_filtered_and_its_errors_lower_the_score_before_that():
    good = Candidate("good", tags=("math",), success_rate=1.0, **DEAR)
    flaky = Candidate("flaky", tags=("math",), success_rate=0.6, **CHEAP)
    broken = Candidate("broken", tags=("math",), success_rate=0.1, **CHEAP)
    ranked = rank([good, flaky, broken], Need(context_type="math"))
    assert names(ranked) == ["good", "flaky"]
    assert ranked[-1].name == "broken" and "failing" in ranked[-1].reasons[0]


@pytest.mark.parametrize(
    "need, fields, reason, unmet",
    [
        (Need(tools=True), {"supports_function_calling": False}, "does not support function calling", "tools"),
        (Need(vision=True), {"supports_vision": False}, "does not support image input", "vision"),
        (Need(json=True), {"supports_response_schema": False}, "does not support JSON mode / response schema",
         "json"),
        (Need(prompt_tokens=9000, max_output_tokens=1000), {"context_window": 8192},
         "needs a 10,000-token window, has 8,192", "window"),
    ],
)
def test_each_hard_filter_names_its_reason(need, fields, reason, unmet):
    (ranked,) = rank([Candidate("m", **fields)], need)
    assert not ranked.eligible and ranked.reasons == (reason,) and not ranked.capacity_only
    assert ranked.unmet == (unmet,)


def test_unknown_support_is_eligible_but_said_so():
    (ranked,) = rank([Candidate("m")], Need(tools=True))
    assert ranked.eligible and "function calling support unknown" in ranked.reasons


def test_a_model_without_usable_instances_is_filtered_for_capacity_only():
    (ranked,) = rank([Candidate("m", usable_instances=0)], Need())
    assert not ranked.eligible and ranked.capacity_only
    (ranked,) = rank([Candidate("m", usable_instances=0, supports_vision=False)], Need(vision=True))
    assert not ranked.capacity_only, "a requirement is missing too: not a capacity problem alone"


def test_equal_inputs_give_equal_choices_and_ties_break_by_name():
    models = [Candidate(name, tags=("general_chat",), **CHEAP) for name in ("zeta", "alpha", "mid")]
    first = rank(models, Need())
    assert names(first) == ["alpha", "mid", "zeta"]
    assert names(rank(list(reversed(models)), Need())) == names(first)


def test_the_named_model_is_preferred_among_equals_but_never_past_a_filter():
    a = Candidate("a", tags=("math",), **CHEAP)
    b = Candidate("b", tags=("math",), preferred=True, **CHEAP)
    assert names(rank([a, b], Need(context_type="math"))) == ["b", "a"]
    small = Candidate("b", tags=("math",), preferred=True, context_window=100, **CHEAP)
    assert names(rank([a, small], Need(context_type="math", prompt_tokens=500))) == ["a"]


def test_weights_change_the_order():
    coder = Candidate("coder", tags=("code_generation",), **DEAR)
    chat = Candidate("chat", **CHEAP)
    cost_first = Weights(capability=0.1, performance=0.1, cost=0.8)
    assert names(rank([coder, chat], Need(context_type="code_generation"), cost_first)) == ["chat", "coder"]


def test_the_summary_says_why_in_one_line():
    a = Candidate("a", tags=("code_generation",), **CHEAP)
    b = Candidate("b", tags=("code_generation",), **DEAR)
    c = Candidate("c", **CHEAP)
    need = Need(context_type="code_generation")
    assert summary(rank([a, b, c], need), need) == "code_generation: best capability fit, cheapest, healthiest"
    assert summary(rank([], need), need) == "code_generation: no eligible model"


# --- quality: feedback shrunk towards a neutral prior ---------------------------------------------------------------


def test_an_unrated_model_scores_the_neutral_prior():
    (ranked,) = rank([Candidate("m", tags=("math",))], Need(context_type="math"))
    assert ranked.breakdown["quality"] == PRIOR_QUALITY == 0.5
    assert not any(note.startswith("feedback") for note in ranked.reasons)


def test_few_ratings_barely_move_the_quality_and_many_approach_their_mean():
    assert posterior_quality(0, 0.0) == 0.5
    assert posterior_quality(2, 2.0) == pytest.approx((2 + 0.5 * PRIOR_RATINGS) / (2 + PRIOR_RATINGS))  # 0.545
    assert posterior_quality(2, 2.0) < 0.55 and posterior_quality(2, 0.0) > 0.45
    assert posterior_quality(PRIOR_RATINGS, PRIOR_RATINGS * 1.0) == 0.75, "as many ratings as the prior: halfway"
    assert posterior_quality(10_000, 10_000 * 0.9) == pytest.approx(0.9, abs=0.001)


def test_the_quality_term_moves_the_score_by_its_weight_times_the_difference():
    liked = Candidate("liked", tags=("math",), ratings=60, rating_sum=60.0, **CHEAP)  # quality 0.875
    plain = Candidate("plain", tags=("math",), **CHEAP)  # 0.5
    for weight in (0.0, 0.05, 0.5):
        ranked = {r.name: r for r in rank([liked, plain], Need(context_type="math"), Weights(quality=weight))}
        assert ranked["liked"].breakdown["quality"] == 0.875 and ranked["plain"].breakdown["quality"] == 0.5
        assert ranked["liked"].score - ranked["plain"].score == pytest.approx(weight * 0.375, abs=1e-6)
    assert "feedback 1.00 from 60 ratings" in rank([liked], Need(context_type="math"))[0].reasons


def test_a_small_quality_weight_only_separates_near_equals():
    # "liked" costs a little more than "cheap"; loved by its users, it wins by quality only when the weight allows.
    cheap = Candidate("cheap", tags=("math",), **CHEAP)
    liked = Candidate("liked", tags=("math",), ratings=200, rating_sum=200.0, input_cost_per_token=Decimal("1.1e-7"),
                      output_cost_per_token=Decimal("4.4e-7"))  # fmt: skip
    need = Need(context_type="math", prompt_tokens=1000, max_output_tokens=500)
    assert names(rank([cheap, liked], need)) == ["liked", "cheap"], "cost 10 % apart: quality at 0.05 decides"
    dear = dataclasses.replace(liked, **DEAR)
    assert names(rank([cheap, dear], need)) == ["cheap", "liked"], "50x the price: quality at 0.05 cannot make up"
    assert names(rank([cheap, dear], need, Weights(quality=0.5))) == ["liked", "cheap"]
    untagged = Candidate("untagged", ratings=10_000, rating_sum=10_000.0, **CHEAP)
    assert names(rank([cheap, untagged], need))[0] == "cheap", "never past capability fit at the default weights"


def test_the_summary_says_best_rated_when_the_winner_is_rated_best():
    a = Candidate("a", tags=("math",), ratings=40, rating_sum=36.0, **CHEAP)
    b = Candidate("b", tags=("math",), **CHEAP)
    need = Need(context_type="math")
    assert summary(rank([a, b], need), need) == "math: best capability fit, cheapest, healthiest, best rated"
    assert "best rated" not in summary(rank([dataclasses.replace(a, ratings=0, rating_sum=0.0), b], need), need)
