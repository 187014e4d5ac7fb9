"""Experiment assignment: which experiment and variant, if any, a request belongs to.

Pure and deterministic: `assign` reads the request's facts and the snapshot's `LiveExperiment`s and nothing else (no
database, no Redis, no randomness), so the same unit gets the same variant on every request, worker and restart.

A unit (the OpenAI `user` field, else the `x-chatvault-session` header, else the API key) is enrolled when
`bucket(salt, "enrol", unit)` — a uniform number in [0, 1) from a keyed hash — is below the traffic share. Growing
the share only adds units: everyone enrolled stays enrolled. An enrolled unit's variant comes from a second,
independent hash laid over the cumulative weights, so it does not depend on the traffic share at all.
"""

import dataclasses
import hashlib
import math
from datetime import datetime

_SCALE = float(1 << 64)
# What a variant may set on the request it serves, and the types each accepts.
OVERRIDE_TYPES = {
    "temperature": (int, float),
    "top_p": (int, float),
    "max_tokens": (int,),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "system_prompt_prefix": (str,),
}


@dataclasses.dataclass(frozen=True, slots=True)
class LiveVariant:
    """A variant as the hot path needs it."""

    name: str
    model: str
    weight: float
    is_control: bool
    overrides: tuple[tuple[str, object], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class LiveExperiment:
    """A running experiment as the hot path needs it: who it may claim and how it splits them."""

    id: str
    salt: str
    share: float  # traffic percentage / 100
    variants: tuple[LiveVariant, ...]
    context_types: frozenset[str] = frozenset()  # empty: every context type
    key_pks: frozenset[int] = frozenset()  # empty: every key
    starts_at: float | None = None  # epoch seconds
    ends_at: float | None = None
    cumulative: tuple[float, ...] = ()  # filled by `live_experiment`

    @property
    def models(self):
        """Return the names of the variants' models."""
        return frozenset(v.model for v in self.variants)

    def live_at(self, now):
        """Return whether now is inside the experiment's start and end times."""
        return (self.starts_at is None or self.starts_at <= now) and (self.ends_at is None or now < self.ends_at)

    def claims(self, model, context_type, key_pk):
        """Return whether a request for model (of context_type, made with key_pk) is in this experiment's scope."""
        return (
            any(v.model == model for v in self.variants)
            and (not self.context_types or context_type in self.context_types)
            and (not self.key_pks or key_pk in self.key_pks)
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Assignment:
    """The experiment and variant a request was assigned to, and its hashed unit (what rows and exports store)."""

    experiment: LiveExperiment
    variant: LiveVariant
    unit: str


def live_experiment(*, id, salt, traffic_percentage, variants, context_types=(), key_pks=(), starts_at=None,
                    ends_at=None):  # fmt: skip
    """Return a LiveExperiment with its cumulative weights precomputed (equal weights when they add up to 0)."""
    weights = [max(0.0, v.weight) for v in variants]
    total = sum(weights)
    if total <= 0:
        weights, total = [1.0] * len(variants), float(len(variants))
    running, cumulative = 0.0, []
    for weight in weights:
        running += weight / total
        cumulative.append(running)
    if cumulative:
        cumulative[-1] = 1.0
    return LiveExperiment(
        id=id,
        salt=salt or id,
        share=min(max(traffic_percentage, 0.0), 100.0) / 100.0,
        variants=tuple(variants),
        context_types=frozenset(context_types),
        key_pks=frozenset(key_pks),
        starts_at=_epoch(starts_at),
        ends_at=_epoch(ends_at),
        cumulative=tuple(cumulative),
    )


def _epoch(moment):
    """Return a datetime (or epoch number, or None) as epoch seconds."""
    if isinstance(moment, datetime):
        return moment.timestamp()
    return moment


def bucket(salt, purpose, unit):
    """Return a uniform number in [0, 1) for (salt, purpose, unit): the same on every machine and run."""
    digest = hashlib.blake2b(f"{salt}\x00{purpose}\x00{unit}".encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / _SCALE


def hashed_unit(salt, unit):
    """Return the unit as rows and exports store it: a keyed hash, so a user id is never written in the clear."""
    return hashlib.blake2b(
        unit.encode("utf-8", "surrogatepass"), key=salt.encode("utf-8", "surrogatepass")[:64], digest_size=12
    ).hexdigest()


def variant_for(experiment, unit):
    """Return the variant of an enrolled unit (independent of the traffic share)."""
    point = bucket(experiment.salt, "variant", unit)
    for variant, edge in zip(experiment.variants, experiment.cumulative, strict=True):
        if point < edge:
            return variant
    return experiment.variants[-1]


def enrolled(experiment, unit):
    """Return whether the unit falls inside the experiment's traffic share."""
    return bucket(experiment.salt, "enrol", unit) < experiment.share


def unit_of(*, user, session, key_pk):
    """Return the unit a request is assigned by: `user`, else the session header, else the API key."""
    if isinstance(user, str) and user:
        return "user:" + user
    if session:
        return "session:" + session
    return f"key:{key_pk}"


def claimant(experiments, model, context_type, key_pk, now):
    """Return the live experiment whose scope holds this request, or None.

    Saving and importing refuse two running experiments whose scopes overlap (`experiments.overlap`), so at most
    one claims a request; should a race let two through, the first by id wins, the same on every worker.
    """
    for experiment in experiments:
        if experiment.live_at(now) and experiment.claims(model, context_type, key_pk):
            return experiment
    return None


def assign(experiment, unit):
    """Return the Assignment of unit in experiment, or None when the unit is not enrolled."""
    if not experiment.variants or not enrolled(experiment, unit):
        return None
    variant = variant_for(experiment, unit)
    return Assignment(experiment=experiment, variant=variant, unit=hashed_unit(experiment.salt, unit))


def apply_overrides(body, variant):
    """Return the body with the variant's request overrides applied (a new dict; the client's is left alone)."""
    if not variant.overrides:
        return body
    body = dict(body)
    for name, value in variant.overrides:
        if name == "system_prompt_prefix":
            body["messages"] = _with_system_prefix(body.get("messages") or [], value)
        else:
            body[name] = value
    return body


def _with_system_prefix(messages, prefix):
    """Return messages with prefix put before the first system message's text (or as a new first system message)."""
    messages = list(messages)
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") in ("system", "developer"):
            content = message.get("content")
            if isinstance(content, str):
                messages[index] = {**message, "content": f"{prefix}\n\n{content}" if content else prefix}
                return messages
            if isinstance(content, list):
                messages[index] = {**message, "content": [{"type": "text", "text": prefix}, *content]}
                return messages
    return [{"role": "system", "content": prefix}, *messages]


def validate_overrides(overrides):
    """Return the problems of a variant's overrides (empty when they are valid)."""
    if not isinstance(overrides, dict):
        return ["overrides must be an object"]
    problems = []
    for name, value in overrides.items():
        types = OVERRIDE_TYPES.get(name)
        if types is None:
            problems.append(f"unknown override '{name}' (allowed: {', '.join(OVERRIDE_TYPES)})")
        elif isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"override '{name}' must be {'a string' if types == (str,) else 'a number'}")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"override '{name}' must be a finite number")  # jsonb cannot store NaN or infinity
        elif isinstance(value, str) and ("\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value)):
            problems.append(f"override '{name}' contains a character that cannot be stored")
    return problems
