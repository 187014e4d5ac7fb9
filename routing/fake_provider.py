"""Fake OpenAI-compatible chat provider served over real HTTP on 127.0.0.1.

Used by ``make run``, the test suite and the benchmarks, so the request path is
kept lean: aiohttp, no access log, pre-encoded SSE events, no deep copies.
It must not import Django; run it with ``python -m routing.fake_provider``.

Endpoints
    POST /v1/chat/completions (also /chat/completions)
        Answers ``chat.completion`` objects, or ``chat.completion.chunk`` SSE
        events when ``stream`` is true (a usage chunk with ``choices: []`` is
        added when ``stream_options.include_usage`` is true).
    POST /v1/completions (also /completions)
        Legacy text completions: ``text_completion`` objects with one choice
        per prompt (or ``text_completion`` SSE chunks when ``stream`` is true,
        plus a usage chunk with ``choices: []`` when asked for), the same
        deterministic text, honouring ``max_tokens``, ``chunks``, ``status``,
        ``latency_ms`` and ``chunk_delay_ms``; ``prompt_tokens`` counts the
        words of string prompts and the ids of token prompts.
    POST /v1/embeddings (also /embeddings)
        Deterministic embeddings: one unit vector per input (a string, or a
        list of token ids), seeded by the input alone, of ``dimensions``
        (default 16) float32 values, as floats or little-endian base64 per
        ``encoding_format``; ``prompt_tokens`` counts words (or token ids).
        The chat fault knobs apply, except the stream-only ones.
    GET  /v1/models, GET /health
    GET|POST /_fake/config     Read or change the knobs for all later requests;
                               a null value resets that knob to its CLI default.
    GET|DELETE /_fake/requests The last 1000 chat requests (DELETE resets the log
                               and the counters).
    GET /_fake/stats           ``{"count", "in_flight", "cancelled"}``.

Deterministic output
    The completion is ``chunks`` words, each emitted as ``"fake<k> "`` (note the
    trailing space), so the text is ``"fake0 fake1 ... fake<n-1> "``. When
    ``max_tokens`` (or ``max_completion_tokens``) is smaller, that many words are
    produced and ``finish_reason`` is ``"length"``. ``completion_tokens`` is the
    word count; ``prompt_tokens`` is the number of whitespace-separated words in
    all message contents (text parts only for list contents) plus 1 per message.

Fault injection (runtime config, overridable per request by headers)
    ``x-fake-status``, ``x-fake-latency-ms``, ``x-fake-chunk-delay-ms``,
    ``x-fake-chunks``, ``x-fake-retry-after`` and ``x-fake-fault`` with:
    ``hang`` (send nothing until the client leaves), ``disconnect`` (drop the
    connection without a response), ``stall`` (streams: role chunk plus two
    content chunks, then hang; non-streams: headers plus half the body, then
    hang), ``garbage`` (200 with a non-JSON body, or a non-JSON SSE event) and
    ``midstream_error`` (streams: role chunk plus two content chunks, then an
    SSE ``data: {"error": ...}`` event and the end of the stream).
    Precedence: latency first, then ``hang``/``disconnect``, then
    ``redirect_to``, then error status (explicit status, else ``error_rate``),
    then ``stall``/``garbage``/``midstream_error``.

Hostile upstreams (runtime config only)
    ``echo_key`` (bool): every error message repeats the ``Authorization``
    header it received, as careless upstreams do. ``usage`` (object): fields
    that replace the computed usage, e.g. ``{"prompt_tokens": -5}``.
    ``redirect_to`` (URL): answer chat requests with ``307`` to that URL.

Misconfigured deployments (runtime config only)
    ``reject``: ``invalid_model`` answers every chat request with 400 "Invalid
    model name passed in model=<model>" (as a LiteLLM proxy does for a model it
    does not serve); ``invalid_api_key`` answers chat requests and
    ``/v1/models`` with 401 "Incorrect API key provided" (as OpenAI does). Both
    in OpenAI's error shape; an explicit ``status`` knob replaces the status.
    ``usage_chunk`` says where a stream's usage goes when
    ``stream_options.include_usage`` is true: ``empty_choices`` (default, as
    OpenAI: a last chunk with ``choices: []``), ``empty_delta`` (as LiteLLM-style
    upstreams: a last chunk whose only choice has an empty delta and no
    finish_reason) or ``finish`` (on the chunk that carries finish_reason).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import dataclasses
import hashlib
import json
import math
import random
import signal
import struct
import sys
import time
import uuid
from typing import Any

from aiohttp import web

DEFAULT_HOST = "127.0.0.1"
FAULTS = ("hang", "stall", "garbage", "disconnect", "midstream_error")
# reject mode -> (default status, OpenAI error code, message template).
REJECTIONS = {
    "invalid_model": (400, "model_not_found", "Invalid model name passed in model={model}."),
    "invalid_api_key": (401, "invalid_api_key", "Incorrect API key provided."),
}
# Length of the fake embeddings when a request does not ask for `dimensions`.
EMBEDDING_DIMENSIONS = 16
USAGE_CHUNKS = ("empty_choices", "empty_delta", "finish")
KNOBS = (
    "status", "latency_ms", "chunk_delay_ms", "chunks", "error_rate", "fault", "retry_after", "echo_key", "usage",
    "redirect_to", "reject", "usage_chunk",
)  # fmt: skip
MAX_RECORDS = 1000

# Request header -> knob it overrides for that request only.
_HEADER_KNOBS = {
    "x-fake-status": "status",
    "x-fake-latency-ms": "latency_ms",
    "x-fake-chunk-delay-ms": "chunk_delay_ms",
    "x-fake-chunks": "chunks",
    "x-fake-fault": "fault",
    "x-fake-retry-after": "retry_after",
}

# Status -> (OpenAI error type, error code, message).
_ERRORS = {
    400: ("invalid_request_error", "invalid_request_error", "Fake provider rejected the request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", "permission_denied", "You are not allowed to use this model."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    408: ("timeout_error", "timeout", "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflicting request."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable request."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", "server_error", "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded."),
    504: ("server_error", "timeout", "Gateway timeout."),
}

_GARBAGE_BODY = b'{"id": "chatcmpl-fake-garbage", <html>this is not json'
_GARBAGE_EVENT = b"data: {this is not json at all\n\n"
_DONE_EVENT = b"data: [DONE]\n\n"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_JSON = "application/json"

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional
    uvloop = None


@dataclasses.dataclass
class FakeConfig:
    """Startup options of the fake provider; the knob fields are the runtime defaults."""

    host: str = DEFAULT_HOST
    port: int = 0
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    chunks: int = 20
    error_rate: float = 0.0
    status: int | None = None
    fault: str | None = None
    retry_after: float | None = None
    echo_key: bool = False
    usage: dict | None = None
    redirect_to: str | None = None
    reject: str | None = None
    usage_chunk: str = "empty_choices"
    seed: int = 0
    models: tuple[str, ...] = ("fake-model",)


class InvalidKnob(ValueError):
    """A knob value that the fake provider cannot honour."""


def _number(value: Any, name: str, *, integer: bool = False, low: float = 0, high: float | None = None):
    """Coerce ``value`` (number or numeric string) into a bounded number."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidKnob(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidKnob(f"{name} must be a number, got {value!r}")
    if integer:
        if value != int(value):
            raise InvalidKnob(f"{name} must be an integer, got {value!r}")
        value = int(value)
    if value < low or (high is not None and value > high):
        raise InvalidKnob(f"{name} must be in [{low}, {high if high is not None else 'inf'}], got {value!r}")
    return value


