"""Model choice: which configured model serves a chat request, and why.

`choose_model` is pure: it reads the request, the snapshot, the key and the live health it is given and nothing else
(no clock, no randomness, no I/O), so equal inputs give equal choices and it is tested without fixtures. A client
that names a model gets that model; `model: "auto"` (or every request, when the gateway's `auto_select` is on and the
key allows it) is selected: the request is analysed (`routing.analysis`), every model the key may select from is
ranked (`routing.scoring`: hard filters, then an explainable score), the best serves and the rest, in order, are its
fallbacks. Experiments extend this function later.
"""

import dataclasses

from routing import analysis, scoring
from routing.errors import InvalidRequest, ModelNotFound, NoCapacity, PermissionDenied
from routing.snapshot import ModelConfig

AUTO = "auto"
# What each requirement is called in a "no model can serve this" message.
REQUIREMENT_NAMES = {
    "tools": "supports function calling",
    "vision": "supports image input",
    "json": "supports JSON mode / response schema",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    """The model chosen for a request, the name the client asked for, and why (as the request's decision records).

    A selected request also carries its fallbacks (the next-ranked eligible models, in order), its context type, and
    the `selection` record: analysis, every candidate's score breakdown or filter reason, weights and the winner.
    """

    model: ModelConfig
    requested: str
    reason: str
    fallbacks: tuple[ModelConfig, ...] = ()
    context_type: str = ""
    selection: dict | None = None

    @property
    def decision(self):
        """Return the `model` entry of the request's decision record."""
        return {"requested": self.requested, "served": self.model.name, "reason": self.reason}


def choose_model(*, body, snapshot, key, health=None):
    """Return the Choice of model for a validated chat request body made with key.

    `health(model_config)` returns the model's live `state.ModelHealth`; selection needs it, a named model does not.
    Raise ModelNotFound when the named model is not enabled, PermissionDenied when the key may not use it (or may not
    use automatic selection), InvalidRequest when no model meets the request's requirements, NoCapacity when only
    capacity is missing.
    """
    name = body["model"]
    if name == AUTO or (snapshot.auto_select and key.auto_select):
        if not key.auto_select:
            raise PermissionDenied("This API key may not use automatic model selection.", code="auto_select_disabled")
        return select(body=body, snapshot=snapshot, key=key, health=health)
    model = snapshot.models.get(name)
    if model is None:
        raise ModelNotFound(f"The model '{name}' does not exist or is not enabled.", param="model")
    if not key.may_use(name):
        raise PermissionDenied(f"This API key may not use the model '{name}'.", code="model_not_allowed")
    reason = "requested by the client"
    alias = snapshot.models.get(model.served_by) if model.served_by else None
    if alias is not None and alias is not model:  # an alias to a model that is not enabled is not followed
        model, reason = alias, f"'{name}' is served by '{alias.name}' (alias)"
    if model.context_window_fallbacks and model.context_window:
        needed = analysis.estimate_prompt_tokens(body) + (_max_output(body) or 0)
        if needed > model.context_window:
            return _context_window_fallback(model, needed, snapshot, key)
    return Choice(model=model, requested=name, reason=reason,
                  fallbacks=_usable(model.fallbacks, snapshot, key, exclude=model.name))  # fmt: skip


def _usable(names, snapshot, key, exclude=""):
    """Return the enabled models of names that the key may use, in order."""
    return tuple(snapshot.models[n] for n in names if n != exclude and n in snapshot.models and key.may_use(n))


def _context_window_fallback(model, needed, snapshot, key):
    """Return the Choice of the first context-window fallback of model whose window fits the request.

    A fallback with an unknown window is taken as fitting (the upstream will say if it does not).
    """
    for candidate in _usable(model.context_window_fallbacks, snapshot, key, exclude=model.name):
        if candidate.context_window is None or needed <= candidate.context_window:
            return Choice(
                model=candidate,
                requested=model.name,
                reason=f"context window fallback: needs about {needed:,} tokens, {model.name} has "
                f"{model.context_window:,}",
                fallbacks=_usable(candidate.fallbacks, snapshot, key, exclude=candidate.name),
            )
    raise InvalidRequest(
        f"The request needs about {needed:,} tokens; '{model.name}' has {model.context_window:,} and none of its "
        "context window fallbacks is larger.",
        param="messages",
        code="context_length_exceeded",
    )


def _max_output(body):
    """Return the output tokens a request asks for at most, or None when it does not say."""
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def need_of(analysed, body):
    """Return what the scorer needs to know of an analysed request."""
    return scoring.Need(
        context_type=analysed.context_type,
        confidence=analysed.confidence,
        tools="tools" in analysed.requirements,
        vision="vision" in analysed.requirements,
        json="json" in analysed.requirements,
        prompt_tokens=analysed.prompt_tokens,
        max_output_tokens=_max_output(body),
    )


def candidate_of(model, model_health, preferred, feedback=None):
    """Return the scorer's view of a model: its metadata, its live health (figures older than the window are
    unknown, so a model that lost its traffic is tried again once its bad figures have aged out) and its feedback for
    the request's context type, (ratings, sum of scores), from the snapshot."""
    measured = model_health is not None and model_health.requests > 0
    ratings, rating_sum = feedback or (0, 0.0)
    return scoring.Candidate(
        name=model.name,
        tags=tuple(model.capabilities),
        context_window=model.context_window,
        supports_function_calling=model.supports_function_calling,
        supports_vision=model.supports_vision,
        supports_response_schema=model.supports_response_schema,
        input_cost_per_token=model.input_cost_per_token,
        output_cost_per_token=model.output_cost_per_token,
        usable_instances=model_health.usable if model_health is not None else len(model.instances),
        success_rate=model_health.success_rate if measured else None,
        latency_ms=model_health.latency_ms if measured else None,
        preferred=preferred,
        ratings=ratings,
        rating_sum=rating_sum,
    )


def rank_models(*, body, snapshot, key, health=None):
    """Return (analysis, need, weights, ranked candidates) for a request: the one ranking selection and the
    recommend endpoint share."""
    analysed = analysis.analyse(body)
    need = need_of(analysed, body)
    weights = snapshot.weights_for(need.context_type)
    requested = body.get("model")
    candidates = [
        candidate_of(model, health(model) if health is not None else None, preferred=name == requested,
                     feedback=snapshot.quality.get((name, need.context_type)))  # fmt: skip
        for name, model in sorted(snapshot.models.items())
        if key.may_select(name) and not model.embedding
    ]
    return analysed, need, weights, scoring.rank(candidates, need, weights)


def select(*, body, snapshot, key, health=None):
    """Return the Choice of the best-ranked eligible model, with the others as fallbacks; raise when none is."""
    analysed, need, weights, ranked = rank_models(body=body, snapshot=snapshot, key=key, health=health)
    eligible = [r for r in ranked if r.eligible]
    if not eligible:
        raise _nothing_eligible(ranked, need)
    reason = scoring.summary(ranked, need)
    return Choice(
        model=snapshot.models[eligible[0].name],
        requested=body["model"],
        reason=reason,
        fallbacks=tuple(snapshot.models[r.name] for r in eligible[1:]),
        context_type=need.context_type,
        selection={
            "analysis": analysis_record(analysed),
            "weights": weights.as_dict(),
            "candidates": [candidate_record(r) for r in ranked],
            "winner": eligible[0].name,
            "reason": reason,
        },
    )


def analysis_record(analysed):
    """Return the analysis as the decision record and the recommend endpoint show it."""
    return {**analysed.as_dict(), "confidence": round(analysed.confidence, 3)}


def candidate_record(ranked):
    """Return one ranked candidate as the decision record and the recommend endpoint show it."""
    record = {"model": ranked.name, "eligible": ranked.eligible}
    record.update(score=ranked.score if ranked.eligible else None, breakdown=ranked.breakdown)
    record["estimated_cost_usd"] = str(ranked.estimated_cost_usd) if ranked.estimated_cost_usd is not None else None
    record["reasons"] = list(ranked.reasons)
    return record


def _nothing_eligible(ranked, need):
    """Return the error for a request no model can serve: 503 when only capacity is missing, else 400 naming why."""
    if not ranked:
        return InvalidRequest("No enabled model may be selected for this API key.", code="no_eligible_model")
    if any(r.capacity_only for r in ranked):  # a model would serve it, were an instance free
        return NoCapacity("Every model that could serve this request is unavailable right now; retry later.")
    unmet = [REQUIREMENT_NAMES[name] for name in REQUIREMENT_NAMES if all(name in r.unmet for r in ranked)]
    if unmet:
        return InvalidRequest(f"No enabled model {' and '.join(unmet)}.", code="no_eligible_model")
    if all("window" in r.unmet for r in ranked):
        return InvalidRequest(
            f"No enabled model has a context window of {need.context_window:,} tokens.", code="context_too_long"
        )
    reasons = "; ".join(f"{r.name}: {', '.join(r.reasons)}" for r in ranked)
    return InvalidRequest(f"No enabled model can serve this request ({reasons}).", code="no_eligible_model")
