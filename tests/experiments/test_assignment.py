"""Tests for experiments/assignment.py: deterministic, sticky, accurate splits; stable enrolment; overrides."""

import collections

import pytest
from scipy.stats import chisquare

from experiments.assignment import (
    LiveVariant,
    apply_overrides,
    assign,
    claimant,
    hashed_unit,
    live_experiment,
    unit_of,
    validate_overrides,
)

UNITS = [f"user:u-{i}" for i in range(10_000)]


def experiment(share=100.0, weights=(1, 1), salt="", id="exp-1", **fields):
    """Return a LiveExperiment over variants a, b, c... with these weights."""
    variants = [
        LiveVariant(name=chr(97 + i), model=f"m{i}", weight=w, is_control=i == 0) for i, w in enumerate(weights)
    ]
    return live_experiment(id=id, salt=salt, traffic_percentage=share, variants=variants, **fields)


def test_assignment_is_deterministic_across_experiment_objects():
    first = [assign(experiment(), unit) for unit in UNITS[:500]]
    again = [assign(experiment(), unit) for unit in UNITS[:500]]

    assert [(a.variant.name, a.unit) for a in first] == [(a.variant.name, a.unit) for a in again]


def test_a_unit_keeps_its_variant_on_every_request():
    live = experiment(weights=(1, 1, 1))
    for unit in UNITS[:200]:
        assert len({assign(live, unit).variant.name for _ in range(5)}) == 1


def test_the_salt_reshuffles_units():
    plain, salted = experiment(), experiment(salt="another")
    same = sum(assign(plain, u).variant.name == assign(salted, u).variant.name for u in UNITS[:2000])

    assert 800 < same < 1200  # independent halves agree about half the time


def test_the_split_follows_the_weights():
    live = experiment(weights=(1, 2, 1))
    counts = collections.Counter(assign(live, unit).variant.name for unit in UNITS)

    observed = [counts["a"], counts["b"], counts["c"]]
    expected = [2500, 5000, 2500]
    assert chisquare(observed, expected).pvalue > 0.001
    assert sum(observed) == 10_000


def test_a_skewed_split_would_be_caught_by_the_same_check():
    # The check above can fail: the same units measured against the wrong weights are rejected.
    live = experiment(weights=(1, 2, 1))
    counts = collections.Counter(assign(live, unit).variant.name for unit in UNITS)

    assert chisquare([counts["a"], counts["b"], counts["c"]], [3333.4, 3333.3, 3333.3]).pvalue < 0.001


def test_zero_weight_variants_get_no_one_and_all_zero_weights_split_equally():
    counts = collections.Counter(assign(experiment(weights=(1, 0, 1)), u).variant.name for u in UNITS[:2000])
    assert counts["b"] == 0 and counts["a"] + counts["c"] == 2000

    counts = collections.Counter(assign(experiment(weights=(0, 0)), u).variant.name for u in UNITS[:2000])
    assert 900 < counts["a"] < 1100 and counts["a"] + counts["b"] == 2000


def test_the_enrolled_share_matches_the_traffic_percentage():
    enrolled = sum(assign(experiment(share=10.0), unit) is not None for unit in UNITS)

    # Binomial(10,000, 0.1): sd 30, so 4.5 sd either side.
    assert 865 <= enrolled <= 1135


def test_growing_the_share_keeps_every_enrolled_unit_and_its_variant():
    at_10 = {u: assign(experiment(share=10.0, weights=(1, 2, 1)), u) for u in UNITS}
    at_30 = {u: assign(experiment(share=30.0, weights=(1, 2, 1)), u) for u in UNITS}

    enrolled = {u: a.variant.name for u, a in at_10.items() if a is not None}
    assert enrolled
    assert all(at_30[u] is not None and at_30[u].variant.name == name for u, name in enrolled.items())
    assert sum(a is not None for a in at_30.values()) > 2.5 * len(enrolled)


def test_the_variant_does_not_depend_on_the_share():
    low, full = experiment(share=5.0), experiment(share=100.0)
    for unit in UNITS:
        assigned = assign(low, unit)
        if assigned is not None:
            assert assigned.variant == assign(full, unit).variant


def test_the_units_enrolled_at_a_small_share_still_split_by_the_weights():
    # Enrolment and variant come from independent hashes; with one hash, the first 10 % would all land in one variant.
    live = experiment(share=10.0, weights=(1, 2, 1))
    counts = collections.Counter(a.variant.name for a in (assign(live, u) for u in UNITS) if a is not None)

    total = sum(counts.values())
    assert chisquare([counts["a"], counts["b"], counts["c"]], [total / 4, total / 2, total / 4]).pvalue > 0.001


