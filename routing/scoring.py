"""Rank candidate models for one request: hard filters first, then an explainable score. Pure: plain values in,
plain values out, no clock, no randomness, no I/O.

The score is a weighted sum of four parts, each in [0, 1]:

- **capability fit**: 1 when the model is tagged for the request's context type, else 0 (a model tagged
  `general_chat` gets half a point for any type: it is meant to take anything);
- **performance**: the success rate of its instances (to the 4th power) times a latency factor (the best eligible
  latency over this model's; unmeasured counts as the best, so a model nobody has tried, or whose figures went
  stale, is tried again);
- **cost**: the cheapest eligible expected cost over this model's (1 for the cheapest; unknown prices score 0.5);
- **quality**: the mean feedback apps gave the model's answers for this context type (`POST /v1/feedback`), shrunk
  towards a neutral prior: (sum of scores + PRIOR_QUALITY × PRIOR_RATINGS) / (ratings + PRIOR_RATINGS). A model
  nobody rated scores the prior, 0.5, like every other unrated model; 20 ratings move it halfway to their mean, so a
  few votes barely move it.

With the default weights capability outweighs the other three together, so a request goes to a model tagged for its
type whenever one is eligible, and to an untagged one only when none is; among models of equal fit the healthier and
then the cheaper wins, and the quality term (weight 0.05: at most 0.05 between the best- and worst-rated model) only
separates near-equals. Ties break by model name, so equal inputs give equal choices.
"""

import dataclasses
from decimal import Decimal

GENERAL = "general_chat"
# Output tokens assumed for the cost estimate when the request sets no max_tokens.
DEFAULT_OUTPUT_TOKENS = 256
# A model whose success rate falls below this is filtered out as failing, whatever else it scores.
MIN_SUCCESS_RATE = 0.2
# The feedback prior: an unrated model's quality, and how many ratings it counts as (their weight against the prior).
PRIOR_QUALITY = 0.5
PRIOR_RATINGS = 20


@dataclasses.dataclass(frozen=True, slots=True)
class Weights:
    """How much each part of the score counts."""

    capability: float = 0.6
    performance: float = 0.25
    cost: float = 0.15
    quality: float = 0.05

    def as_dict(self):
        """Return the weights as a plain dict (for the decision record)."""
        return {"capability": self.capability, "performance": self.performance, "cost": self.cost,
                "quality": self.quality}  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Need:
    """What the request needs, from its analysis."""

    context_type: str = GENERAL
    confidence: float = 1.0
    tools: bool = False
    vision: bool = False
    json: bool = False
    prompt_tokens: int = 0
    max_output_tokens: int | None = None

    @property
    def context_window(self):
        """Return the window the request needs: prompt plus requested output."""
        return self.prompt_tokens + (self.max_output_tokens or 0)


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """One model as the scorer sees it: metadata and live health, all plain values (None = unknown)."""

    name: str
    tags: tuple[str, ...] = ()
    context_window: int | None = None
    supports_function_calling: bool | None = None
    supports_vision: bool | None = None
    supports_response_schema: bool | None = None
    input_cost_per_token: Decimal | None = None
    output_cost_per_token: Decimal | None = None
    usable_instances: int = 1
    success_rate: float | None = None
    latency_ms: float | None = None
    preferred: bool = False  # the model the client named, when every request is auto-selected
    ratings: int = 0  # feedback ratings of its answers for the request's context type
    rating_sum: float = 0.0  # their scores added up

    @property
    def quality(self):
        """Return the posterior mean of its feedback, in [0, 1] (the prior when unrated)."""
        return posterior_quality(self.ratings, self.rating_sum)


@dataclasses.dataclass(frozen=True, slots=True)
class Ranked:
    """A candidate's place: its score and breakdown if eligible, else why it was filtered out."""

    name: str
    eligible: bool
    score: float = 0.0
    breakdown: dict = dataclasses.field(default_factory=dict)
    estimated_cost_usd: Decimal | None = None
    reasons: tuple[str, ...] = ()
    capacity_only: bool = False  # filtered only because no instance can take a request now
    unmet: tuple[str, ...] = ()  # the requirements it was filtered for lacking: tools, vision, json, window


def expected_cost(candidate, need):
    """Return the expected USD cost of the request on the candidate, or None when a price is unknown."""
    if candidate.input_cost_per_token is None or candidate.output_cost_per_token is None:
        return None
    output = need.max_output_tokens if need.max_output_tokens is not None else DEFAULT_OUTPUT_TOKENS
    return candidate.input_cost_per_token * need.prompt_tokens + candidate.output_cost_per_token * output


def filter_reasons(candidate, need):
    """Return (why the candidate cannot serve the request, the requirements it lacks, whether only capacity is
    missing); all empty or false when it can serve."""
    reasons, unmet = [], []
    for name, needed, support, reason in (
        ("tools", need.tools, candidate.supports_function_calling, "does not support function calling"),
        ("vision", need.vision, candidate.supports_vision, "does not support image input"),
        ("json", need.json, candidate.supports_response_schema, "does not support JSON mode / response schema"),
    ):
        if needed and support is False:
            reasons.append(reason)
            unmet.append(name)
    if candidate.context_window is not None and need.context_window > candidate.context_window:
        reasons.append(f"needs a {need.context_window:,}-token window, has {candidate.context_window:,}")
        unmet.append("window")
    if candidate.success_rate is not None and candidate.success_rate < MIN_SUCCESS_RATE:
        reasons.append(f"failing: {candidate.success_rate:.0%} of recent requests succeeded")
    capacity_only = not reasons and candidate.usable_instances <= 0
    if candidate.usable_instances <= 0:
        reasons.append("no instance can take a request now (breakers open, drained or over rpm/tpm)")
    return tuple(reasons), tuple(unmet), capacity_only


