"""Unit tests for routing.selection: which model serves a request, and why (pure: no database, no clock)."""

import dataclasses

import pytest

from routing.errors import InvalidRequest, ModelNotFound, NoCapacity, PermissionDenied
from routing.scoring import Weights
from routing.selection import Choice, choose_model
from routing.snapshot import KeyConfig, ModelConfig, Snapshot, type_weights
from routing.state import ModelHealth

BODY = {"model": "vault-a", "messages": [{"role": "user", "content": "hi"}]}


def model(name):
    """Return an enabled model with no instances (choice never looks at them)."""
    return ModelConfig(name=name, description="", strategy="round-robin", capabilities=(), context_window=None,
                       created=0, instances=())  # fmt: skip


def snapshot(*names):
    """Return a snapshot with the named models enabled."""
    return Snapshot(token=None, models={n: model(n) for n in names}, keys_by_hash={}, default_strategy="round-robin",
                    auto_select=False, loaded_at=0.0)  # fmt: skip


def key(allowed=None):
    """Return a key that may use every model, or only the allowed ones."""
    return KeyConfig(pk=1, name="k", prefix="cv-", is_admin=False, allowed_models=allowed, expires_at=None,
                     revoked=False)  # fmt: skip


def test_it_serves_the_model_the_client_names_and_says_so():
    snap = snapshot("vault-a", "vault-b")
    choice = choose_model(body=BODY, snapshot=snap, key=key())
    assert choice == Choice(model=snap.models["vault-a"], requested="vault-a", reason="requested by the client")
    assert choice.decision == {"requested": "vault-a", "served": "vault-a", "reason": "requested by the client"}


def test_a_key_limited_to_the_model_may_use_it():
    choice = choose_model(body=BODY, snapshot=snapshot("vault-a"), key=key(frozenset({"vault-a"})))
    assert choice.model.name == "vault-a"


def test_a_model_that_is_not_enabled_is_not_found():
    with pytest.raises(ModelNotFound) as exc:
        choose_model(body=BODY, snapshot=snapshot("vault-b"), key=key())
    assert exc.value.status_code == 404 and exc.value.param == "model"
    assert "'vault-a'" in exc.value.message


def test_a_key_limited_to_other_models_is_refused():
    with pytest.raises(PermissionDenied) as exc:
        choose_model(body=BODY, snapshot=snapshot("vault-a", "vault-b"), key=key(frozenset({"vault-b"})))
    assert exc.value.status_code == 403 and exc.value.code == "model_not_allowed"


def test_an_unknown_model_is_not_found_even_for_a_key_that_may_not_use_it():
    """The model's existence is checked before the key's permission, as it always was."""
    with pytest.raises(ModelNotFound):
        choose_model(body={**BODY, "model": "nope"}, snapshot=snapshot("vault-a"), key=key(frozenset({"vault-a"})))


# --- automatic selection ------------------------------------------------------------------------------------------

CODE = {"model": "auto", "messages": [{"role": "user", "content": "Write a Rust function that reverses a string."}]}


def tagged(name, *tags, **fields):
    """Return an enabled model with capability tags and metadata fields."""
    return dataclasses.replace(model(name), capabilities=tags, **fields)


def auto_snapshot(*models, auto_select=False):
    """Return a snapshot holding these models."""
    return Snapshot(token=None, models={m.name: m for m in models}, keys_by_hash={}, default_strategy="round-robin",
                    auto_select=auto_select, loaded_at=0.0)  # fmt: skip


def health(usable=1, requests=0, success_rate=None, latency_ms=None):
    """Return a health function giving every model the same figures."""
    return lambda m: ModelHealth(model=m.name, instances=1, usable=usable, requests=requests,
                                 success_rate=success_rate, latency_ms=latency_ms, in_flight=0)  # fmt: skip


def test_auto_picks_the_model_tagged_for_the_request_and_keeps_the_rest_as_fallbacks():
    snap = auto_snapshot(tagged("chat", "general_chat"), tagged("coder", "code_generation"), tagged("other"))
    choice = choose_model(body=CODE, snapshot=snap, key=key(), health=health())
    assert choice.model.name == "coder" and choice.context_type == "code_generation"
    assert [m.name for m in choice.fallbacks] == ["chat", "other"]
    assert choice.decision == {"requested": "auto", "served": "coder", "reason": choice.reason}
    assert choice.reason.startswith("code_generation: best capability fit")
    assert choice.selection["winner"] == "coder"
    assert [c["model"] for c in choice.selection["candidates"]] == ["coder", "chat", "other"]


def test_equal_inputs_give_equal_choices():
    snap = auto_snapshot(tagged("b", "code_generation"), tagged("a", "code_generation"))
    choices = {choose_model(body=CODE, snapshot=snap, key=key(), health=health()).model.name for _ in range(5)}
    assert choices == {"a"}


def test_selection_only_picks_from_the_keys_pool():
    snap = auto_snapshot(tagged("coder", "code_generation"), tagged("chat", "general_chat"))
    pooled = dataclasses.replace(key(), auto_models=frozenset({"chat"}))
    assert choose_model(body=CODE, snapshot=snap, key=pooled, health=health()).model.name == "chat"
    limited = key(frozenset({"chat"}))
    assert choose_model(body=CODE, snapshot=snap, key=limited, health=health()).model.name == "chat"


