"""Legacy text completions (`POST /v1/completions`): a chat request's routing, failover, log and errors, for the
models whose upstream speaks the legacy API itself.

litellm has no faithful translation of `prompt` to a chat upstream, so only OpenAI-compatible pass-through instances
(`adapters.uses_passthrough`) serve it, their body forwarded as-is to `{api_base}/completions`; a model none of whose
instances is one answers 400 saying to use chat completions, and a model with both kinds is served by its
pass-through instances only. Everything else is the chat path's (`services.ChatRequest`): the named model (an alias
followed, its fallbacks tried), instance choice, breakers, retries, usage, cost and one RequestLog row with endpoint
"completions". Automatic selection and experiments analyse and compare chat messages, so a legacy request is neither
selected nor enrolled: it is served by the model it names.
"""

import dataclasses

from routing import adapters, selection
from routing.adapters import openai_compat
from routing.errors import InvalidRequest
from routing.services import ChatRequest, wrong_endpoint
from routing.validation import validate_completion_body


def passthrough_only(model):
    """Return model with only its pass-through instances (itself if all are), or None if it has none to serve with."""
    kept = tuple(i for i in model.instances if adapters.uses_passthrough(i))
    if len(kept) == len(model.instances):
        return model
    return dataclasses.replace(model, instances=kept) if kept else None


class CompletionRequest(ChatRequest):
    """One authenticated legacy completion request, from model choice to its RequestLog row."""

    def __init__(self, **kwargs):
        super().__init__(endpoint="completions", **kwargs)

    def resolve_model(self, body):
        """Validate the body, take the model it names and return that ModelConfig, reduced to pass-through instances.

        Raise the matching GatewayError when the body is invalid, names a model this key cannot have, or names a model
        no pass-through instance serves.
        """
        self.body = body
        if isinstance(body, dict):
            self.stream = body.get("stream") is True
        validate_completion_body(body)
        if body["model"] == selection.AUTO:
            raise InvalidRequest(
                "Automatic model selection analyses chat messages: use /v1/chat/completions, or name a model.",
                param="model",
                code="completions_unsupported",
            )
        choice = self.choose_named(body)
        if choice.model.embedding:
            raise wrong_endpoint(choice.model)
        model = choice.model if not choice.model.instances else passthrough_only(choice.model)
        if model is None:
            raise InvalidRequest(
                f"The model '{choice.model.name}' is served through litellm, which has no legacy completions "
                "endpoint: use /v1/chat/completions.",
                param="model",
                code="completions_unsupported",
            )
        if len(model.instances) < len(choice.model.instances):
            self.decision["model"]["not_passthrough"] = sorted(
                {i.id for i in choice.model.instances} - {i.id for i in model.instances}
            )
        self.model = model
        fallbacks = (f for f in choice.fallbacks if not f.embedding)
        self.fallbacks = [f for f in map(passthrough_only, fallbacks) if f is not None and f.instances]
        return model

    def upstream_complete(self, instance):
        """Return the awaitable call of `POST {api_base}/completions` on instance."""
        return openai_compat.legacy_complete(instance, self.body)

    def upstream_stream(self, instance):
        """Return the chunks of a streaming `POST {api_base}/completions` on instance."""
        return openai_compat.legacy_stream(instance, self.body)
