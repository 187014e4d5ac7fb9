"""litellm adapter: the only module that imports litellm, and only when a litellm-served instance is first called.

Known OpenAI parameters are passed to `litellm.acompletion` as keyword arguments; every other field of the client's
body goes in `extra_body`, so a client can never set litellm's own keyword arguments (credentials, callbacks,
`custom_llm_provider`, mock responses, …).
"""

import functools
import json
import os

from routing.adapters import Completion, UpstreamFailure, chunk_from_dict, retry_after_seconds

OPENAI_PARAMS = frozenset(
    {
        "messages", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens",
        "max_completion_tokens", "n", "presence_penalty", "response_format", "seed", "stop", "temperature",
        "top_p", "tools", "tool_choice", "parallel_tool_calls", "user", "functions", "function_call", "modalities",
        "audio", "prediction", "reasoning_effort", "service_tier", "store", "web_search_options",
    }
)  # fmt: skip
# Handled by the gateway itself, never forwarded from the client.
GATEWAY_FIELDS = frozenset({"model", "stream", "stream_options"})


@functools.cache
def _litellm():
    """Import and configure litellm on first use."""
    # Use the price map bundled with the package: never fetch it from the network at import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.drop_params = False
    return litellm


def load():
    """Import litellm now (from a worker thread), so no request waits for the import on the event loop."""
    _litellm()


def _failure(exc):
    """Return the UpstreamFailure for a litellm exception."""
    litellm = _litellm()
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", None) or exc)[:500]
    headers = getattr(getattr(exc, "response", None), "headers", None) or getattr(exc, "litellm_response_headers", None)
    retry_after = retry_after_seconds(headers.get("retry-after")) if headers else None
    if isinstance(exc, litellm.Timeout):
        return UpstreamFailure("timeout", message)
    if isinstance(exc, litellm.APIConnectionError) and status in (None, 500):
        if "JSONDecodeError" in message or "Expecting value" in message or "json" in message.lower():
            return UpstreamFailure("bad_response", "upstream answered with a body that is not JSON")
        return UpstreamFailure("connection", f"cannot reach upstream: {message}")
    if isinstance(exc, (json.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError)):
        return UpstreamFailure("bad_response", "upstream answered with a body that cannot be read")
    if isinstance(status, int) and status >= 400:
        return UpstreamFailure("status", message, status=status, retry_after=retry_after)
    return UpstreamFailure("connection", f"upstream call failed: {exc.__class__.__name__}")


class LiteLLMAdapter:
    """Call any provider litellm supports."""

    def _kwargs(self, instance, body, stream):
        """Return the keyword arguments for litellm.acompletion."""
        kwargs = {k: v for k, v in body.items() if k in OPENAI_PARAMS}
        extra = {k: v for k, v in body.items() if k not in OPENAI_PARAMS and k not in GATEWAY_FIELDS}
        if extra:
            kwargs["extra_body"] = extra
        kwargs.update(model=instance.litellm_model, stream=stream, num_retries=0, max_retries=0)
        if stream:
            kwargs["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if instance.api_base:
            kwargs["api_base"] = instance.api_base
        if instance.api_key:
            kwargs["api_key"] = instance.api_key
        kwargs["timeout"] = instance.timeout
        return kwargs

    async def complete(self, instance, body):
        """Return the chat.completion litellm produced."""
        litellm = _litellm()
        try:
            resp = await litellm.acompletion(**self._kwargs(instance, body, stream=False))
            data = resp.model_dump(exclude_none=True)
        except Exception as exc:
            raise _failure(exc) from exc
        return Completion(body=json.dumps(data, separators=(",", ":")).encode(), data=data)

    async def stream(self, instance, body):
        """Yield the chunks litellm produces, as OpenAI chunk JSON."""
        litellm = _litellm()
        try:
            resp = await litellm.acompletion(**self._kwargs(instance, body, stream=True))
        except Exception as exc:
            raise _failure(exc) from exc
        iterator = resp.__aiter__()
        try:
            while True:
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise _failure(exc) from exc
                yield chunk_from_dict(chunk.model_dump(exclude_none=True))
        finally:
            aclose = getattr(resp, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # closing a broken stream must not mask why it broke
                    pass

    async def probe(self, instance):
        """Send the cheapest real completion (one prompt word, one output token); raise UpstreamFailure on error.

        Unlike the pass-through's model listing, this is a billed call: each probe costs a few tokens.
        """
        litellm = _litellm()
        body = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        try:
            await litellm.acompletion(**self._kwargs(instance, body, stream=False))
        except Exception as exc:
            raise _failure(exc) from exc


adapter = LiteLLMAdapter()