def validate_knob(name: str, value: Any) -> Any:
    """Return the normalised value of knob ``name`` or raise InvalidKnob."""
    if value is None:
        return None
    if name == "status":
        return _number(value, name, integer=True, low=200, high=599)
    if name in ("latency_ms", "chunk_delay_ms", "retry_after"):
        return _number(value, name)
    if name == "chunks":
        return _number(value, name, integer=True)
    if name == "error_rate":
        return _number(value, name, high=1)
    if name == "echo_key":
        if not isinstance(value, bool):
            raise InvalidKnob(f"echo_key must be a boolean, got {value!r}")
        return value
    if name == "usage":
        if not isinstance(value, dict):
            raise InvalidKnob(f"usage must be an object, got {value!r}")
        return value
    if name == "redirect_to":
        if not isinstance(value, str) or not value.startswith("http://"):
            raise InvalidKnob(f"redirect_to must be an http:// URL, got {value!r}")
        return value
    if name in ("reject", "usage_chunk"):
        choices = REJECTIONS if name == "reject" else USAGE_CHUNKS
        if value not in choices:
            raise InvalidKnob(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value
    if name == "fault":
        value = str(value).strip().lower()
        if value in ("", "none"):
            return None
        if value not in FAULTS:
            raise InvalidKnob(f"fault must be one of {', '.join(FAULTS)}, got {value!r}")
        return value
    raise InvalidKnob(f"unknown knob {name!r}")


def count_prompt_tokens(messages: list) -> int:
    """Count whitespace-separated words in all message texts plus one per message."""
    total = 0
    for message in messages:
        total += 1
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"].split())
    return total


def completion_text(words: int) -> str:
    """Return the deterministic completion text made of ``words`` words."""
    return "".join([f"fake{k} " for k in range(words)])


def error_body(status: int, message: str | None = None, param: str | None = None, code: str | None = None) -> dict:
    """Return an OpenAI-shaped error body for ``status``."""
    default = (
        ("server_error", "server_error", "Fake provider error.")
        if status >= 500
        else ("invalid_request_error", "invalid_request_error", "Fake provider error.")
    )
    kind, default_code, default_message = _ERRORS.get(status, default)
    return {
        "error": {"message": message or default_message, "type": kind, "param": param, "code": code or default_code}
    }


def embedding_inputs(value: Any) -> list | None:
    """Return the items of an embeddings `input` (strings, or lists of token ids), or None if it is not one."""
    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return [value]  # one input of token ids
    if all(isinstance(item, str) and item for item in value):
        return value
    if all(isinstance(item, list) and item and all(isinstance(t, int) for t in item) for item in value):
        return value
    return None


def embedding_vector(item: str | list, dimensions: int) -> list[float]:
    """Return the fake embedding of one input: a unit vector that depends only on the input and the dimensions."""
    seed = hashlib.blake2b(json.dumps(item).encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(seed, "big"))
    raw = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    # Rounded through float32, so the float and base64 encodings carry the same numbers.
    return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in raw]


