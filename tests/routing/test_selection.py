"""Unit tests for routing.selection: which model serves a request, and why (pure: no database, no clock)."""

import pytest

from routing.errors import ModelNotFound, PermissionDenied
from routing.selection import Choice, choose_model
from routing.snapshot import KeyConfig, ModelConfig, Snapshot

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
