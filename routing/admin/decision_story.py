"""A request's routing decision (`RequestLog.decision`, written by `routing.services`) told as a story for its admin
detail page: what the client asked for → the model chosen and why (automatic selection's analysis and candidates,
the experiment, the fallbacks) → the instances that were candidates and those skipped with why → each upstream
attempt with its outcome, status and duration, linking to the instances' pages → how the request ended; the raw
JSON is folded below it.

Every value in a decision came from a client or an upstream, or from a row written before the record had its current
shape: each is checked for its type here and shown as text (the template escapes it), never trusted as markup.
"""

import json

from django.contrib.admin.utils import quote
from django.urls import reverse

from routing.models import ProviderInstance


def _mapping(value):
    """Return value if it is a dict, else an empty one."""
    return value if isinstance(value, dict) else {}


def _records(value):
    """Return the dicts in value if it is a list, else nothing."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value):
    """Return a recorded value as text ("" for None)."""
    return "" if value is None else str(value)


def _number(value):
    """Return value if it is a number (not a bool), else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def instance_ids(decision):
    """Return every instance id a decision names (candidates, skipped, chosen, attempted), in order, once each."""
    decision = _mapping(decision)
    named = decision.get("candidates") if isinstance(decision.get("candidates"), list) else []
    named = [*named, *_mapping(decision.get("skipped")), decision.get("instance")]
    named += [attempt.get("instance") for attempt in _records(decision.get("attempts"))]
    return list(dict.fromkeys(_text(name) for name in named if name not in (None, "")))


def instance_links(ids):
    """Return {instance id: its admin page} for the ids that are still configured (one query)."""
    if not ids:
        return {}
    existing = ProviderInstance.objects.filter(pk__in=ids).values_list("pk", flat=True)
    return {pk: reverse("admin:routing_providerinstance_change", args=[quote(pk)]) for pk in existing}


def story(log):
    """Return the decision of a RequestLog row as the detail page tells it (plain values; one query for the links)."""
    decision = _mapping(log.decision)
    links = instance_links(instance_ids(decision))

    def instance(name):
        name = _text(name)
        return {"id": name, "url": links.get(name, "")} if name else None

    model = _mapping(decision.get("model"))
    candidates = decision.get("candidates") if isinstance(decision.get("candidates"), list) else []
    problems = decision.get("usage_problems")
    return {
        "requested": _text(model.get("requested")) or log.requested_model,
        "served": _text(model.get("served")) or log.served_model,
        "reason": _text(model.get("reason")),
        "selection": _selection(decision.get("selection")),
        "experiment": _experiment(decision.get("experiment")),
        "fallbacks": [
            (_text(step.get("from")), _text(step.get("to")))
            for step in _records(decision.get("fallbacks"))
            if step.get("from") and step.get("to")
        ],
        "strategy": _text(decision.get("strategy")),
        "candidates": [instance(name) for name in candidates if _text(name)],
        "skipped": [
            {"instance": instance(name), "reason": _text(reason)}
            for name, reason in _mapping(decision.get("skipped")).items()
        ],
        "attempts": [
            {
                "instance": instance(attempt.get("instance")),
                "outcome": _text(attempt.get("outcome")),
                "status": _number(attempt.get("status")),
                "ms": _number(attempt.get("ms")),
                "blamed": attempt.get("blamed") is True,
            }
            for attempt in _records(decision.get("attempts"))
        ],
        "usage_problems": [_text(p) for p in problems if p] if isinstance(problems, list) else [],
        "raw": json.dumps(log.decision, indent=2, sort_keys=True, ensure_ascii=False),
    }


def _selection(value):
    """Return automatic selection's record (analysis, weights, candidates, winner and why), or None without one."""
    chosen = _mapping(value)
    if not chosen:
        return None
    candidates = [{**c, "breakdown": _mapping(c.get("breakdown"))} for c in _records(chosen.get("candidates"))]
    return {
        "analysis": _mapping(chosen.get("analysis")),
        "weights": _mapping(chosen.get("weights")),
        "candidates": candidates,
        "winner": _text(chosen.get("winner")),
        "served": _text(chosen.get("served")),
        "reason": _text(chosen.get("reason")),
    }


def _experiment(value):
    """Return the experiment that enrolled the request (id, variant, model, overrides, fell back), or None."""
    record = _mapping(value)
    if not record:
        return None
    overrides = record.get("overrides")
    return {
        "id": _text(record.get("id")),
        "variant": _text(record.get("variant")),
        "model": _text(record.get("model")),
        "overrides": [_text(o) for o in overrides] if isinstance(overrides, list) else [],
        "fell_back": _text(record.get("fell_back")),
    }