def _format_seconds(value: float) -> str:
    """Format a Retry-After value without a needless ".0"."""
    return str(int(value)) if value == int(value) else str(value)


def _echoed(message: str, authorization: str) -> str:
    """Return message with the Authorization header it was sent repeated in it, as careless upstreams do."""
    return f"{message} (you sent: {authorization})"


async def _forever() -> None:
    """Wait until cancelled (the client went away or the server stops)."""
    await asyncio.Event().wait()


class FakeProvider:
    """State and request handlers of one fake provider instance."""

    def __init__(self, config: FakeConfig):
        """Remember the CLI defaults and start with them as the runtime knobs."""
        self.config = config
        self.defaults = {name: getattr(config, name) for name in KNOBS}
        self.knobs = dict(self.defaults)
        self.rng = random.Random(config.seed)
        self.records: collections.deque = collections.deque(maxlen=MAX_RECORDS)
        self.count = 0
        self.in_flight = 0
        self.cancelled = 0
        self.port = config.port
        self.port_header = str(config.port)

    def set_port(self, port: int) -> None:
        """Record the port actually bound, for the x-fake-provider-port header."""
        self.port = port
        self.port_header = str(port)

    # -- helpers ---------------------------------------------------------

    def _error(
        self,
        status: int,
        message: str | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        echo: str | None = None,
        code: str | None = None,
    ) -> web.Response:
        """Build an OpenAI-shaped error response, with Retry-After when relevant (and the key echoed if asked)."""
        if echo:
            message = _echoed(message or error_body(status)["error"]["message"], echo)
        headers = {}
        if retry_after is None and status == 429:
            retry_after = 1
        if retry_after is not None:
            headers["Retry-After"] = _format_seconds(retry_after)
        return web.Response(
            status=status,
            body=json.dumps(error_body(status, message, param, code)).encode(),
            content_type=_JSON,
            headers=headers,
        )

    def _rejection(self, knobs: dict, model: Any, echo: str | None = None) -> web.Response:
        """Refuse the request the way an upstream refuses a deployment it is misconfigured for."""
        default_status, code, template = REJECTIONS[knobs["reject"]]
        status = knobs["status"] if knobs["status"] not in (None, 200) else default_status
        return self._error(status, template.format(model=model), echo=echo, code=code)

    def _record(self, request: web.Request, body: Any) -> dict:
        """Log the request and return the per-request knob overrides found in its headers."""
        headers = {}
        overrides = {}
        for name, value in request.headers.items():
            name = name.lower()
            if name.startswith("x-") or name == "authorization":
                headers[name] = value
                knob = _HEADER_KNOBS.get(name)
                if knob is not None:
                    overrides[knob] = value
        self.records.append({"headers": headers, "body": body, "path": request.path})
        return overrides

    async def _faults(self, request, knobs: dict, body: dict, echo: str | None, failing: bool):
        """Apply latency, then hang/disconnect, redirect, rejection and error status; return the error, or None."""
        if knobs["latency_ms"]:
            await asyncio.sleep(knobs["latency_ms"] / 1000)
        fault = knobs["fault"]
        if fault == "hang":
            await _forever()
        if fault == "disconnect":
            request["fake_dropped"] = True
            transport = request.transport
            if transport is not None:
                transport.abort()
            # Losing the connection cancels this handler, which aiohttp handles silently.
            await _forever()
        if knobs["redirect_to"]:
            raise web.HTTPTemporaryRedirect(knobs["redirect_to"])
        status = knobs["status"]
        if knobs["reject"]:
            return self._rejection(knobs, body.get("model"), echo)
        if status is not None and status != 200:
            return self._error(status, retry_after=knobs["retry_after"], echo=echo)
        if failing:
            return self._error(500, retry_after=knobs["retry_after"], echo=echo)
        return None

    # -- chat ------------------------------------------------------------

    async def _counted(self, handler, request: web.Request) -> web.StreamResponse:
        """Return handler(request), counting the request, those in flight and those the client left."""
        self.count += 1
        self.in_flight += 1
        try:
            return await handler(request)
        except (asyncio.CancelledError, ConnectionResetError):
            if not request.get("fake_dropped"):
                self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def _read(self, request: web.Request) -> tuple[Any, dict]:
        """Record the request; return (its JSON body or None, the knobs with its header overrides applied).

        Raise InvalidKnob when a header's value is not one the knob can take.
        """
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        overrides = self._record(request, body)
        knobs = self.knobs
        if overrides:
            knobs = dict(knobs)
            for name, value in overrides.items():
                knobs[name] = validate_knob(name, value)
        return body, knobs

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """Answer a chat completion request, honouring the configured faults."""
        return await self._counted(self._chat, request)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        """Validate, record and answer one chat request."""
        try:
            body, knobs = await self._read(request)
        except InvalidKnob as exc:
            return self._error(400, f"Invalid fake header: {exc}")
        # Draw on arrival so the error sequence only depends on request order.
        failing = knobs["error_rate"] > 0 and self.rng.random() < knobs["error_rate"]

        echo = request.headers.get("Authorization", "") if knobs["echo_key"] else None
        if not isinstance(body, dict):
            return self._error(400, "We could not parse the JSON body of your request.", echo=echo)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "'messages' must be a non-empty array.", param="messages", echo=echo)
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            return self._error(400, "max_tokens must be a positive integer.", param="max_tokens", echo=echo)

        refused = await self._faults(request, knobs, body, echo, failing)
        if refused is not None:
            return refused
        fault = knobs["fault"]
        words = knobs["chunks"]
        finish_reason = "stop"
        if limit is not None and limit < words:
            words, finish_reason = limit, "length"
        model = body.get("model") or self.config.models[0]
        prompt_tokens = count_prompt_tokens(messages)
        if body.get("stream"):
            return await self._stream(request, body, model, words, finish_reason, prompt_tokens, knobs, echo)

        if fault == "garbage":
            return web.Response(body=_GARBAGE_BODY, content_type=_JSON)
        text = completion_text(words)
        payload = json.dumps(
            {
                "id": f"chatcmpl-fake-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": words,
                    "total_tokens": prompt_tokens + words,
                    **(knobs["usage"] or {}),
                },
                "system_fingerprint": "fp_fake",
            }
        ).encode()
        if fault != "stall":
            return web.Response(body=payload, content_type=_JSON)
        response = web.StreamResponse(headers={"Content-Type": _JSON})
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[: len(payload) // 2])
        await _forever()

    async def _stream(
        self,
        request: web.Request,
        body: dict,
        model: str,
        words: int,
        finish_reason: str,
        prompt_tokens: int,
        knobs: dict,
        echo: str | None,
    ) -> web.StreamResponse:
        """Stream the completion as chat.completion.chunk SSE events."""
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        if knobs["fault"] == "garbage":
            await response.write(_GARBAGE_EVENT)
            await response.write_eof()
            return response

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        created = int(time.time())
        ident = f"chatcmpl-fake-{uuid.uuid4().hex}"
        # Events differ only in the delta, so the JSON around it is encoded once.
        common = f'"id":"{ident}","object":"chat.completion.chunk","created":{created},"model":{json.dumps(model)}'
        head = f'data: {{{common},"system_fingerprint":"fp_fake","choices":[{{"index":0,"delta":'
        usage_null = ',"usage":null' if include_usage else ""
        tail = f',"logprobs":null,"finish_reason":null}}]{usage_null}}}\n\n'

        write = response.write
        await write(f'{head}{{"role":"assistant","content":""}}{tail}'.encode())
        delay = knobs["chunk_delay_ms"] / 1000
        stall_after = 2 if knobs["fault"] == "stall" else -1
        fail_after = 2 if knobs["fault"] == "midstream_error" else -1
        for k in range(words):
            if k == stall_after:
                await _forever()
            if k == fail_after:
                error = error_body(500, _echoed("The stream broke.", echo) if echo else "The stream broke.")
                await write(b"data: " + json.dumps(error).encode() + b"\n\n")
                await response.write_eof()
                return response
            if delay and k:
                await asyncio.sleep(delay)
            await write(f'{head}{{"content":"fake{k} "}}{tail}'.encode())
        if stall_after >= 0:
            await _forever()
        usage = json.dumps(
            {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": words,
                "total_tokens": prompt_tokens + words,
                **(knobs["usage"] or {}),
            },
            separators=(",", ":"),
        )
        placement = knobs["usage_chunk"] if include_usage else None
        finish_usage = f',"usage":{usage}' if placement == "finish" else usage_null
        await write(f'{head}{{}},"logprobs":null,"finish_reason":"{finish_reason}"}}]{finish_usage}}}\n\n'.encode())
        if placement == "empty_choices":
            await write(f'data: {{{common},"system_fingerprint":"fp_fake","choices":[],"usage":{usage}}}\n\n'.encode())
        elif placement == "empty_delta":
            await write(f'{head}{{}},"logprobs":null,"finish_reason":null}}],"usage":{usage}}}\n\n'.encode())
        await write(_DONE_EVENT)
        await response.write_eof()
        return response

    # -- legacy completions ----------------------------------------------

    async def legacy(self, request: web.Request) -> web.StreamResponse:
        """Answer a legacy text completion request (status, latency, chunks and chunk delay knobs honoured)."""
        self.count += 1
        try:
            body, knobs = await self._read(request)
        except InvalidKnob as exc:
            return self._error(400, f"Invalid fake header: {exc}")
        prompt = body.get("prompt") if isinstance(body, dict) else None
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts:
            return self._error(400, "'prompt' must be a string or a non-empty array.", param="prompt")
        if all(isinstance(p, int) for p in prompts):
            prompts = [prompts]  # one prompt of token ids
        limit = body.get("max_tokens")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            return self._error(400, "max_tokens must be a positive integer.", param="max_tokens")
        if knobs["latency_ms"]:
            await asyncio.sleep(knobs["latency_ms"] / 1000)
        if knobs["status"] is not None and knobs["status"] != 200:
            return self._error(knobs["status"], retry_after=knobs["retry_after"])
        words, finish_reason = knobs["chunks"], "stop"
        if limit is not None and limit < words:
            words, finish_reason = limit, "length"
        prompt_tokens = sum(len(p.split()) if isinstance(p, str) else len(p) for p in prompts)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": words * len(prompts),
                 "total_tokens": prompt_tokens + words * len(prompts)}  # fmt: skip
        head = {"id": f"cmpl-fake-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": body.get("model") or self.config.models[0]}  # fmt: skip
        if not body.get("stream"):
            choices = [{"text": completion_text(words), "index": index, "logprobs": None,
                        "finish_reason": finish_reason} for index in range(len(prompts))]  # fmt: skip
            return web.json_response({**head, "choices": choices, "usage": usage})
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        for k in range(words + 1):
            if k and knobs["chunk_delay_ms"]:
                await asyncio.sleep(knobs["chunk_delay_ms"] / 1000)
            text, finish = (f"fake{k} ", None) if k < words else ("", finish_reason)
            choices = [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}
                       for index in range(len(prompts))]  # fmt: skip
            await response.write(b"data: " + json.dumps({**head, "choices": choices}).encode() + b"\n\n")
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            await response.write(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n")
        await response.write(_DONE_EVENT)
        await response.write_eof()
        return response

    # -- embeddings ------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.Response:
        """Answer an embeddings request with deterministic vectors (faults as for chat, except stream ones)."""
        return await self._counted(self._embeddings, request)

    async def _embeddings(self, request: web.Request) -> web.Response:
        """Validate, record and answer one embeddings request."""
        try:
            body, knobs = await self._read(request)
        except InvalidKnob as exc:
            return self._error(400, f"Invalid fake header: {exc}")
        failing = knobs["error_rate"] > 0 and self.rng.random() < knobs["error_rate"]
        echo = request.headers.get("Authorization", "") if knobs["echo_key"] else None
        if not isinstance(body, dict):
            return self._error(400, "We could not parse the JSON body of your request.", echo=echo)
        inputs = embedding_inputs(body.get("input"))
        if inputs is None:
            return self._error(400, "'input' must be a non-empty string or array.", param="input", echo=echo)
        dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= 4096:
            return self._error(400, "'dimensions' must be an integer from 1 to 4096.", param="dimensions", echo=echo)
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return self._error(400, "'encoding_format' must be float or base64.", param="encoding_format", echo=echo)
        refused = await self._faults(request, knobs, body, echo, failing)
        if refused is not None:
            return refused
        if knobs["fault"] == "garbage":
            return web.Response(body=_GARBAGE_BODY, content_type=_JSON)
        data = []
        for index, item in enumerate(inputs):
            vector = embedding_vector(item, dimensions)
            if encoding == "base64":
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = sum(len(item.split()) if isinstance(item, str) else len(item) for item in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, **(knobs["usage"] or {})}
        model = body.get("model") or self.config.models[0]
        return web.json_response({"object": "list", "data": data, "model": model, "usage": usage})

    # -- control endpoints -----------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        """List the configured model names."""
        if self.knobs["reject"] == "invalid_api_key":
            return self._rejection(self.knobs, None)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "chatvault-fake"} for name in self.config.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        """Report liveness."""
        return web.json_response({"status": "ok"})

    async def get_config(self, request: web.Request) -> web.Response:
        """Return the current runtime knobs."""
        return web.json_response(self.knobs)

    async def post_config(self, request: web.Request) -> web.Response:
        """Change runtime knobs for all later requests; null resets a knob."""
        try:
            changes = await request.json()
        except ValueError:
            changes = None
        if not isinstance(changes, dict):
            return self._error(400, "Body must be a JSON object of knobs.")
        knobs = dict(self.knobs)
        try:
            for name, value in changes.items():
                if name not in KNOBS:
                    raise InvalidKnob(f"unknown knob {name!r}; expected one of {', '.join(KNOBS)}")
                knobs[name] = self.defaults[name] if value is None else validate_knob(name, value)
        except InvalidKnob as exc:
            return self._error(400, str(exc))
        self.knobs = knobs
        return web.json_response(knobs)

    async def get_requests(self, request: web.Request) -> web.Response:
        """Return the recorded chat requests, oldest first."""
        return web.json_response({"count": self.count, "requests": list(self.records)})

    async def delete_requests(self, request: web.Request) -> web.Response:
        """Forget recorded requests and reset the counters."""
        self.records.clear()
        self.count = 0
        self.cancelled = 0
        return web.json_response({"count": 0, "requests": []})

    async def stats(self, request: web.Request) -> web.Response:
        """Return request, in-flight and cancellation counters."""
        return web.json_response({"count": self.count, "in_flight": self.in_flight, "cancelled": self.cancelled})

    async def add_port_header(self, request: web.Request, response: web.StreamResponse) -> None:
        """Tag every response with the port of this fake."""
        response.headers["x-fake-provider-port"] = self.port_header


