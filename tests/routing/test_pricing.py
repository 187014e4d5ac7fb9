"""Tests for prices read from litellm's bundled price map."""

from decimal import Decimal

from routing import pricing


def test_prices_come_from_litellms_map_with_or_without_provider_prefix():
    bare, prefixed = pricing.lookup("gpt-4o-mini"), pricing.lookup("openai/gpt-4o-mini")
    assert bare == prefixed
    assert bare.input_cost_per_token == Decimal("1.5e-07")
    assert bare.output_cost_per_token == Decimal("6e-07")
    assert bare.max_input_tokens == 128000


def test_unknown_models_have_no_price():
    assert pricing.lookup("openai/not-a-real-model") == pricing.Prices()
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
