"""Chat completion service: validate the body, choose the model and instance, call the adapter, record the result.

A `ChatRequest` is created as soon as a request is authenticated and records exactly one RequestLog row, whatever
happens after that: a bad body, an upstream failure, a finished stream, or a client that went away.
"""

import asyncio
import dataclasses
import itertools
import json
import logging
import math
import random
import time
from collections import defaultdict
from datetime import UTC, datetime

from experiments import assignment as experiment_assignment
from routing import adapters, analysis, balancer, pricing, rejections, request_log, runtime, selection, state, storable
from routing.adapters import CLIENT_FAULT_STATUSES, UpstreamFailure
from routing.errors import (
    InvalidRequest,
    NoCapacity,
    ServerShutdown,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from routing.health import OPEN
from routing.models import Outcome
from routing.snapshot import NO_KEY_REASON
from routing.validation import validate_body

logger = logging.getLogger(__name__)

# Per-process rotation counters (each worker rotates through the usable instances on its own).
_rotation = defaultdict(itertools.count)
_rng = random.Random()
# What an attempt's failure says: the instance failed (try another), or the upstream refused the request itself (one
# more instance may say whether the request or the instance is at fault).
FAILED, REFUSED = "failed", "refused"
# The longest piece of an upstream's words kept in a breaker's reason.
REASON_MESSAGE_CHARS = 120
# The recommend endpoint lists this many models unless asked for more (up to the maximum).
DEFAULT_RECOMMENDATIONS = 5
MAX_RECOMMENDATIONS = 100


def failure_to_error(failure):
    """Return the GatewayError a client sees for an upstream failure."""
    if failure.kind == "timeout":
        return UpstreamTimeout()
    if failure.kind == "status":
        status = failure.status
        if status == 429:
            headers = {"Retry-After": str(int(failure.retry_after + 0.999))} if failure.retry_after else {}
            return UpstreamRateLimited(headers=headers)
        if _misconfigured(failure):
            return UpstreamError(
                "The upstream provider refused this deployment's configuration (model, credentials or region).",
                code="upstream_misconfigured",
            )
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


def _misconfigured(failure):
    """Return whether an upstream's refusal blames the deployment (a timeout or rate limit is no such refusal)."""
    if failure.kind != "status" or failure.status in (408, 429):
        return False
    return rejections.about_deployment(failure.message)


def wrong_endpoint(model):
    """Return the error for a model named on an endpoint its mode does not serve."""
    if model.embedding:
        message = f"The model '{model.name}' is an embedding model: use /v1/embeddings."
    else:
        message = f"The model '{model.name}' is a chat model: use /v1/chat/completions, or name an embedding model."
    return InvalidRequest(message, param="model", code="wrong_endpoint")


def sse(data):
    """Return one server-sent event carrying data (bytes of JSON)."""
    return b"data: " + data + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChatRequest:
    """One authenticated request, from model choice to its RequestLog row."""

    def __init__(self, *, request_id, key, snapshot, endpoint="chat.completions", session=None):
        self.request_id = request_id
        self.session = session  # the x-chatvault-session header: an experiment's unit when `user` is not sent
        self.key = key
        self.snapshot = snapshot
        self.endpoint = endpoint
        self.received_at = datetime.now(UTC)
        self.started = time.perf_counter()
        self.body = {}
        self.model = None
        self.fallbacks = []  # next-ranked models of a selected request
        self.context_type = ""  # set when the model was selected
        self.selection_reason = ""
        self.assignment = None  # the experiment and variant this request was enrolled in, if any
        self.instance = None
        self.stream = False
        self.attempts = []
        self.decision = {}
        self.usage = None
        self.ttft_ms = None
        self.upstream_message = None  # the upstream's own words about a failure, for the log only
        self.state = None
        self.budget = None
        self._turn = 0
        self._recorded = False

    # --- choosing ----------------------------------------------------------------------------------------------

    def resolve_model(self, body):
        """Validate the body, choose its model (`selection.choose_model`) and return that ModelConfig.

        Raise the matching GatewayError when the body is invalid or names a model this key cannot have.
        """
        self.body = body
        if isinstance(body, dict):
            self.stream = body.get("stream") is True
        validate_body(body)
        routing_state, now = state.get(), time.time()
        choice = selection.choose_model(
            body=body, snapshot=self.snapshot, key=self.key, health=lambda model: routing_state.model_view(model, now)
        )
        if choice.model.embedding:
            self.decision["model"] = choice.decision
            raise wrong_endpoint(choice.model)
        self.model = choice.model
        self.fallbacks = [f for f in choice.fallbacks if not f.embedding]
        self.context_type = choice.context_type
        self.selection_reason = choice.reason if choice.selection else ""
        self.decision["model"] = choice.decision
        if choice.selection:
            self.decision["selection"] = choice.selection
        self._enroll(choice)
        return self.model

    def _enroll(self, choice):
        """Put the request in the experiment that claims it, if its unit is enrolled: serve the unit's variant.

        Reads only the snapshot. A variant whose model is not enabled falls back to the model the request would have
        had without the experiment; the request still counts for its variant (intent to treat), and the decision
        says so.
        """
        claimants = self.snapshot.experiments_by_model.get(choice.model.name)
        if not claimants:
            return
        context_type = self.context_type
        if not context_type and any(e.context_types for e in claimants):
            context_type = analysis.analyse(self.body).context_type
        key = self.key
        experiment = experiment_assignment.claimant(claimants, choice.model.name, context_type, key.pk, time.time())
        if experiment is None or not all(key.may_use(m) for m in experiment.models):
            return
        unit = experiment_assignment.unit_of(user=self.body.get("user"), session=self.session, key_pk=key.pk)
        assigned = experiment_assignment.assign(experiment, unit)
        if assigned is None:
            return
        self.assignment = assigned
        variant = assigned.variant
        record = {"id": experiment.id, "variant": variant.name, "model": variant.model}
        self.decision["experiment"] = record
        self.body = experiment_assignment.apply_overrides(self.body, variant)
        if variant.overrides:
            record["overrides"] = sorted(name for name, _ in variant.overrides)
        if variant.model == choice.model.name:
            return
        model = self.snapshot.models.get(variant.model)
        if model is None or model.embedding:
            record["fell_back"] = f"'{variant.model}' is not an enabled chat model; served by '{choice.model.name}'"
            return
        self.fallbacks = [choice.model, *(m for m in self.fallbacks if m.name != model.name)]
        self.model = model
        self.decision["model"]["served"] = model.name
        self.decision["model"]["reason"] = f"experiment '{experiment.id}', variant '{variant.name}'"

    def choose_named(self, body):
        """Return the Choice of the model the body names (alias and fallbacks followed), even where the gateway
        selects every chat request: for the endpoints that selection and experiments do not serve."""
        snap = self.snapshot
        if snap.auto_select:
            snap = dataclasses.replace(snap, auto_select=False)
        choice = selection.choose_model(body=body, snapshot=snap, key=self.key)
        self.decision["model"] = choice.decision
        return choice

    def recommend(self, body):
        """Return the models a chat request would be selected from, best first, with why; call no upstream.

        The body is validated like a chat request (its `model` may be left out) plus an optional `limit`; the
        ranking is the one selection uses (`selection.rank_models`).
        """
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        body = {"model": selection.AUTO, **body}
        limit = body.pop("limit", DEFAULT_RECOMMENDATIONS)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RECOMMENDATIONS:
            raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_RECOMMENDATIONS}.", param="limit")
        self.body = body
        validate_body(body)
        routing_state, now = state.get(), time.time()
        analysed, need, _, ranked = selection.rank_models(
            body=body, snapshot=self.snapshot, key=self.key, health=lambda model: routing_state.model_view(model, now)
        )
        self.context_type = need.context_type
        recommendations = []
        for position, ranked_model in enumerate(ranked[:limit], start=1):
            record = selection.candidate_record(ranked_model)
            recommendations.append({"model": record.pop("model"), "rank": position if ranked_model.eligible else None,
                                    **record})  # fmt: skip
        result = {"analysis": selection.analysis_record(analysed), "recommendations": recommendations}
        self.decision["selection"] = {"analysis": result["analysis"], "winner": ranked[0].name if ranked else None}
        return result

    def _fall_back(self):
        """Move the request to the next-ranked model, if selection left one; return whether it did."""
        if not self.fallbacks:
            return False
        previous, self.model = self.model, self.fallbacks.pop(0)
        self.decision.setdefault("fallbacks", []).append({"from": previous.name, "to": self.model.name})
        self.decision["model"]["served"] = self.model.name
        if "selection" in self.decision:
            self.decision["selection"]["served"] = self.model.name  # the winner could not serve; this one did
        return True

    def choose_instance(self, tried):
        """Return the instance for the next attempt, skipping tried, drained, keyless and open ones.

        Raise NoCapacity (with Retry-After when a breaker says when) if none is usable.
        """
        model = self.model
        st = self.state
        now = time.time()
        usable, skipped = [], {}
        for inst in model.instances:
            if inst.id in tried:
                continue
            if inst.drained:
                skipped[inst.id] = "drained"
            elif inst.missing_key:
                skipped[inst.id] = NO_KEY_REASON
            elif not st.usable(inst.id, now):
                breaker = st.breaker(inst.id)
                skipped[inst.id] = f"{breaker.current(now)}: {breaker.reason}"
            elif limited := st.over_limit(inst, now):
                skipped[inst.id] = limited
            else:
                usable.append(inst)
        if not self.attempts:
            self.decision.update(strategy=model.strategy, candidates=[i.id for i in usable])
            if skipped:
                self.decision["skipped"] = skipped
        if not usable:
            raise self._no_capacity(now)
        views = [
            balancer.Candidate(
                id=i.id,
                weight=i.weight,
                in_flight=st.total_in_flight(i.id),
                latency_ms=st.latency_ms(i.id),
                **balancer.usage(i.rpm, i.tpm, *st.used(i.id, now)),
                cost=i.price_per_token,
            )
            for i in usable
        ]
        if not tried:  # a retry keeps the request's place in the rotation instead of taking another turn
            self._turn = next(_rotation[model.name])
        picked = balancer.choose(model.strategy, views, self._turn + len(tried), _rng)
        instance = next(i for i in usable if i.id == picked.id)
        self.decision["instance"] = instance.id
        self.instance = instance
        return instance

    def _no_capacity(self, now):
        """Return the error for a model none of whose instances can take a request now."""
        model = self.model
        if not model.instances:
            return NoCapacity(f"The model '{model.name}' has no enabled instance.")
        if all(i.drained for i in model.instances):
            return NoCapacity(f"Every instance of '{model.name}' is drained.")
        if all(i.drained or i.missing_key for i in model.instances):
            return NoCapacity(f"No instance of '{model.name}' has an API key: set one on the instance or its provider.")
        st = self.state
        serving = [i for i in model.instances if not i.drained]
        waits = [st.breaker(i.id).until - now for i in serving if st.breaker(i.id).current(now) == OPEN]
        waits += [st.limit_frees_in(i.id, now) for i in serving if st.over_limit(i, now)]
        headers = {"Retry-After": str(max(1, math.ceil(min(waits))))} if waits else {}
        return NoCapacity(f"Every instance of '{model.name}' is unavailable right now; retry later.", headers=headers)

    # --- calling -----------------------------------------------------------------------------------------------

    def _begin(self):
        """Prepare the per-process state for this request (policy from the snapshot, retry budget credit)."""
        st = self.state = state.get()
        if st.applied is not self.snapshot:
            st.apply_snapshot(self.snapshot)
        self.budget = st.budget(self.model.name)
        self.budget.on_request()
        return st

    def _attempt_done(self, instance, began, outcome, status=None):
        """Note one upstream attempt in the decision record; return its duration in ms."""
        ms = round((time.perf_counter() - began) * 1000, 2)
        entry = {"instance": instance.id, "outcome": outcome, "ms": ms}
        if status is not None:
            entry["status"] = status
        self.attempts.append(entry)
        return ms

    def _attempt_failed(self, instance, began, exc):
        """Record a failed attempt and return (client-facing error, FAILED or REFUSED).

        A failure counts against the instance's breaker at once, except a refusal of the request (400/413/422) whose
        message is not about the deployment: that one waits for a peer's verdict (`_failover`).
        """
        st = self.state
        if isinstance(exc, TimeoutError):
            self._attempt_done(instance, began, "timeout")
            st.finished(instance.id, ok=False, detail="timeout")
            return UpstreamTimeout(), FAILED
        if isinstance(exc, StopAsyncIteration):
            exc = UpstreamFailure("bad_response", "the upstream sent an empty stream")
        error = self._upstream_error(exc)
        self._attempt_done(instance, began, exc.kind, exc.status)
        misconfigured = _misconfigured(exc)
        if exc.kind == "status" and exc.status in CLIENT_FAULT_STATUSES and not misconfigured:
            st.finished(instance.id, ok=False, counts=False)
            return error, REFUSED
        detail = f"HTTP {exc.status}" if exc.status else exc.kind.replace("_", " ")
        if misconfigured:
            detail = f"misconfigured, {detail}: {exc.message[:REASON_MESSAGE_CHARS]}"
        retry_after = exc.retry_after if exc.status == 429 else None
        st.finished(instance.id, ok=False, detail=detail, retry_after=retry_after)
        return error, FAILED

    def _may_retry(self, verdict, cap):
        """Return whether another instance may be tried (attempt cap, and the retry budget for failures)."""
        if len(self.attempts) >= cap:
            return False
        # Checking a refusal on a peer is not a retry of a failure: it must not drain the budget outages rely on.
        return verdict == REFUSED or self.budget.try_spend()

    def _blame_refusals(self, refused):
        """Count refusals of this request by instances of the model that then served it against those instances."""
        now = time.time()
        for model_name, instance, attempt, failure in refused:
            if model_name != self.model.name:
                continue  # another model serving it says nothing of this instance: models differ in what they accept
            attempt["blamed"] = True
            message = failure.message[:REASON_MESSAGE_CHARS]
            detail = f"HTTP {failure.status} to a request another instance served: {message}"
            self.state.observe(instance.id, ok=False, now=now, detail=detail)

    async def _failover(self, call):
        """Await call(instance) on one instance after another until one succeeds; return (instance, began, result).

        A failed attempt is retried on another usable instance while the attempt cap and the retry budget allow it.
        A refusal of the request itself (400/413/422 whose words are not about the deployment) is tried on one more
        instance, and never more: when that one serves it, the refusal counts against the instance that refused it
        (a misconfigured deployment its peers cover for); when it refuses too, the request is the client's fault,
        which reaches the client as a 400 and counts against no one. The client gets the last attempt's error, or
        NoCapacity when no instance was usable at all.
        """
        st = self._begin()
        tried, last_error = [], None
        refused = []  # (model name, instance, its attempt record, the failure) awaiting a peer's verdict
        cap = self.snapshot.max_attempts
        while True:
            try:
                instance = self.choose_instance(tried)
            except NoCapacity:
                if self._fall_back():  # a selected request moves on to the next-ranked model
                    continue
                if last_error is not None:
                    raise last_error from None
                raise
            began = time.perf_counter()
            st.started(instance.id)
            try:
                async with asyncio.timeout(instance.timeout):
                    result = await call(instance)
            except (TimeoutError, UpstreamFailure, StopAsyncIteration) as exc:
                last_error, verdict = self._attempt_failed(instance, began, exc)
                tried.append(instance.id)
                if verdict == REFUSED:
                    refused.append((self.model.name, instance, self.attempts[-1], exc))
                    # One more attempt to tell the request's fault from the instance's; a second refusal ends it.
                    cap = min(cap, len(self.attempts) + 1)
                if not self._may_retry(verdict, cap):
                    raise last_error from None
            except BaseException as exc:
                # Cancelled, or a bug of ours (an adapter's own exceptions are handled above): the instance is not
                # to blame, but its in-flight count must still come down.
                self._attempt_done(instance, began, "cancelled" if isinstance(exc, asyncio.CancelledError) else "error")
                st.finished(instance.id, ok=False, counts=False)
                raise
            else:
                self._blame_refusals(refused)
                return instance, began, result

    def upstream_complete(self, instance):
        """Return the awaitable non-streaming upstream call of one attempt (legacy completions call another)."""
        return adapters.complete(instance, self.body)

    def upstream_stream(self, instance):
        """Return the upstream's chunks for one streaming attempt (legacy completions call another)."""
        return adapters.stream(instance, self.body)

    async def complete(self):
        """Return the upstream's Completion (with failover); raise GatewayError on failure."""
        instance, began, completion = await self._failover(self.upstream_complete)
        ms = self._attempt_done(instance, began, "ok", 200)
        self.usage = completion.usage
        self.state.finished(instance.id, ok=True, latency_ms=ms, tokens=_total_tokens(self.usage))
        return completion

    async def open_stream(self):
        """Start the stream (with failover until a first chunk arrives); return the relay for the client."""

        async def first_chunk(inst):
            chunks = self.upstream_stream(inst)
            try:
                return chunks, await anext(chunks)
            except BaseException:
                await chunks.aclose()
                raise

        instance, began, (chunks, first) = await self._failover(first_chunk)
        self.ttft_ms = (time.perf_counter() - self.started) * 1000
        return self._relay(instance, chunks, first, began)

    async def _relay(self, instance, chunks, first, began):
        """Yield the stream as SSE bytes, ending in [DONE], an error event, or the client going away."""
        wants_usage = bool((self.body.get("stream_options") or {}).get("include_usage"))
        outcome, status, error = Outcome.CLIENT_DISCONNECTED, 200, None
        first_chunk_ms = (time.perf_counter() - began) * 1000
        verdict = {"ok": False, "counts": False}
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
            verdict = {"ok": True, "latency_ms": first_chunk_ms, "tokens": _total_tokens(self.usage)}
            yield SSE_DONE
        except (TimeoutError, UpstreamFailure) as exc:
            timed_out = isinstance(exc, TimeoutError)
            if timed_out:
                error = UpstreamTimeout("The upstream provider stopped sending.")
            else:
                error = self._upstream_error(exc)
            outcome = error.outcome
            self._attempt_done(instance, began, "timeout" if timed_out else exc.kind)
            verdict = {"ok": False, "detail": "stalled mid-stream" if timed_out else f"broke mid-stream ({exc.kind})"}
            # Headers are already sent: report the failure in-band, as OpenAI does, never as a silent end.
            yield sse(_json_bytes(error.body()))
        except asyncio.CancelledError:
            if not runtime.stopping():
                raise  # the client went away: there is no one left to tell
            # The server's graceful shutdown ran out mid-stream: end it like any failure after the headers.
            error = ServerShutdown()
            outcome = error.outcome
            self._attempt_done(instance, began, "server_shutdown")
            yield sse(_json_bytes(error.body()))
        finally:
            self.state.finished(instance.id, **verdict)
            await chunks.aclose()
            if outcome == Outcome.CLIENT_DISCONNECTED:
                self._attempt_done(instance, began, "client_disconnected")
            self.record(outcome, status, error)

    def _upstream_error(self, failure):
        """Return the client-facing error for a failure, keeping the upstream's own words (masked) for the log."""
        self.upstream_message = failure.message
        return failure_to_error(failure)

    # --- recording ---------------------------------------------------------------------------------------------

    def record(self, outcome, status, error=None):
        """Queue this request's RequestLog row (only the first call counts)."""
        if self._recorded:
            return
        self._recorded = True
        prompt_tokens, completion_tokens, _, problems = storable.usage(self.usage)
        if problems:  # served all the same; the row says what the upstream got wrong
            self.decision["usage_problems"] = problems
        instance = self.instance
        cost = self.cost(prompt_tokens, completion_tokens)
        if self.attempts:
            self.decision["attempts"] = self.attempts
        body = self.body if isinstance(self.body, dict) else {}
        user = body.get("user")
        requested = body.get("model")
        message = ""
        if error is not None:
            message = error.message
            if self.upstream_message:
                message = f"{message} Upstream said: {self.upstream_message}"
        request_log.record(
            {
                "request_id": self.request_id,
                "created_at": self.received_at,
                "endpoint": self.endpoint,
                "api_key_id": self.key.pk,
                "instance_id": instance.id if instance else None,
                "user": user if isinstance(user, str) else "",
                "requested_model": requested if isinstance(requested, str) else "",
                "served_model": self.model.name if self.model else "",
                "stream": self.stream,
                "outcome": outcome,
                "status_code": status,
                "error_type": (error.code or error.error_type) if error is not None else "",
                "error_message": message,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost_usd": cost,
                "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
                "ttft_ms": round(self.ttft_ms, 3) if self.ttft_ms is not None else None,
                "attempts": len(self.attempts),
                "decision": self.decision,
                "context_type": self.context_type,
                **(
                    {
                        "experiment": self.assignment.experiment.id,
                        "variant": self.assignment.variant.name,
                        "experiment_unit": self.assignment.unit,
                    }
                    if self.assignment
                    else {}
                ),
            }
        )

    def cost(self, prompt_tokens, completion_tokens):
        """Return the USD cost of the call at the serving instance's prices, or None when unknown."""
        instance = self.instance
        if instance is None:
            return None
        return pricing.cost(prompt_tokens, completion_tokens, instance.input_cost_per_token,
                            instance.output_cost_per_token)  # fmt: skip

    def record_error(self, error):
        """Record a request that ended with error."""
        self.record(error.outcome, error.status_code, error)


def _total_tokens(usage):
    """Return the total tokens of an upstream's usage object, or None."""
    return storable.usage(usage)[2]


def _json_bytes(value):
    """Return compact JSON bytes."""
    return json.dumps(value, separators=(",", ":")).encode()


def _without_usage(chunk):
    """Return chunk without its usage (None when it carried nothing else), for clients that did not ask for it.

    OpenAI sends usage on a last chunk with `choices: []`; LiteLLM-style upstreams on one whose choices have an
    empty delta and no finish_reason. Either is a chunk the client never asked for, so it is dropped whole.
    """
    if not chunk.has_choices:
        return None
    data = json.loads(chunk.data)
    if not any(_carries_something(choice) for choice in data.get("choices") or ()):
        return None
    data.pop("usage", None)
    return adapters.chunk_from_dict(data)


def _carries_something(choice):
    """Return whether a stream chunk's choice holds anything for the client: delta content, finish_reason, logprobs."""
    if not isinstance(choice, dict):
        return True  # not ours to judge: relay it
    delta = choice.get("delta")
    has_delta = any(delta.values()) if isinstance(delta, dict) else bool(delta)
    return has_delta or bool(choice.get("finish_reason")) or bool(choice.get("logprobs"))