def build_app(config: FakeConfig) -> web.Application:
    """Build the aiohttp application; its FakeProvider is at ``app["fake"]``."""
    fake = FakeProvider(config)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["fake"] = fake
    app.on_response_prepare.append(fake.add_port_header)
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_post("/chat/completions", fake.chat)
    app.router.add_post("/v1/completions", fake.legacy)
    app.router.add_post("/completions", fake.legacy)
    app.router.add_post("/v1/embeddings", fake.embeddings)
    app.router.add_post("/embeddings", fake.embeddings)
    app.router.add_get("/v1/models", fake.models)
    app.router.add_get("/models", fake.models)
    app.router.add_get("/health", fake.health)
    app.router.add_get("/_fake/config", fake.get_config)
    app.router.add_post("/_fake/config", fake.post_config)
    app.router.add_get("/_fake/requests", fake.get_requests)
    app.router.add_delete("/_fake/requests", fake.delete_requests)
    app.router.add_get("/_fake/stats", fake.stats)
    return app


async def start(config: FakeConfig) -> tuple[web.AppRunner, int]:
    """Start serving in the running loop and return the runner and the bound port."""
    app = build_app(config)
    # handler_cancellation makes client disconnects cancel handlers (hang, stall, counting).
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.25)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    app["fake"].set_port(port)
    return runner, port


