"""litellm adapter: the only module that imports litellm, and only when a litellm-served instance is first called.

Known OpenAI parameters are passed to `litellm.acompletion` as keyword arguments; every other field of the client's
body goes in `extra_body`, so a client can never set litellm's own keyword arguments (credentials, callbacks,
`custom_llm_provider`, mock responses, …). Those come only from the instance: its provider parameters
(`InstanceConfig.params`: api_version, aws_*, vertex_*, extra_headers, …) are passed as given, and win over the
client's fields.

Upstream redirects are never followed: a 307 would replay the request, upstream key included, to whatever host the
upstream names. litellm's own HTTP clients follow them, so it is given clients that do not (see `_litellm`), and a
3xx answer is an upstream failure like a 5xx.
"""

import asyncio
import base64
import functools
import json
import os
import struct
import weakref

import httpx

from routing.adapters import Completion, UpstreamFailure, chunk_from_dict, embeddings_data, retry_after_seconds

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
# The OpenAI embeddings parameters litellm.aembedding takes as keyword arguments; `encoding_format` is the gateway's.
EMBEDDING_PARAMS = frozenset({"input", "dimensions", "user"})
EMBEDDING_GATEWAY_FIELDS = frozenset({"model", "encoding_format", "stream"})
# Providers litellm calls through its own AsyncHTTPHandler, which a call takes as `client=` (read from litellm's
# completion dispatch, and checked against a redirecting server). Most others, `openai/` first, go through the openai
# SDK, whose HTTP client litellm takes from `litellm.aclient_session`; they must not get an AsyncHTTPHandler, which
# they would use as their SDK client. A provider in neither group keeps litellm's own clients.
HTTP_HANDLER_PROVIDERS = frozenset(
    {
        "anthropic", "bedrock", "deepseek", "fireworks_ai", "gemini", "groq", "hosted_vllm", "mistral", "ollama_chat",
        "openrouter", "together_ai", "xai",
    }
)  # fmt: skip