def test_no_share_enrols_no_one():
    assert all(assign(experiment(share=0.0), unit) is None for unit in UNITS[:1000])


def test_the_hashed_unit_is_stable_and_does_not_contain_the_user_id():
    unit = unit_of(user="alice@example.com", session="s-1", key_pk=7)
    stored = assign(experiment(), unit).unit

    assert stored == hashed_unit("exp-1", unit) == assign(experiment(), unit).unit
    assert "alice" not in stored and "example" not in stored
    assert len(stored) == 24 and int(stored, 16) >= 0
    assert hashed_unit("other-salt", unit) != stored


@pytest.mark.parametrize(
    "user, session, key_pk, unit",
    [
        ("u-1", "s-1", 7, "user:u-1"),
        ("", "s-1", 7, "session:s-1"),
        (None, None, 7, "key:7"),
        (42, "", 7, "key:7"),  # a non-string user is not a unit
    ],
)
def test_the_unit_is_the_user_else_the_session_else_the_key(user, session, key_pk, unit):
    assert unit_of(user=user, session=session, key_pk=key_pk) == unit


def test_claimant_picks_the_live_experiment_whose_scope_holds_the_request():
    targeted = experiment(id="exp-a", context_types=("math",), key_pks=(3,), starts_at=100.0, ends_at=200.0)

    assert claimant([targeted], "m0", "math", 3, 150.0) is targeted
    assert claimant([targeted], "m9", "math", 3, 150.0) is None
    assert claimant([targeted], "m0", "code_generation", 3, 150.0) is None
    assert claimant([targeted], "m0", "math", 4, 150.0) is None
    assert claimant([targeted], "m0", "math", 3, 200.0) is None
    assert claimant([targeted], "m0", "math", 3, 99.0) is None


def variant_with(**overrides):
    """Return a variant with these overrides, as the snapshot builds them."""
    return LiveVariant(name="v", model="m", weight=1, is_control=False, overrides=tuple(sorted(overrides.items())))


def test_overrides_set_request_parameters_on_a_copy():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0}

    changed = apply_overrides(body, variant_with(temperature=0.2, max_tokens=50))

    assert changed["temperature"] == 0.2 and changed["max_tokens"] == 50
    assert body["temperature"] == 1.0 and "max_tokens" not in body
    assert apply_overrides(body, variant_with()) is body


def test_a_system_prompt_prefix_goes_before_the_existing_system_message():
    body = {"messages": [{"role": "system", "content": "You help."}, {"role": "user", "content": "hi"}]}

    changed = apply_overrides(body, variant_with(system_prompt_prefix="Be brief."))

    assert changed["messages"] == [
        {"role": "system", "content": "Be brief.\n\nYou help."},
        {"role": "user", "content": "hi"},
    ]
    assert body["messages"][0]["content"] == "You help."


def test_a_system_prompt_prefix_becomes_a_new_first_message_when_there_is_none():
    body = {"messages": [{"role": "user", "content": "hi"}]}

    changed = apply_overrides(body, variant_with(system_prompt_prefix="Be brief."))

    assert changed["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def test_a_system_prompt_prefix_goes_first_in_a_system_message_made_of_parts():
    body = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "You help."}]}]}

    changed = apply_overrides(body, variant_with(system_prompt_prefix="Be brief."))

    prefix, original = {"type": "text", "text": "Be brief."}, {"type": "text", "text": "You help."}
    assert changed["messages"][0]["content"] == [prefix, original]


@pytest.mark.parametrize(
    "overrides, problems",
    [
        ({"temperature": 0.2, "system_prompt_prefix": "x", "max_tokens": 10}, []),
        ({"temperature": "hot"}, ["override 'temperature' must be a number"]),
        ({"max_tokens": 1.5}, ["override 'max_tokens' must be a number"]),
        ({"top_p": True}, ["override 'top_p' must be a number"]),
        ({"system_prompt_prefix": 3}, ["override 'system_prompt_prefix' must be a string"]),
        ({"seed": 1}, ["unknown override 'seed' (allowed: temperature, top_p, max_tokens, presence_penalty, "
                       "frequency_penalty, system_prompt_prefix)"]),
        ([1], ["overrides must be an object"]),
        ({"temperature": float("nan"), "top_p": float("inf")},
         ["override 'temperature' must be a finite number", "override 'top_p' must be a finite number"]),
        ({"system_prompt_prefix": "a\x00b"},
         ["override 'system_prompt_prefix' contains a character that cannot be stored"]),
    ],
)  # fmt: skip
def test_validate_overrides_names_each_problem(overrides, problems):
    assert validate_overrides(overrides) == problems