async def serve(config: FakeConfig) -> None:
    """Serve until SIGTERM or SIGINT, announcing the listening URL on stdout."""
    runner, port = await start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"fake provider listening on http://{config.host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(config: FakeConfig) -> None:
    """Run the fake provider in the foreground (uvloop when available)."""
    loop_factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config))


def _knob_type(name: str):
    """Return an argparse type that validates knob ``name``."""

    def parse(text: str):
        try:
            return validate_knob(name, text)
        except InvalidKnob as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fake provider options to ``parser`` (shared with the manage.py command)."""
    parser.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one.")
    parser.add_argument("--host", default=DEFAULT_HOST, help="Interface to bind (default 127.0.0.1).")
    parser.add_argument("--latency-ms", type=_knob_type("latency_ms"), default=0.0, help="Delay before responding.")
    parser.add_argument(
        "--chunk-delay-ms",
        type=_knob_type("chunk_delay_ms"),
        default=0.0,
        help="Delay between streamed content chunks.",
    )
    parser.add_argument("--chunks", type=_knob_type("chunks"), default=20, help="Words per completion.")
    parser.add_argument(
        "--error-rate",
        type=_knob_type("error_rate"),
        default=0.0,
        help="Fraction (0..1) of chat requests answered with 500.",
    )
    parser.add_argument(
        "--status", type=_knob_type("status"), default=None, help="Answer every chat request with this HTTP status."
    )
    parser.add_argument(
        "--fault",
        type=_knob_type("fault"),
        default=None,
        help=f"Apply a fault to every chat request: {', '.join(FAULTS)}.",
    )
    parser.add_argument(
        "--retry-after",
        type=_knob_type("retry_after"),
        default=None,
        help="Retry-After seconds on error responses (429 defaults to 1).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed for --error-rate.")
    parser.add_argument(
        "--model", action="append", dest="models", default=None, help="Model name listed by /v1/models (repeatable)."
    )


def config_from_options(options: Any) -> FakeConfig:
    """Build a FakeConfig from parsed options (a Namespace or a dict)."""
    if not isinstance(options, dict):
        options = vars(options)
    return FakeConfig(
        host=options["host"],
        port=options["port"],
        latency_ms=options["latency_ms"],
        chunk_delay_ms=options["chunk_delay_ms"],
        chunks=options["chunks"],
        error_rate=options["error_rate"],
        status=options["status"],
        fault=options["fault"],
        retry_after=options["retry_after"],
        seed=options["seed"],
        models=tuple(options["models"] or FakeConfig.models),
    )


def main(argv: list[str] | None = None) -> int:
    """Parse command-line options and run the fake provider."""
    parser = argparse.ArgumentParser(prog="python -m routing.fake_provider", description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(config_from_options(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
