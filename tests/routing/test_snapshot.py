"""Tests for routing/snapshot.py: the hot path's models carry their resolved metadata."""

from decimal import Decimal

import pytest

from routing import snapshot
from routing.models import Model, Provider, ProviderInstance

pytestmark = pytest.mark.django_db


def add_instance(model, litellm_model, *, enabled=True):
    """Add an instance of the model running litellm_model."""
    provider, _ = Provider.objects.get_or_create(name="openai", defaults={"kind": "openai"})
    return ProviderInstance.objects.create(model=model, provider=provider, litellm_model=litellm_model, enabled=enabled)


def test_models_carry_metadata_from_the_map_of_their_enabled_instances():
    model = Model.objects.create(name="vault-mixed", capabilities=["analysis"])
    add_instance(model, "openai/gpt-4o-mini")
    add_instance(model, "openai/gpt-4o")
    add_instance(model, "openai/gpt-4", enabled=False)  # smaller, dearer and blind, but it serves nothing

    config = snapshot.build().models["vault-mixed"]

    assert config.context_window == 128_000
    assert (config.supports_function_calling, config.supports_vision, config.supports_response_schema) == (
        True,
        True,
        True,
    )
    # The dearer of the two enabled upstreams (gpt-4o), per key.
    assert (config.input_cost_per_token, config.output_cost_per_token) == (Decimal("0.0000025"), Decimal("0.00001"))
    assert config.capabilities == ("analysis",)
    assert config.sources["context_window"] == "litellm"
    assert config.sources["capabilities"] == "override"


def test_overrides_reach_the_model_and_its_instances_prices():
    model = Model.objects.create(
        name="vault-own",
        context_window=1_000_000,
        supports_vision=True,
        input_cost_per_mtok=Decimal("0.5"),
    )
    add_instance(model, "openai/gpt-4")

    snap = snapshot.build()

    config = snap.models["vault-own"]
    assert (config.context_window, config.supports_vision) == (1_000_000, True)
    assert config.input_cost_per_token == Decimal("5E-7")
    assert config.output_cost_per_token == Decimal("0.00006")  # no override: gpt-4's
    assert config.sources == {
        "context_window": "override",
        "supports_function_calling": "litellm",
        "supports_vision": "override",
        "supports_response_schema": "litellm",
        "input_cost_per_token": "override",
        "output_cost_per_token": "litellm",
        "capabilities": None,
    }
    (instance,) = config.instances
    assert (instance.input_cost_per_token, instance.output_cost_per_token) == (Decimal("5E-7"), Decimal("0.00006"))


def test_each_instance_is_priced_at_its_own_upstream_without_an_override():
    model = Model.objects.create(name="vault-two")
    cheap = add_instance(model, "openai/gpt-4o-mini")
    dear = add_instance(model, "openai/gpt-4")

    config = snapshot.build().models["vault-two"]

    prices = {inst.id: inst.input_cost_per_token for inst in config.instances}
    assert prices == {cheap.id: Decimal("1.5E-7"), dear.id: Decimal("0.00003")}
    assert config.input_cost_per_token == Decimal("0.00003")  # the model's figure is the conservative one


def test_a_model_the_map_does_not_know_has_unknown_metadata():
    model = Model.objects.create(name="vault-llama")
    add_instance(model, "hosted_vllm/llama-3-70b")

    config = snapshot.build().models["vault-llama"]

    assert config.context_window is None
    assert config.supports_vision is None
    assert config.input_cost_per_token is None
    assert set(config.sources.values()) == {None}
