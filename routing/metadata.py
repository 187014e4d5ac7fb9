"""What a public model can do and what it costs: context window, feature support, prices and capability tags.

Each value is the model's own override when it sets one, else what litellm's bundled map says about the upstream
models of its enabled instances, else unknown (None). When those instances disagree, the most conservative value
wins — the smallest window, False over True, the highest price — so the model's figures never promise more than its
weakest instance gives. An instance the map does not know (a self-hosted model, an Azure deployment name) says
nothing: it neither narrows nor widens what the others say. Capability tags come from the model only.

`resolve` is pure (plain values in, plain values out); the admin pages and the routing snapshot both go through
`for_model`, so what admin shows is what selection uses.
"""

import dataclasses
from decimal import Decimal

from routing import pricing

OVERRIDE = "override"
LITELLM = "litellm"

FEATURES = pricing.FEATURES
PRICES = ("input_cost_per_token", "output_cost_per_token")
WINDOWS = ("context_window", "max_input_tokens")  # ChatVault's name and litellm's for the same figure
FIELDS = ("context_window", *FEATURES, *PRICES)

PER_MILLION = Decimal(1_000_000)


@dataclasses.dataclass(frozen=True, slots=True)
class Overrides:
    """A model's own values, as `routing.models.Model` stores them (None = not set; prices per million tokens)."""

    context_window: int | None = None
    supports_function_calling: bool | None = None
    supports_vision: bool | None = None
    supports_response_schema: bool | None = None
    input_cost_per_mtok: Decimal | None = None
    output_cost_per_mtok: Decimal | None = None
    capabilities: tuple[str, ...] = ()

    @classmethod
    def of(cls, model):
        """Return the overrides stored on a Model row."""
        return cls(
            context_window=model.context_window,
            supports_function_calling=model.supports_function_calling,
            supports_vision=model.supports_vision,
            supports_response_schema=model.supports_response_schema,
            input_cost_per_mtok=model.input_cost_per_mtok,
            output_cost_per_mtok=model.output_cost_per_mtok,
            capabilities=tuple(model.capabilities or ()),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Metadata:
    """A model's effective values (prices per token) and, in `sources`, where each came from (None = unknown)."""

    context_window: int | None = None
    supports_function_calling: bool | None = None
    supports_vision: bool | None = None
    supports_response_schema: bool | None = None
    input_cost_per_token: Decimal | None = None
    output_cost_per_token: Decimal | None = None
    capabilities: tuple[str, ...] = ()
    sources: dict = dataclasses.field(default_factory=dict)

    def missing(self):
        """Return what selection cannot know about this model: "price" and/or "window"."""
        gaps = []
        if self.input_cost_per_token is None or self.output_cost_per_token is None:
            gaps.append("price")
        if self.context_window is None:
            gaps.append("window")
        return tuple(gaps)


def most_conservative(key, values):
    """Return the most conservative of the known values of one key, or None when none is known."""
    known = [value for value in values if value is not None]
    if not known:
        return None
    if key in FEATURES:
        return all(known)
    if key in PRICES:
        return max(known)
    if key in WINDOWS:
        return min(known)
    raise KeyError(key)


def per_token(per_mtok):
    """Return a price per million tokens as a price per token."""
    return None if per_mtok is None else Decimal(per_mtok) / PER_MILLION


def resolve(overrides, upstream):
    """Return the effective metadata from a model's overrides and its instances' map entries (`pricing.Prices`)."""
    upstream = list(upstream)
    own = {
        "context_window": overrides.context_window,
        "supports_function_calling": overrides.supports_function_calling,
        "supports_vision": overrides.supports_vision,
        "supports_response_schema": overrides.supports_response_schema,
        "input_cost_per_token": per_token(overrides.input_cost_per_mtok),
        "output_cost_per_token": per_token(overrides.output_cost_per_mtok),
    }
    values, sources = {}, {}
    for key in FIELDS:
        if own[key] is not None:
            values[key], sources[key] = own[key], OVERRIDE
            continue
        mapped = "max_input_tokens" if key == "context_window" else key
        value = most_conservative(key, [getattr(prices, mapped) for prices in upstream])
        values[key], sources[key] = value, (LITELLM if value is not None else None)
    capabilities = tuple(dict.fromkeys(overrides.capabilities))
    sources["capabilities"] = OVERRIDE if capabilities else None
    return Metadata(**values, capabilities=capabilities, sources=sources)


def for_model(model, litellm_models):
    """Return the effective metadata of a Model row served by instances with these litellm model strings."""
    return resolve(Overrides.of(model), [pricing.lookup(name) for name in litellm_models])
