"""Tests for prices read from litellm's bundled price map."""

from decimal import Decimal

from routing import pricing


def test_prices_come_from_litellms_map_with_or_without_provider_prefix():
    bare, prefixed = pricing.lookup("gpt-4o-mini"), pricing.lookup("openai/gpt-4o-mini")
    assert bare == prefixed
    assert bare.input_cost_per_token == Decimal("1.5e-07")
    assert bare.output_cost_per_token == Decimal("6e-07")
    assert bare.max_input_tokens == 128000


def test_feature_support_comes_from_the_map_and_what_it_leaves_out_is_unsupported():
    mini = pricing.lookup("openai/gpt-4o-mini")
    assert (mini.supports_function_calling, mini.supports_vision, mini.supports_response_schema) == (True, True, True)
    # gpt-4's entry names function calling only; litellm reads a missing feature as unsupported.
    gpt4 = pricing.lookup("openai/gpt-4")
    assert (gpt4.supports_function_calling, gpt4.supports_vision, gpt4.supports_response_schema) == (True, False, False)
    assert gpt4.max_input_tokens == 8192


def test_malformed_map_values_are_unknown_not_trusted(monkeypatch):
    table = {
        "weird": {
            "max_input_tokens": "max input tokens, if the provider specifies it",
            "input_cost_per_token": -1,
            "output_cost_per_token": True,
            "supports_vision": "true",
        }
    }
    monkeypatch.setattr(pricing, "price_map", lambda: table)

    weird = pricing.lookup("weird")

    assert (weird.max_input_tokens, weird.input_cost_per_token, weird.output_cost_per_token) == (None, None, None)
    assert weird.supports_vision is False


def test_unknown_models_have_no_price_window_or_features():
    unknown = pricing.lookup("openai/not-a-real-model")
    assert unknown == pricing.Prices()
    assert (unknown.max_input_tokens, unknown.supports_vision, unknown.supports_function_calling) == (None, None, None)
    assert pricing.cost(10, 10, None, Decimal(1)) is None


def test_cost_adds_prompt_and_completion():
    assert pricing.cost(3, 20, Decimal("0.5"), Decimal("2")) == Decimal("41.5")
    assert pricing.cost(None, None, Decimal(1), Decimal(1)) is None


def test_reading_prices_does_not_import_litellm():
    import subprocess
    import sys

    from tests.fakes import REPO_ROOT

    code = "import sys; from routing import pricing; pricing.price_map(); print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout
    assert out.strip() == "False"
