"""Experiment scopes: which requests an experiment could claim, and whether two running experiments could claim one.

Assignment gives a request to at most one experiment, so two running experiments whose scopes overlap would split
traffic between them in a way neither analysis sees. Saving, starting and importing refuse that with
`overlap_errors`, which names both experiments and what they share. `overlaps` and `describe_shared` are pure; only
`scope_of` (reading an experiment's saved variants and keys) and `overlap_errors`' default (the running experiments in
the database) touch the database.
"""

import dataclasses
from datetime import UTC, datetime

from django.utils import timezone


@dataclasses.dataclass(frozen=True)
class Scope:
    """The requests an experiment may claim: its models, narrowed to context types and keys, between two times."""

    id: str
    name: str
    models: frozenset[str]
    context_types: frozenset[str]  # empty: every context type
    key_pks: frozenset[int]  # empty: every key
    starts_at: datetime | None  # None: open-ended
    ends_at: datetime | None


def overlaps(a: Scope, b: Scope) -> bool:
    """Return whether some request could be claimed by both scopes."""
    return (
        bool(a.models & b.models)
        and _meet(a.context_types, b.context_types)
        and _meet(a.key_pks, b.key_pks)
        and (a.starts_at is None or b.ends_at is None or a.starts_at < b.ends_at)
        and (b.starts_at is None or a.ends_at is None or b.starts_at < a.ends_at)
    )


def _meet(a, b):
    """Return whether two target sets intersect, an empty set meaning everything."""
    return not a or not b or bool(a & b)


def describe_shared(a: Scope, b: Scope, key_labels=None) -> str:
    """Return what two overlapping scopes both claim, e.g. "model 'gpt-4o' (all context types, all keys)"."""
    models = sorted(a.models & b.models)
    what = f"model{'s' if len(models) > 1 else ''} {', '.join(map(repr, models))}"
    context_types = sorted(_shared(a.context_types, b.context_types))
    keys = _shared(a.key_pks, b.key_pks)
    labels = key_labels or {}
    parts = [
        _listed("context type", context_types) if context_types else "all context types",
        _listed("key", sorted(labels.get(pk, f"#{pk}") for pk in keys)) if keys else "all keys",
    ]
    if a.starts_at or a.ends_at or b.starts_at or b.ends_at:
        start = max((t for t in (a.starts_at, b.starts_at) if t), default=None)
        end = min((t for t in (a.ends_at, b.ends_at) if t), default=None)
        parts.append(f"from {_when(start, 'the start')} until {_when(end, 'no end')}")
    return f"{what} ({', '.join(parts)})"


def _shared(a, b):
    """Return the intersection of two target sets (empty meaning everything), empty when both are everything."""
    if not a:
        return b
    if not b:
        return a
    return a & b


def _listed(noun, names):
    """Return "context type 'code'" or "context types 'code', 'math'"."""
    return f"{noun}{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}"


def _when(moment, unbounded):
    """Return a time as ISO 8601 in UTC, or what an open end means."""
    if moment is None:
        return unbounded
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def scope_of(experiment, *, models=None, key_pks=None) -> Scope:
    """Return an experiment's scope; models (names or Models) and key_pks (pks or ApiKeys) replace its saved ones.

    A form passes its unsaved inline variants and chosen keys; without them the saved variants and keys are read.
    """
    if models is None:
        models = [] if experiment._state.adding else [v.model.name for v in experiment.variants.select_related("model")]
    if key_pks is None:
        key_pks = [] if experiment._state.adding else experiment.target_keys.values_list("pk", flat=True)
    return Scope(
        id=experiment.id,
        name=experiment.name,
        models=frozenset(getattr(m, "name", m) for m in models),
        context_types=frozenset(experiment.target_context_types or ()),
        key_pks=frozenset(getattr(k, "pk", k) for k in key_pks),
        starts_at=experiment.starts_at,
        ends_at=experiment.ends_at,
    )


def running_scopes(*, exclude=None, now=None) -> list[Scope]:
    """Return the scopes of the running experiments except the one with id exclude, in id order.

    An experiment whose end time has passed claims nothing any more (assignment stops at `ends_at`), so it is left
    out even before `stop_ended_experiments` has marked it stopped.
    """
    from django.db.models import Q

    from experiments.models import Experiment, ExperimentStatus

    now = now or timezone.now()
    running = (
        Experiment.objects.filter(status=ExperimentStatus.RUNNING)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
        .exclude(pk=exclude)
        .prefetch_related("variants__model", "target_keys")
        .order_by("id")
    )
    return [
        scope_of(e, models=[v.model.name for v in e.variants.all()], key_pks=[k.pk for k in e.target_keys.all()])
        for e in running
    ]


def overlap_errors(scope: Scope, *, others=None) -> list[str]:
    """Return one message per scope in others (default: the running experiments but scope's) that overlaps scope."""
    if others is None:
        others = running_scopes(exclude=scope.id)
    clashes = [other for other in others if other.id != scope.id and overlaps(scope, other)]
    if not clashes:
        return []
    labels = _key_labels({pk for other in clashes for pk in _shared(scope.key_pks, other.key_pks)})
    return [
        f"Experiment '{scope.id}' ({scope.name}) overlaps running experiment '{other.id}' ({other.name}): "
        f"both claim requests for {describe_shared(scope, other, labels)}."
        for other in clashes
    ]


def _key_labels(pks):
    """Return {pk: "name (prefix…)"} for the API keys a message names."""
    if not pks:
        return {}
    from routing.models import ApiKey

    return {key.pk: str(key) for key in ApiKey.objects.filter(pk__in=pks)}
