"""The provider-adapter seam: every upstream call goes through `for_instance(instance)`.

Two adapters implement it and pass the same conformance tests:
- `openai_compat.OpenAICompatAdapter` forwards the request body to OpenAI-compatible upstreams over pooled aiohttp
  connections and relays stream chunks as they arrive;
- `litellm_sdk.LiteLLMAdapter` calls `litellm.acompletion` for every other provider (Anthropic, Gemini, Bedrock, …).

An adapter takes the client's body and an `InstanceConfig`, and either returns a `Completion`, yields
`StreamChunk`s, or raises `UpstreamFailure`. Timeouts are applied by the caller, the same way for both.
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
    """A non-streaming answer: the bytes to send the client and the parsed body (for usage)."""

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