class _PoolPerLoop(httpx.AsyncBaseTransport):
    """An httpx transport with one connection pool per event loop.

    Pooled connections cannot move between loops, and one process may run several: a gateway worker serves on one,
    while every probe round runs on a fresh one.
    """

    def __init__(self):
        self._pools = weakref.WeakKeyDictionary()  # event loop -> httpx.AsyncHTTPTransport

    async def handle_async_request(self, request):
        """Send the request over the running loop's pool."""
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=100, keepalive_expiry=60)
            pool = self._pools[loop] = httpx.AsyncHTTPTransport(limits=limits)
        return await pool.handle_async_request(request)

    async def aclose(self):
        """Close the running loop's pool."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.aclose()


@functools.cache
def _litellm():
    """Import and configure litellm on first use."""
    # Use the price map bundled with the package: never fetch it from the network at import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.drop_params = False
    # Like the pass-through: no redirects, and no proxies taken from the environment.
    litellm.aclient_session = httpx.AsyncClient(transport=_transport(), follow_redirects=False, trust_env=False)
    return litellm


@functools.cache
def _transport():
    """Return the transport every litellm call goes over."""
    return _PoolPerLoop()


@functools.cache
def _http_handler():
    """Return the AsyncHTTPHandler given to the providers litellm calls through one."""
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

    return AsyncHTTPHandler(transport=_transport(), follow_redirects=False)


@functools.cache
def _provider(model, api_base, custom_llm_provider=None):
    """Return the provider litellm calls for a model name, or None if litellm does not know it."""
    litellm = _litellm()
    try:
        return litellm.get_llm_provider(model=model, api_base=api_base, custom_llm_provider=custom_llm_provider)[1]
    except litellm.BadRequestError:  # acompletion will say so in its own words
        return None


def load():
    """Import litellm now (from a worker thread), so no request waits for the import on the event loop."""
    _litellm()


@functools.cache
def _upstream_errors():
    """Return the exception classes that mean an upstream call failed; anything else is a bug, and propagates.

    litellm raises its own exception classes, which all derive from the openai SDK's `OpenAIError`, for every call
    that fails upstream; a body that is not JSON may also surface as a JSONDecodeError, and a broken connection as
    an httpx transport error.
    """
    import openai

    return (openai.OpenAIError, json.JSONDecodeError, httpx.TransportError)


def _failure(exc):
    """Return the UpstreamFailure for an upstream error litellm raised."""
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
    if isinstance(exc, json.JSONDecodeError):
        return UpstreamFailure("bad_response", "upstream answered with a body that cannot be read")
    if isinstance(status, int) and status >= 300:  # a 3xx too: redirects are not followed
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
        # The gateway retries and fails over itself; an instance's own max_retries (its provider parameters) is the
        # one exception, passed on as configured.
        kwargs.update(max_retries=0)
        kwargs.update(instance.params)
        kwargs.update(model=instance.litellm_model, stream=stream, num_retries=0)
        if stream:
            kwargs["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if instance.api_base:
            kwargs["api_base"] = instance.api_base
        if instance.api_key:
            kwargs["api_key"] = instance.api_key
        kwargs["timeout"] = instance.timeout
        provider = _provider(instance.litellm_model, instance.api_base, instance.params.get("custom_llm_provider"))
        if provider in HTTP_HANDLER_PROVIDERS:
            kwargs["client"] = _http_handler()
        return kwargs

    async def complete(self, instance, body):
        """Return the chat.completion litellm produced."""
        litellm = _litellm()
        try:
            resp = await litellm.acompletion(**self._kwargs(instance, body, stream=False))
        except _upstream_errors() as exc:
            raise _failure(exc) from exc
        data = resp.model_dump(exclude_none=True)
        return Completion(body=json.dumps(data, separators=(",", ":")).encode(), data=data)

    async def stream(self, instance, body):
        """Yield the chunks litellm produces, as OpenAI chunk JSON."""
        litellm = _litellm()
        try:
            resp = await litellm.acompletion(**self._kwargs(instance, body, stream=True))
        except _upstream_errors() as exc:
            raise _failure(exc) from exc
        iterator = resp.__aiter__()
        try:
            while True:
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                except _upstream_errors() as exc:
                    raise _failure(exc) from exc
                yield chunk_from_dict(chunk.model_dump(exclude_none=True))
        finally:
            aclose = getattr(resp, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # closing a broken stream must not mask why it broke
                    pass

    def _embedding_kwargs(self, instance, body):
        """Return the keyword arguments for litellm.aembedding: always floats (see `embed`)."""
        kwargs = {k: v for k, v in body.items() if k in EMBEDDING_PARAMS}
        extra = {k: v for k, v in body.items() if k not in EMBEDDING_PARAMS and k not in EMBEDDING_GATEWAY_FIELDS}
        if extra:
            # litellm passes unknown keyword arguments on to the provider as optional parameters.
            kwargs["extra_body"] = extra
        kwargs.update(max_retries=0)
        kwargs.update(instance.params)
        kwargs.update(model=instance.litellm_model, num_retries=0, timeout=instance.timeout)
        if instance.api_base:
            kwargs["api_base"] = instance.api_base
        if instance.api_key:
            kwargs["api_key"] = instance.api_key
        return kwargs

    async def embed(self, instance, body):
        """Return the embeddings list litellm produced, in the encoding the client asked for.

        Providers other than OpenAI know no `encoding_format`, so litellm is always asked for floats and the gateway
        encodes them as base64 (little-endian float32, as OpenAI does) when the client asked for that.
        """
        litellm = _litellm()
        try:
            resp = await litellm.aembedding(**self._embedding_kwargs(instance, body))
        except _upstream_errors() as exc:
            raise _failure(exc) from exc
        dumped = resp.model_dump(exclude_none=True)
        if not embeddings_data(dumped):
            raise UpstreamFailure("bad_response", "upstream answered without embeddings")
        # OpenAI's shape, as the pass-through relays it: litellm adds completion_tokens (0) and fields of its own.
        usage = dumped.get("usage") or {}
        data = {
            "object": "list",
            "data": [{"object": "embedding", "index": i.get("index", n), "embedding": i["embedding"]}
                     for n, i in enumerate(dumped["data"])],
            "model": dumped.get("model") or instance.upstream_model,
            "usage": {name: usage[name] for name in ("prompt_tokens", "total_tokens") if name in usage},
        }  # fmt: skip
        if body.get("encoding_format") == "base64":
            for item in data["data"]:
                if isinstance(item["embedding"], list):
                    vector = item["embedding"]
                    item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return Completion(body=json.dumps(data, separators=(",", ":")).encode(), data=data)

    async def probe(self, instance):
        """Send the cheapest real completion (one prompt word, one output token; an embedding of one word for an
        embedding model); raise UpstreamFailure on error.

        Unlike the pass-through's model listing, this is a billed call: each probe costs a few tokens.
        """
        litellm = _litellm()
        if instance.embedding:
            try:
                await litellm.aembedding(**self._embedding_kwargs(instance, {"input": "ping"}))
            except _upstream_errors() as exc:
                raise _failure(exc) from exc
            return
        body = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        try:
            await litellm.acompletion(**self._kwargs(instance, body, stream=False))
        except _upstream_errors() as exc:
            raise _failure(exc) from exc


adapter = LiteLLMAdapter()
