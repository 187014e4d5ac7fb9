"""Chat completion service: validate the body, choose the model and instance, call the adapter, record the result.

A `ChatRequest` is created as soon as a request is authenticated and records exactly one RequestLog row, whatever
happens after that: a bad body, an upstream failure, a finished stream, or a client that went away.
"""

import asyncio
import itertools
import json
import logging
import random
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime

from routing import adapters, balancer, pricing, request_log
from routing.adapters import UpstreamFailure
from routing.errors import (
    InvalidRequest,
    ModelNotFound,
    NoCapacity,
    PermissionDenied,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from routing.models import Outcome

logger = logging.getLogger(__name__)

FORBIDDEN_KEYS = frozenset({"api_base", "base_url", "api_key"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_NESTING = 64
# Upstream statuses that mean the client's request itself was refused; anything else 4xx is the gateway's problem.
CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})

# Per-process balancing state (rotation counters and in-flight counts).
_rotation = defaultdict(itertools.count)
_in_flight = Counter()
_rng = random.Random()


def _find_forbidden_key(value, path, depth=0):
    """Return the path of the first credential or endpoint key anywhere in value, or None."""
    if depth > MAX_NESTING:
        raise InvalidRequest("The request body is nested too deeply.")
    if isinstance(value, dict):
        for key, item in value.items():
            if key in FORBIDDEN_KEYS:
                return f"{path}.{key}" if path else key
            found = _find_forbidden_key(item, f"{path}.{key}" if path else key, depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_forbidden_key(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
    return None


def validate_body(body):
    """Raise InvalidRequest unless body is a usable chat completion request."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    forbidden = _find_forbidden_key(body, "")
    if forbidden:
        raise InvalidRequest(
            f"'{forbidden}' may not be set by clients: the gateway chooses the upstream endpoint and credentials.",
            param=forbidden,
            code="forbidden_parameter",
        )
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' is required and must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{index}] must be an object.", param=f"messages[{index}]")
        if message.get("role") not in ROLES:
            raise InvalidRequest(
                f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}.", param=f"messages[{index}].role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(
                f"messages[{index}].content must be a string or an array of content parts.",
                param=f"messages[{index}].content",
            )
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user")


def failure_to_error(failure):
    """Return the GatewayError a client sees for an upstream failure."""
    if failure.kind == "timeout":
        return UpstreamTimeout()
    if failure.kind == "status":
        status = failure.status
        if status == 429:
            headers = {"Retry-After": str(int(failure.retry_after + 0.999))} if failure.retry_after else {}
            return UpstreamRateLimited(headers=headers)
        if status in CLIENT_FAULT_STATUSES:
            return InvalidRequest(
                f"The upstream provider rejected the request: {failure.message}", code="upstream_rejected"
            )
        if status == 408:
            return UpstreamTimeout()
        return UpstreamError(f"The upstream provider answered HTTP {status}.")
    if failure.kind == "bad_response":
        return UpstreamError(
            "The upstream provider sent an answer that could not be read.", code="upstream_bad_response"
        )
    return UpstreamError("The upstream provider could not be reached.", code="upstream_unreachable")


def sse(data):
    """Return one server-sent event carrying data (bytes of JSON)."""
    return b"data: " + data + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChatRequest:
    """One authenticated request, from model choice to its RequestLog row."""

    def __init__(self, *, request_id, key, snapshot, endpoint="chat.completions"):
        self.request_id = request_id
        self.key = key
        self.snapshot = snapshot
        self.endpoint = endpoint
        self.received_at = datetime.now(UTC)
        self.started = time.perf_counter()
        self.body = {}
        self.model = None
        self.instance = None
        self.stream = False
        self.attempts = []
        self.decision = {}
        self.usage = None
        self.ttft_ms = None
        self._recorded = False

    # --- choosing ----------------------------------------------------------------------------------------------

    def resolve_model(self, body):
        """Validate the body and return the ModelConfig it names; raise the matching GatewayError otherwise."""
        self.body = body
        if isinstance(body, dict):
            self.stream = body.get("stream") is True
        validate_body(body)
        name = body["model"]
        model = self.snapshot.models.get(name)
        if model is None:
            raise ModelNotFound(f"The model '{name}' does not exist or is not enabled.", param="model")
        if not self.key.may_use(name):
            raise PermissionDenied(f"This API key may not use the model '{name}'.", code="model_not_allowed")
        self.model = model
        self.decision["model"] = {"requested": name, "served": name, "reason": "requested by the client"}
        return model

    def choose_instance(self):
        """Return the instance that serves this attempt; raise NoCapacity if there is none."""
        model = self.model
        candidates = model.instances
        if not candidates:
            raise NoCapacity(f"The model '{model.name}' has no enabled instance.")
        counter = next(_rotation[model.name])
        views = [balancer.Candidate(id=i.id, weight=i.weight, in_flight=_in_flight[i.id]) for i in candidates]
        picked = balancer.choose(model.strategy, views, counter, _rng)
        instance = next(i for i in candidates if i.id == picked.id)
        self.decision.update(strategy=model.strategy, candidates=[i.id for i in candidates], instance=instance.id)
        self.instance = instance
        return instance

    # --- calling -----------------------------------------------------------------------------------------------

    def _attempt_done(self, instance, began, outcome, status=None):
        """Note one upstream attempt in the decision record."""
        entry = {"instance": instance.id, "outcome": outcome, "ms": round((time.perf_counter() - began) * 1000, 2)}
        if status is not None:
            entry["status"] = status
        self.attempts.append(entry)

    async def complete(self):
        """Call the upstream once and return its Completion; raise GatewayError on failure."""
        instance = self.choose_instance()
        adapter = adapters.for_instance(instance)
        began = time.perf_counter()
        _in_flight[instance.id] += 1
        try:
            async with asyncio.timeout(instance.timeout):
                completion = await adapter.complete(instance, self.body)
        except TimeoutError:
            self._attempt_done(instance, began, "timeout")
            raise UpstreamTimeout() from None
        except UpstreamFailure as failure:
            self._attempt_done(instance, began, failure.kind, failure.status)
            raise self._upstream_error(failure) from None
        except asyncio.CancelledError:
            self._attempt_done(instance, began, "cancelled")
            raise
        finally:
            _in_flight[instance.id] -= 1
        self._attempt_done(instance, began, "ok", 200)
        self.usage = completion.usage
        return completion

    async def open_stream(self):
        """Start the upstream stream and wait for its first chunk; return the relay to send to the client."""
        instance = self.choose_instance()
        adapter = adapters.for_instance(instance)
        began = time.perf_counter()
        chunks = adapter.stream(instance, self.body)
        _in_flight[instance.id] += 1
        try:
            async with asyncio.timeout(instance.timeout):
                first = await anext(chunks)
        except BaseException as exc:
            _in_flight[instance.id] -= 1
            await chunks.aclose()
            if isinstance(exc, TimeoutError):
                self._attempt_done(instance, began, "timeout")
                raise UpstreamTimeout() from None
            if isinstance(exc, StopAsyncIteration):
                self._attempt_done(instance, began, "bad_response")
                raise UpstreamError(
                    "The upstream provider sent an empty stream.", code="upstream_bad_response"
                ) from None
            if isinstance(exc, UpstreamFailure):
                self._attempt_done(instance, began, exc.kind, exc.status)
                raise self._upstream_error(exc) from None
            if isinstance(exc, asyncio.CancelledError):
                self._attempt_done(instance, began, "cancelled")
            raise
        self.ttft_ms = (time.perf_counter() - self.started) * 1000
        return self._relay(instance, chunks, first, began)

    async def _relay(self, instance, chunks, first, began):
        """Yield the stream as SSE bytes, ending in [DONE], an error event, or the client going away."""
        wants_usage = bool((self.body.get("stream_options") or {}).get("include_usage"))
        outcome, status, error = Outcome.CLIENT_DISCONNECTED, 200, None
        chunk = first
        try:
            while True:
                if chunk.usage:
                    self.usage = chunk.usage
                    if not wants_usage:
                        chunk = _without_usage(chunk)
                if chunk is not None:
                    yield sse(chunk.data)
                try:
                    async with asyncio.timeout(instance.stream_timeout):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
            outcome = Outcome.OK
            self._attempt_done(instance, began, "ok", 200)
            yield SSE_DONE
        except (TimeoutError, UpstreamFailure) as exc:
            error = (
                UpstreamTimeout("The upstream provider stopped sending.")
                if isinstance(exc, TimeoutError)
                else (self._upstream_error(exc))
            )
            outcome = error.outcome
            self._attempt_done(instance, began, "timeout" if isinstance(exc, TimeoutError) else exc.kind)
            # Headers are already sent: report the failure in-band, as OpenAI does, never as a silent end.
            yield sse(_json_bytes(error.body()))
        finally:
            _in_flight[instance.id] -= 1
            await chunks.aclose()
            if outcome == Outcome.CLIENT_DISCONNECTED:
                self._attempt_done(instance, began, "client_disconnected")
            self.record(outcome, status, error)

    def _upstream_error(self, failure):
        """Return the client-facing error for a failure and keep the upstream's own words for the log."""
        error = failure_to_error(failure)
        self.upstream_message = failure.message
        return error

    # --- recording ---------------------------------------------------------------------------------------------

    def record(self, outcome, status, error=None):
        """Queue this request's RequestLog row (only the first call counts)."""
        if self._recorded:
            return
        self._recorded = True
        usage = self.usage or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        instance = self.instance
        cost = None
        if instance is not None:
            cost = pricing.cost(
                prompt_tokens, completion_tokens, instance.input_cost_per_token, instance.output_cost_per_token
            )
        if self.attempts:
            self.decision["attempts"] = self.attempts
        body = self.body if isinstance(self.body, dict) else {}
        user = body.get("user")
        requested = body.get("model")
        message = ""
        if error is not None:
            message = error.message
            upstream = getattr(self, "upstream_message", None)
            if upstream:
                message = f"{message} Upstream said: {upstream}"
        request_log.record(
            {
                "request_id": self.request_id,
                "created_at": self.received_at,
                "endpoint": self.endpoint,
                "api_key_id": self.key.pk,
                "instance_id": instance.id if instance else None,
                "user": user[:256] if isinstance(user, str) else "",
                "requested_model": requested[:200] if isinstance(requested, str) else "",
                "served_model": self.model.name if self.model else "",
                "stream": self.stream,
                "outcome": outcome,
                "status_code": status,
                "error_type": (error.code or error.error_type) if error is not None else "",
                "error_message": message[:2000],
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost_usd": cost,
                "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
                "ttft_ms": round(self.ttft_ms, 3) if self.ttft_ms is not None else None,
                "attempts": len(self.attempts),
                "decision": self.decision,
            }
        )

    def record_error(self, error):
        """Record a request that ended with error."""
        self.record(error.outcome, error.status_code, error)


def _json_bytes(value):
    """Return compact JSON bytes."""
    return json.dumps(value, separators=(",", ":")).encode()


def _without_usage(chunk):
    """Return chunk without its usage (None when it carried nothing else), for clients that did not ask for it."""
    if not chunk.has_choices:
        return None
    data = json.loads(chunk.data)
    data.pop("usage", None)
    return adapters.chunk_from_dict(data)
