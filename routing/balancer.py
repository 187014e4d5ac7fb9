"""Instance-selection strategies: pure functions from candidate instances and their load state to one choice.

Nothing here touches the network or the database. The caller passes the candidates (already filtered to the
usable ones), a monotonically increasing per-model counter for rotation, and an RNG, so every strategy is
deterministic under test.
"""

import dataclasses
import random
from collections.abc import Sequence

from routing.models import RoutingStrategy

# Every routing_strategy LiteLLM documents (litellm.types.router.RoutingStrategy and the Router's own list), mapped.
ALIASES = {
    "simple-shuffle": RoutingStrategy.WEIGHTED,
    "least-busy": RoutingStrategy.LEAST_LOADED,
    "latency-based-routing": RoutingStrategy.LATENCY_BASED,
    "usage-based-routing": RoutingStrategy.USAGE_BASED,
    "usage-based-routing-v2": RoutingStrategy.USAGE_BASED,
    "cost-based-routing": RoutingStrategy.COST_BASED,
    "provider-budget-routing": RoutingStrategy.WEIGHTED,
    "lar1": RoutingStrategy.WEIGHTED,
    "roundrobin": RoutingStrategy.ROUND_ROBIN,
    "round_robin": RoutingStrategy.ROUND_ROBIN,
}
# LiteLLM strategies ChatVault only approximates, and what is lost (the config import warns with it).
APPROXIMATED = {
    "provider-budget-routing": "provider budgets are not enforced, deployments are picked by weight",
    "lar1": "LAR-1 confidence routing is not supported, deployments are picked by weight",
}


def normalize_strategy(name):
    """Return the canonical strategy for a ChatVault or LiteLLM strategy name; raise ValueError if unknown."""
    if not name:
        return RoutingStrategy.ROUND_ROBIN
    key = name.strip().lower()
    if key in ALIASES:
        return ALIASES[key]
    try:
        return RoutingStrategy(key)
    except ValueError:
        known = sorted({*RoutingStrategy.values, *ALIASES})
        raise ValueError(f"unknown routing strategy {name!r}; expected one of {', '.join(known)}") from None


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """An instance as the strategies see it."""

    id: str
    weight: float = 1.0
    in_flight: int = 0
    latency_ms: float | None = None  # EWMA of latency (or TTFT for streams); None when not yet measured
    headroom: float | None = None  # share of its tightest rpm/tpm limit still free this minute; None: no limit
    tokens_used: int = 0  # tokens it was sent in the last minute
    cost: float | None = None  # price per token (input + output); None when unknown


def usage(rpm, tpm, requests, tokens):
    """Return the Candidate fields of an instance's use this minute: headroom under its limits and tokens used."""
    shares = [1.0 - used / limit for limit, used in ((rpm, requests), (tpm, tokens)) if limit]
    return {"headroom": max(0.0, min(shares)) if shares else None, "tokens_used": tokens}


def round_robin(candidates, counter, rng):
    """Return the next candidate in strict rotation."""
    return candidates[counter % len(candidates)]


def random_choice(candidates, counter, rng):
    """Return a uniformly random candidate."""
    return candidates[rng.randrange(len(candidates))]


def weighted(candidates, counter, rng):
    """Return a candidate with probability proportional to its weight (uniform if every weight is 0)."""
    total = sum(max(c.weight, 0.0) for c in candidates)
    if total <= 0:
        return random_choice(candidates, counter, rng)
    point = rng.random() * total
    for cand in candidates:
        point -= max(cand.weight, 0.0)
        if point < 0:
            return cand
    return candidates[-1]


def least_loaded(candidates, counter, rng):
    """Return a candidate with the fewest in-flight requests, rotating among ties."""
    fewest = min(c.in_flight for c in candidates)
    tied = [c for c in candidates if c.in_flight == fewest]
    return tied[counter % len(tied)]


def latency_based(candidates, counter, rng):
    """Return the faster of two random candidates (power of two choices); unmeasured ones are tried first."""
    unmeasured = [c for c in candidates if c.latency_ms is None]
    if unmeasured:
        return unmeasured[counter % len(unmeasured)]
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(range(len(candidates)), 2)
    first, second = candidates[a], candidates[b]
    # Load-aware: an instance's expected wait grows with the requests already queued on it.
    return first if first.latency_ms * (first.in_flight + 1) <= second.latency_ms * (second.in_flight + 1) else second


def usage_based(candidates, counter, rng):
    """Return the candidate with the most rpm/tpm headroom this minute (an instance without limits counts as wholly
    free), then the fewest tokens used, rotating among ties (LiteLLM's usage-based-routing)."""

    def free(c):
        return 1.0 if c.headroom is None else c.headroom

    most = max(free(c) for c in candidates)
    roomiest = [c for c in candidates if free(c) == most]
    fewest = min(c.tokens_used for c in roomiest)
    tied = [c for c in roomiest if c.tokens_used == fewest]
    return tied[counter % len(tied)]


def cost_based(candidates, counter, rng):
    """Return the cheapest candidate (unknown prices last), rotating among ties (LiteLLM's cost-based-routing)."""
    known = [c for c in candidates if c.cost is not None]
    if not known:
        return round_robin(candidates, counter, rng)
    cheapest = min(c.cost for c in known)
    tied = [c for c in known if c.cost == cheapest]
    return tied[counter % len(tied)]


STRATEGIES = {
    RoutingStrategy.ROUND_ROBIN: round_robin,
    RoutingStrategy.RANDOM: random_choice,
    RoutingStrategy.WEIGHTED: weighted,
    RoutingStrategy.LEAST_LOADED: least_loaded,
    RoutingStrategy.LATENCY_BASED: latency_based,
    RoutingStrategy.USAGE_BASED: usage_based,
    RoutingStrategy.COST_BASED: cost_based,
}


def choose(strategy, candidates: Sequence[Candidate], counter: int, rng: random.Random):
    """Return the candidate the strategy picks, or None when there are no candidates."""
    if not candidates:
        return None
    return STRATEGIES[normalize_strategy(strategy)](candidates, counter, rng)