def test_a_key_without_automatic_selection_is_refused_auto():
    with pytest.raises(PermissionDenied) as exc:
        choose_model(body=CODE, snapshot=auto_snapshot(tagged("a")), key=dataclasses.replace(key(), auto_select=False))
    assert exc.value.code == "auto_select_disabled"


def test_with_global_auto_select_a_named_model_is_a_preference_not_an_order():
    snap = auto_snapshot(tagged("coder", "code_generation"), tagged("small", "code_generation", context_window=10),
                         auto_select=True)  # fmt: skip
    body = {**CODE, "model": "small"}
    choice = choose_model(body=body, snapshot=snap, key=key(), health=health())
    assert choice.model.name == "coder", "the named model's window is too small: a hard filter wins"
    assert choice.requested == "small"
    roomy = auto_snapshot(tagged("coder", "code_generation"), tagged("small", "code_generation"), auto_select=True)
    assert choose_model(body=body, snapshot=roomy, key=key(), health=health()).model.name == "small"


def test_no_model_with_a_requirement_is_a_400_naming_it():
    snap = auto_snapshot(tagged("blind", supports_vision=False))
    body = {"model": "auto", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]}  # fmt: skip
    with pytest.raises(InvalidRequest) as exc:
        choose_model(body=body, snapshot=snap, key=key(), health=health())
    assert exc.value.message == "No enabled model supports image input." and exc.value.status_code == 400


def test_no_capacity_anywhere_is_a_503():
    with pytest.raises(NoCapacity):
        choose_model(body=CODE, snapshot=auto_snapshot(tagged("a")), key=key(), health=health(usable=0))


def test_a_failing_model_loses_to_a_healthy_peer():
    snap = auto_snapshot(tagged("a", "code_generation"), tagged("b", "code_generation"))

    def figures(m):
        rate = 0.5 if m.name == "a" else 1.0
        return ModelHealth(model=m.name, instances=1, usable=1, requests=20, success_rate=rate, latency_ms=100.0,
                           in_flight=0)  # fmt: skip

    assert choose_model(body=CODE, snapshot=snap, key=key(), health=figures).model.name == "b"


# --- configured fallbacks of a named model ------------------------------------------------------------------------


def test_a_named_model_carries_its_configured_fallbacks_that_the_key_may_use():
    snap = auto_snapshot(tagged("a", fallbacks=("b", "gone", "c")), tagged("b"), tagged("c"))
    choice = choose_model(body=BODY | {"model": "a"}, snapshot=snap, key=key())
    assert [m.name for m in choice.fallbacks] == ["b", "c"], "a disabled fallback is skipped"
    limited = choose_model(body=BODY | {"model": "a"}, snapshot=snap, key=key(frozenset({"a", "c"})))
    assert [m.name for m in limited.fallbacks] == ["c"]


def test_a_request_too_long_for_the_named_model_goes_to_its_context_window_fallback():
    snap = auto_snapshot(
        tagged("small", context_window=1000, context_window_fallbacks=("medium", "large")),
        tagged("medium", context_window=2000),
        tagged("large", context_window=100_000),
    )
    long_body = {"model": "small", "messages": [{"role": "user", "content": "word " * 6000}]}
    choice = choose_model(body=long_body, snapshot=snap, key=key())
    assert choice.model.name == "large" and choice.requested == "small"
    assert choice.reason.startswith("context window fallback: needs about")
    short = choose_model(body={**long_body, "messages": [{"role": "user", "content": "hi"}]}, snapshot=snap,
                         key=key())  # fmt: skip
    assert short.model.name == "small"
    too_long = {"model": "small", "messages": [{"role": "user", "content": "word " * 200_000}]}
    with pytest.raises(InvalidRequest) as exc:
        choose_model(body=too_long, snapshot=snap, key=key())
    assert exc.value.code == "context_length_exceeded"


# --- feedback: the quality term reads the snapshot's figures for the request's context type -------------------------


def test_feedback_for_the_requests_context_type_raises_a_models_quality():
    snap = dataclasses.replace(auto_snapshot(tagged("a", "code_generation"), tagged("b", "code_generation")),
                               quality={("b", "code_generation"): (30, 30.0), ("a", "math"): (30, 30.0)})  # fmt: skip
    choice = choose_model(body=CODE, snapshot=snap, key=key(), health=health())
    assert choice.model.name == "b", "without the feedback the tie would go to 'a' by name"
    breakdown = {c["model"]: c["breakdown"]["quality"] for c in choice.selection["candidates"]}
    assert breakdown == {"a": 0.5, "b": 0.8}, "a's ratings are for math, not for this request's type"
    assert choice.selection["weights"]["quality"] == 0.05
    assert choice.reason.endswith("best rated")


def test_a_quality_weight_of_zero_turns_the_term_off_per_type_or_everywhere():
    models = (tagged("a", "code_generation"), tagged("b", "code_generation"))
    rated = {("b", "code_generation"): (30, 30.0)}
    off = Weights(quality=0.0)
    for snap in (
        dataclasses.replace(auto_snapshot(*models), quality=rated, selection_weights=off),
        dataclasses.replace(auto_snapshot(*models), quality=rated,
                            type_weights=type_weights({"code_generation": {"quality": 0}}, Weights())),  # fmt: skip
    ):
        assert choose_model(body=CODE, snapshot=snap, key=key(), health=health()).model.name == "a"
