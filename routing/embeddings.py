"""Embeddings (`POST /v1/embeddings`): a chat request's routing, failover, log and errors, for embedding models.

A model serves embeddings when its `mode` is embedding (LiteLLM configs mark such entries `model_info.mode:
embedding`); it is then never chosen for chat, and a chat model is never chosen here. The body is OpenAI's: `input` is
a string or a batch (an array of strings, or of token-id arrays), answered with one embedding per item in input
order. Pass-through instances get the body as-is at `{api_base}/embeddings`; litellm-served ones through
`litellm.aembedding` (`adapters.embed`). Everything else is the chat path's (`services.ChatRequest`): the named model
(an alias followed, its fallbacks tried), instance choice, breakers, retries, usage, cost and one RequestLog row with
endpoint "embeddings". Automatic selection and experiments compare chat answers, so an embeddings request is served by
the model it names.
"""

from routing import adapters, pricing, selection
from routing.errors import InvalidRequest
from routing.services import ChatRequest, wrong_endpoint
from routing.validation import validate_embeddings_body


class EmbeddingRequest(ChatRequest):
    """One authenticated embeddings request, from model choice to its RequestLog row."""

    def __init__(self, **kwargs):
        super().__init__(endpoint="embeddings", **kwargs)

    def resolve_model(self, body):
        """Validate the body, take the embedding model it names and return that ModelConfig.

        Raise the matching GatewayError when the body is invalid, names a model this key cannot have, or names a chat
        model.
        """
        self.body = body
        validate_embeddings_body(body)
        if body["model"] == selection.AUTO:
            raise InvalidRequest(
                "Automatic model selection chooses chat models: name an embedding model.",
                param="model",
                code="wrong_endpoint",
            )
        choice = self.choose_named(body)
        if not choice.model.embedding:
            raise wrong_endpoint(choice.model)
        self.model = choice.model
        self.fallbacks = [f for f in choice.fallbacks if f.embedding]
        return self.model

    def upstream_complete(self, instance):
        """Return the awaitable embeddings call of one attempt."""
        return adapters.embed(instance, self.body)

    def cost(self, prompt_tokens, completion_tokens):
        """Return the USD cost of the embedded tokens: only input is priced (a missing output price is no gap)."""
        instance = self.instance
        if instance is None:
            return None
        output_price = instance.output_cost_per_token
        output_price = 0 if output_price is None else output_price
        return pricing.cost(prompt_tokens, None, instance.input_cost_per_token, output_price)
