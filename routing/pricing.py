"""Token prices and context windows from litellm's bundled price map, read without importing litellm.

litellm ships its price map as a JSON file inside the package. Reading the file directly keeps a gateway whose
providers are all OpenAI-compatible from paying litellm's multi-second import, and never fetches the map from the
network (litellm's import would try to).
"""

import dataclasses
import functools
import importlib.util
import json
import logging
from decimal import Decimal
from pathlib import Path

logger = logging.getLogger(__name__)

PRICE_FILE = "model_prices_and_context_window_backup.json"


@dataclasses.dataclass(frozen=True, slots=True)
class Prices:
    """Per-token prices in USD and the context window, each None when unknown."""

    input_cost_per_token: Decimal | None = None
    output_cost_per_token: Decimal | None = None
    max_input_tokens: int | None = None


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
    """Return value as a Decimal, or None."""
    return None if value is None else Decimal(str(value))


def lookup(litellm_model):
    """Return the prices for a litellm model string (`openai/gpt-4o-mini` or `gpt-4o-mini`)."""
    table = price_map()
    entry = table.get(litellm_model)
    if entry is None and "/" in litellm_model:
        entry = table.get(litellm_model.split("/", 1)[1])
    if not entry:
        return Prices()
    return Prices(
        input_cost_per_token=_decimal(entry.get("input_cost_per_token")),
        output_cost_per_token=_decimal(entry.get("output_cost_per_token")),
        max_input_tokens=entry.get("max_input_tokens"),
    )


def cost(prompt_tokens, completion_tokens, input_cost_per_token, output_cost_per_token):
    """Return the USD cost of a call, or None when a needed price or count is unknown."""
    if input_cost_per_token is None or output_cost_per_token is None:
        return None
    if prompt_tokens is None and completion_tokens is None:
        return None
    return (prompt_tokens or 0) * input_cost_per_token + (completion_tokens or 0) * output_cost_per_token
