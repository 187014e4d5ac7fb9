"""Model choice: which configured model serves a chat request, and why.

`choose_model` is pure: it reads the request, the snapshot and the key it is given and nothing else (no clock, no
randomness, no I/O), so equal inputs give equal choices and it is tested without fixtures. Today it serves the model
the client names; automatic selection and experiments extend it here, taking what they need (the routing state's
per-model view, the time, a random source) as arguments and saying why in the `Choice` they return.
"""

import dataclasses

from routing.errors import ModelNotFound, PermissionDenied
from routing.snapshot import ModelConfig


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    """The model chosen for a request, the name the client asked for, and why (as the request's decision records)."""

    model: ModelConfig
    requested: str
    reason: str

    @property
    def decision(self):
        """Return the `model` entry of the request's decision record."""
        return {"requested": self.requested, "served": self.model.name, "reason": self.reason}


def choose_model(*, body, snapshot, key):
    """Return the Choice of model for a validated chat request body made with key.

    Raise ModelNotFound when the model it names is not enabled, PermissionDenied when the key may not use it.
    """
    name = body["model"]
    model = snapshot.models.get(name)
    if model is None:
        raise ModelNotFound(f"The model '{name}' does not exist or is not enabled.", param="model")
    if not key.may_use(name):
        raise PermissionDenied(f"This API key may not use the model '{name}'.", code="model_not_allowed")
    return Choice(model=model, requested=name, reason="requested by the client")
