"""Instance-selection strategies: pure functions from candidate instances and their load state to one choice.

Nothing here touches the network or the database. The caller passes the candidates (already filtered to the
usable ones), a monotonically increasing per-model counter for rotation, and an RNG, so every strategy is
deterministic under test.
"""

import dataclasses
import random
from collections.abc import Sequence

from routing.models import RoutingStrategy

ALIASES = {
    "simple-shuffle": RoutingStrategy.WEIGHTED,
    "least-busy": RoutingStrategy.LEAST_LOADED,
    "latency-based-routing": RoutingStrategy.LATENCY_BASED,
    "roundrobin": RoutingStrategy.ROUND_ROBIN,
    "round_robin": RoutingStrategy.ROUND_ROBIN,
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


STRATEGIES = {
    RoutingStrategy.ROUND_ROBIN: round_robin,
    RoutingStrategy.RANDOM: random_choice,
    RoutingStrategy.WEIGHTED: weighted,
    RoutingStrategy.LEAST_LOADED: least_loaded,
    RoutingStrategy.LATENCY_BASED: latency_based,
}


def choose(strategy, candidates: Sequence[Candidate], counter: int, rng: random.Random):
    """Return the candidate the strategy picks, or None when there are no candidates."""
    if not candidates:
        return None
    return STRATEGIES[normalize_strategy(strategy)](candidates, counter, rng)
