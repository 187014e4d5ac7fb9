"""Token prices, context windows and feature support from litellm's bundled model map, read without importing litellm.

litellm ships its price map as a JSON file inside the package. Reading the file directly keeps a gateway whose
providers are all OpenAI-compatible from paying litellm's multi-second import, and never fetches the map from the
network (litellm's import would try to).
"""

import dataclasses
import functools
import importlib.util
import json
import logging
import math
from decimal import Decimal
from pathlib import Path

logger = logging.getLogger(__name__)

PRICE_FILE = "model_prices_and_context_window_backup.json"


FEATURES = ("supports_function_calling", "supports_vision", "supports_response_schema")


@dataclasses.dataclass(frozen=True, slots=True)
class Prices:
    """What litellm's map says about one upstream model; every field is None when the map does not know the model."""

    input_cost_per_token: Decimal | None = None
    output_cost_per_token: Decimal | None = None
    max_input_tokens: int | None = None
    supports_function_calling: bool | None = None
    supports_vision: bool | None = None
    supports_response_schema: bool | None = None


@functools.cache
def price_map():
    """Return litellm's bundled price map, or an empty one if litellm is not installed."""
    spec = importlib.util.find_spec("litellm")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        logger.warning("litellm is not installed: model prices are unknown unless set on the model")
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / PRICE_FILE
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def _decimal(value):
    """Return a non-negative finite price as a Decimal, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return Decimal(str(value))


def _window(value):
    """Return a positive whole token count, or None (the map's `sample_spec` entry holds prose here)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def lookup(litellm_model):
    """Return what the map says about a litellm model string (`openai/gpt-4o-mini` or `gpt-4o-mini`)."""
    table = price_map()
    entry = table.get(litellm_model)
    if entry is None and "/" in litellm_model:
        entry = table.get(litellm_model.split("/", 1)[1])
    if not entry or not isinstance(entry, dict):
        return Prices()
    # litellm itself reads a feature the entry leaves out as unsupported (`model_info.get(key, False)`).
    features = {key: entry.get(key) is True for key in FEATURES}
    return Prices(
        input_cost_per_token=_decimal(entry.get("input_cost_per_token")),
        output_cost_per_token=_decimal(entry.get("output_cost_per_token")),
        max_input_tokens=_window(entry.get("max_input_tokens")),
        **features,
    )


def cost(prompt_tokens, completion_tokens, input_cost_per_token, output_cost_per_token):
    """Return the USD cost of a call, or None when a needed price or count is unknown."""
    if input_cost_per_token is None or output_cost_per_token is None:
        return None
    if prompt_tokens is None and completion_tokens is None:
        return None
    return (prompt_tokens or 0) * input_cost_per_token + (completion_tokens or 0) * output_cost_per_token
