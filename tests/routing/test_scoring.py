"""Unit tests for routing.scoring: hard filters, the score's parts, tie-breaking and the one-line reason."""

from decimal import Decimal

import pytest

from routing.scoring import Candidate, Need, Weights, rank, summary

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
