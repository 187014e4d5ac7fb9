"""Tests for routing/metadata.py: a model's effective metadata from its overrides and litellm's map."""

import types
from decimal import Decimal

import pytest

from routing import metadata
from routing.metadata import LITELLM, OVERRIDE, Overrides
from routing.pricing import Prices

SMALL = Prices(
    input_cost_per_token=Decimal("1E-7"),
    output_cost_per_token=Decimal("4E-7"),
    max_input_tokens=8_000,
    supports_function_calling=True,
    supports_vision=False,
    supports_response_schema=True,
)
LARGE = Prices(
    input_cost_per_token=Decimal("3E-6"),
    output_cost_per_token=Decimal("2E-7"),
    max_input_tokens=200_000,
    supports_function_calling=True,
    supports_vision=True,
    supports_response_schema=False,
)
UNKNOWN = Prices()


def test_without_overrides_every_value_comes_from_the_map():
    meta = metadata.resolve(Overrides(), [LARGE])

    assert meta.context_window == 200_000
    assert (meta.supports_function_calling, meta.supports_vision, meta.supports_response_schema) == (True, True, False)
    assert (meta.input_cost_per_token, meta.output_cost_per_token) == (Decimal("3E-6"), Decimal("2E-7"))
    assert all(meta.sources[key] == LITELLM for key in metadata.FIELDS)
    assert meta.missing() == ()


def test_instances_that_disagree_give_the_most_conservative_value_of_each_key():
    meta = metadata.resolve(Overrides(), [LARGE, SMALL])

    assert meta.context_window == 8_000  # the smallest window
    assert meta.supports_vision is False  # False over True
    assert meta.supports_response_schema is False
    assert meta.supports_function_calling is True  # both say yes
    assert meta.input_cost_per_token == Decimal("3E-6")  # the highest price, per key
    assert meta.output_cost_per_token == Decimal("4E-7")


def test_an_instance_the_map_does_not_know_neither_narrows_nor_widens():
    assert metadata.resolve(Overrides(), [UNKNOWN, SMALL, UNKNOWN]) == metadata.resolve(Overrides(), [SMALL])


def test_overrides_win_and_say_so_and_prices_are_per_token():
    overrides = Overrides(
        context_window=32_000,
        supports_vision=True,
        supports_response_schema=False,
        input_cost_per_mtok=Decimal("0.150000"),
        output_cost_per_mtok=Decimal("0"),
        capabilities=("code_generation", "math", "code_generation"),
    )

    meta = metadata.resolve(overrides, [SMALL])

    assert meta.context_window == 32_000
    assert meta.supports_vision is True
    assert meta.supports_response_schema is False  # an explicit False is an override, not "unknown"
    assert meta.input_cost_per_token == Decimal("1.5E-7")
    assert meta.output_cost_per_token == Decimal(0)  # free is a price, not a missing one
    assert meta.supports_function_calling is True
    assert meta.capabilities == ("code_generation", "math")
    assert meta.sources == {
        "context_window": OVERRIDE,
        "supports_function_calling": LITELLM,
        "supports_vision": OVERRIDE,
        "supports_response_schema": OVERRIDE,
        "input_cost_per_token": OVERRIDE,
        "output_cost_per_token": OVERRIDE,
        "capabilities": OVERRIDE,
    }


def test_a_model_nothing_is_known_about_is_unknown_and_flagged():
    meta = metadata.resolve(Overrides(), [UNKNOWN])

    assert [getattr(meta, key) for key in metadata.FIELDS] == [None] * len(metadata.FIELDS)
    assert set(meta.sources.values()) == {None}
    assert meta.missing() == ("price", "window")
    assert metadata.resolve(Overrides(), []) == meta


def test_one_missing_price_is_a_missing_price():
    meta = metadata.resolve(Overrides(context_window=1), [Prices(input_cost_per_token=Decimal(1))])

    assert meta.missing() == ("price",)


@pytest.mark.parametrize(
    ("key", "values", "expected"),
    [
        ("max_input_tokens", [None, 9, 3], 3),
        ("context_window", [7], 7),
        ("supports_vision", [True, None, True], True),
        ("supports_vision", [True, False], False),
        ("input_cost_per_token", [Decimal(1), Decimal(0), None], Decimal(1)),
        ("output_cost_per_token", [None, None], None),
    ],
)
def test_most_conservative(key, values, expected):
    assert metadata.most_conservative(key, values) == expected


def test_most_conservative_refuses_a_key_it_has_no_rule_for():
    with pytest.raises(KeyError):
        metadata.most_conservative("weight", [1, 2])


def test_for_model_reads_a_model_row_and_the_bundled_map():
    row = types.SimpleNamespace(
        context_window=None,
        supports_function_calling=None,
        supports_vision=None,
        supports_response_schema=None,
        input_cost_per_mtok=None,
        output_cost_per_mtok=Decimal("1"),
        capabilities=["general_chat"],
    )

    meta = metadata.for_model(row, ["openai/gpt-4o-mini", "openai/gpt-4"])

    assert meta.context_window == 8192  # gpt-4's
    assert meta.supports_vision is False  # gpt-4 has none
    assert meta.input_cost_per_token == Decimal("0.00003")  # gpt-4's, the higher
    assert meta.output_cost_per_token == Decimal("0.000001")
    assert meta.sources["output_cost_per_token"] == OVERRIDE
    assert meta.capabilities == ("general_chat",)