def capability_fit(candidate, need):
    """Return how well the candidate's tags fit the request's context type, in [0, 1]."""
    if need.context_type in candidate.tags:
        return 1.0
    if GENERAL in candidate.tags:
        return 0.5
    return 0.0


def performance(candidate, best_latency_ms):
    """Return reliability × latency factor in [0, 1]; unmeasured figures count as the best."""
    # Failures count more than linearly (0.9 -> 0.66, 0.6 -> 0.13): a model failing 40 % of its requests must not win
    # on price, while one failing 1 % (which failover absorbs) barely loses.
    success = 1.0 if candidate.success_rate is None else candidate.success_rate**4
    if candidate.latency_ms is None or not best_latency_ms or candidate.latency_ms <= 0:
        latency = 1.0
    else:
        latency = min(1.0, best_latency_ms / candidate.latency_ms)
    return success * latency


def posterior_quality(ratings, rating_sum, prior_mean=PRIOR_QUALITY, prior_ratings=PRIOR_RATINGS):
    """Return the mean score of ratings shrunk towards prior_mean, as if prior_ratings more had scored exactly that."""
    if ratings <= 0:
        return prior_mean
    return min(1.0, max(0.0, (rating_sum + prior_mean * prior_ratings) / (ratings + prior_ratings)))


def rank(candidates, need, weights=Weights(), preference_bonus=0.05):
    """Return every candidate as a Ranked: the eligible ones best first (ties by name), then the filtered ones.

    `preference_bonus` is added to the score of the model the client named (when every request is selected): it
    wins among near-equals but never passes a hard filter.
    """
    eligible, filtered = [], []
    for candidate in candidates:
        reasons, unmet, capacity_only = filter_reasons(candidate, need)
        if reasons:
            filtered.append(Ranked(candidate.name, False, reasons=reasons, capacity_only=capacity_only, unmet=unmet,
                                   estimated_cost_usd=expected_cost(candidate, need)))  # fmt: skip
        else:
            eligible.append(candidate)
    latencies = [c.latency_ms for c in eligible if c.latency_ms is not None and c.latency_ms > 0]
    best_latency = min(latencies) if latencies else None
    costs = {c.name: expected_cost(c, need) for c in eligible}
    known = [cost for cost in costs.values() if cost is not None]
    cheapest = min(known) if known else None
    ranked = []
    for candidate in eligible:
        cost = costs[candidate.name]
        if cost is None:
            cost_score = 0.5
        elif cost <= 0 or cheapest is None:
            cost_score = 1.0
        else:
            cost_score = float(cheapest / cost)
        parts = {
            "capability": capability_fit(candidate, need),
            "performance": performance(candidate, best_latency),
            "cost": cost_score,
            "quality": candidate.quality,
        }
        score = sum(getattr(weights, name) * value for name, value in parts.items())
        if candidate.preferred:
            score += preference_bonus
            parts["preferred"] = preference_bonus
        breakdown = {name: round(value, 4) for name, value in parts.items()}
        ranked.append(Ranked(candidate.name, True, round(score, 6), breakdown, cost, _reasons(candidate, need)))
    ranked.sort(key=lambda r: (-r.score, r.name))
    filtered.sort(key=lambda r: r.name)
    return ranked + filtered


def _reasons(candidate, need):
    """Return the notes that explain an eligible candidate's score."""
    notes = []
    if need.context_type in candidate.tags:
        notes.append(f"tagged {need.context_type}")
    elif GENERAL in candidate.tags:
        notes.append("general-purpose model")
    else:
        notes.append(f"not tagged {need.context_type}")
    for needed, support, what in (
        (need.tools, candidate.supports_function_calling, "function calling"),
        (need.vision, candidate.supports_vision, "image input"),
        (need.json, candidate.supports_response_schema, "JSON mode"),
    ):
        if needed and support is None:
            notes.append(f"{what} support unknown")
    if candidate.context_window is None:
        notes.append("context window unknown")
    if candidate.input_cost_per_token is None or candidate.output_cost_per_token is None:
        notes.append("price unknown")
    if candidate.ratings > 0:
        notes.append(f"feedback {candidate.rating_sum / candidate.ratings:.2f} from {candidate.ratings} "
                     f"rating{'s' if candidate.ratings != 1 else ''}")  # fmt: skip
    return tuple(notes)


def summary(ranked, need):
    """Return one short line saying why the winner won, e.g. `code_generation: best capability fit, 2nd cheapest`."""
    eligible = [r for r in ranked if r.eligible]
    if not eligible:
        return f"{need.context_type}: no eligible model"
    winner = eligible[0]
    parts = []
    fit = winner.breakdown.get("capability", 0)
    parts.append("best capability fit" if fit >= max(r.breakdown.get("capability", 0) for r in eligible)
                 else "capability fit not the best")  # fmt: skip
    costs = sorted(r.estimated_cost_usd for r in eligible if r.estimated_cost_usd is not None)
    if winner.estimated_cost_usd is not None and costs:
        place = costs.index(winner.estimated_cost_usd) + 1
        parts.append("cheapest" if place == 1 else f"{_ordinal(place)} cheapest")
    if winner.breakdown.get("performance", 1) >= max(r.breakdown.get("performance", 0) for r in eligible):
        parts.append("healthiest" if len(eligible) > 1 else "healthy")
    rated = winner.breakdown.get("quality", PRIOR_QUALITY)
    if len(eligible) > 1 and rated > max(r.breakdown.get("quality", PRIOR_QUALITY) for r in eligible[1:]):
        parts.append("best rated")
    return f"{need.context_type}: {', '.join(parts)}"


def _ordinal(n):
    """Return 2nd, 3rd, 4th, …"""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
