"""The provider-adapter seam: every upstream call goes through `for_instance(instance)`.

Two adapters implement it and pass the same conformance tests:
- `openai_compat.OpenAICompatAdapter` forwards the request body to OpenAI-compatible upstreams over pooled aiohttp
  connections and relays stream chunks as they arrive;
- `litellm_sdk.LiteLLMAdapter` calls `litellm.acompletion` (`litellm.aembedding`) for every other provider (Anthropic,
  Gemini, Bedrock, …).

An adapter takes the client's body and an `InstanceConfig`, and either returns a `Completion` (a chat completion, or
the embeddings list of `embed`), yields `StreamChunk`s, or raises `UpstreamFailure`. Timeouts are applied by the
caller, the same way for both.

Callers go through `complete`, `stream`, `embed` and `probe` below, never an adapter directly: they mask the instance's
secrets in every failure that leaves the seam. Upstreams echo the key they refused ("Incorrect API key provided:
sk-…"), and a failure's message reaches the client, the SSE error event, the request log, probe results and logs.
"""

import dataclasses
import json

# litellm provider kinds that speak the OpenAI chat API natively, with their public endpoints. A Provider of one
# of these kinds is created OpenAI-compatible (pass-through) by default; admins can switch it to litellm.
OPENAI_COMPATIBLE_KINDS = {
    "openai": "https://api.openai.com/v1",
    "groq": "https://api.groq.com/openai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "together_ai": "https://api.together.xyz/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
    "xai": "https://api.x.ai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "hosted_vllm": None,
    "openai_compatible": None,
}


# Upstream statuses that mean the request itself was refused (the client's fault), not that the upstream is unwell.
CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})


class UpstreamFailure(Exception):
    """An upstream call failed; `kind` is one of timeout, connection, status, bad_response."""

    def __init__(self, kind, message, *, status=None, retry_after=None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after


@dataclasses.dataclass(slots=True)
class Completion:
    """A non-streaming answer (a chat completion or an embeddings list): the bytes to send the client and the parsed
    body (for usage)."""

    body: bytes
    data: dict

    @property
    def usage(self):
        """Return the usage object, or None."""
        return self.data.get("usage")


@dataclasses.dataclass(slots=True)
class StreamChunk:
    """One `chat.completion.chunk` as JSON bytes, with the facts the gateway taps from it."""

    data: bytes
    usage: dict | None = None
    has_choices: bool = True


def chunk_from_dict(chunk):
    """Return a StreamChunk for a parsed chunk dict."""
    return StreamChunk(
        data=json.dumps(chunk, separators=(",", ":")).encode(),
        usage=chunk.get("usage") or None,
        has_choices=bool(chunk.get("choices")),
    )


def retry_after_seconds(value):
    """Return a Retry-After header value in seconds, or None if absent or not a number of seconds."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary text, and are no secret anyway


def mask(text, instance):
    """Return text with every secret of the instance replaced by `***`."""
    for secret in instance.secrets():
        if secret and len(secret) >= MIN_SECRET_LENGTH and secret in text:
            text = text.replace(secret, MASK)
    return text


def _masked(failure, instance):
    """Return the failure with the instance's secrets masked, and without the exception chain that may hold them."""
    failure.message = mask(failure.message, instance)
    failure.args = (failure.message,)
    failure.__cause__ = None
    failure.__suppress_context__ = True
    return failure


async def complete(instance, body):
    """Return the instance's Completion for body; raise UpstreamFailure (secrets masked) on failure."""
    try:
        return await for_instance(instance).complete(instance, body)
    except UpstreamFailure as exc:
        raise _masked(exc, instance) from None


async def stream(instance, body):
    """Yield the instance's StreamChunks for body; raise UpstreamFailure (secrets masked) on failure."""
    chunks = for_instance(instance).stream(instance, body)
    try:
        async for chunk in chunks:
            yield chunk
    except UpstreamFailure as exc:
        raise _masked(exc, instance) from None
    finally:
        await chunks.aclose()


async def embed(instance, body):
    """Return the instance's embeddings (a Completion of OpenAI's `list` shape) for body; raise UpstreamFailure
    (secrets masked) on failure."""
    try:
        return await for_instance(instance).embed(instance, body)
    except UpstreamFailure as exc:
        raise _masked(exc, instance) from None


def embeddings_data(data):
    """Return whether a parsed answer is an embeddings list: `data` holding one object with an `embedding` each."""
    items = data.get("data") if isinstance(data, dict) else None
    return isinstance(items, list) and bool(items) and all(isinstance(i, dict) and "embedding" in i for i in items)


async def probe(instance):
    """Check that the instance answers; raise UpstreamFailure (secrets masked) otherwise."""
    try:
        await for_instance(instance).probe(instance)
    except UpstreamFailure as exc:
        raise _masked(exc, instance) from None


def uses_passthrough(instance):
    """Return whether the instance is served by the OpenAI-compatible pass-through."""
    return instance.openai_compatible


def for_instance(instance):
    """Return the adapter that serves this instance."""
    if uses_passthrough(instance):
        from routing.adapters.openai_compat import adapter
    else:
        from routing.adapters.litellm_sdk import adapter
    return adapter


def prepare(snapshot):
    """Import what the snapshot's instances need, off the event loop (litellm takes seconds to import)."""
    if any(not uses_passthrough(i) for m in snapshot.models.values() for i in m.instances):
        from routing.adapters import litellm_sdk

        litellm_sdk.load()
