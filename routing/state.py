"""This worker's view of instance health and load, shared with every other worker through Redis when configured.

What is shared: breaker states (closed/open/half-open, reason, until), in-flight counts, latency EWMAs and each
worker's requests and tokens per instance over the last minute (for rpm/tpm limits), plus a per-worker summary of
recent results for the stats endpoint. Nothing here costs a Redis round trip on the request
path: requests read and update in-process dicts, and a background task syncs with Redis every `SYNC_SECONDS`
(publishing this worker's numbers and breaker changes, reading everyone else's). A breaker opened by one worker is
therefore respected by all others within about one sync interval.

Without `REDIS_URL` the same state is simply per process. When Redis is unreachable, workers log one warning, forget
the other workers' (now stale) numbers and carry on with their own until Redis is back; no request fails for it.
Any other sync error (a value in Redis that is not what a worker writes, a bug) is logged as what it is, once until
the sync works again: a malformed entry is skipped and the rest of what the workers published is read as usual.

What stays local on purpose: the failure counters that decide when to trip (each worker trips on what it saw) and
the retry budgets (one per model: a per-process share of that model's requests).
"""

import asyncio
import json
import logging
import os
import time
import uuid
from collections import Counter, deque

from django.conf import settings

from routing import health
from routing.health import CLOSED, HALF_OPEN, OPEN, BreakerState, Observations, RetryBudget
from routing.stats import percentile

logger = logging.getLogger(__name__)

SYNC_SECONDS = 0.1
WORKER_TTL_SECONDS = 5
EWMA_ALPHA = 0.3
LATENCY_SAMPLES = 256
KEY_PREFIX = "chatvault:"
MINUTE = 60.0  # the window of rpm and tpm limits
MAX_FIGURE = 1e15  # larger numbers (and NaN, infinities) from another worker are malformed


class UsageWindow:
    """Requests and tokens sent to one instance over the last minute, with running totals (for rpm/tpm)."""

    __slots__ = ("entries", "requests", "tokens")

    def __init__(self):
        self.entries = deque()  # (time, requests, tokens), oldest first
        self.requests = 0
        self.tokens = 0

    def add(self, now, requests, tokens):
        """Count a request or its tokens, and forget what left the minute."""
        self.entries.append((now, requests, tokens))
        self.requests += requests
        self.tokens += tokens
        self.trim(now)

    def trim(self, now):
        """Forget entries older than a minute (amortised O(1))."""
        horizon = now - MINUTE
        entries = self.entries
        while entries and entries[0][0] < horizon:
            _, requests, tokens = entries.popleft()
            self.requests -= requests
            self.tokens -= tokens

    def totals(self, now):
        """Return (requests, tokens) within the minute ending now."""
        self.trim(now)
        return self.requests, self.tokens

    def oldest(self):
        """Return the time of the oldest entry, or None."""
        return self.entries[0][0] if self.entries else None


class RoutingState:
    """Breakers, in-flight counts, latency EWMAs and the retry budget of this worker."""

    def __init__(self, redis_url=""):
        self.redis_url = redis_url
        self.worker_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.policy = health.BreakerPolicy()
        self.retry_ratio = RetryBudget().ratio
        self.budgets = {}  # model name -> RetryBudget
        self.breakers = {}  # instance id -> BreakerState (the shared view)
        self.observations = {}  # instance id -> Observations (local)
        self.in_flight = Counter()  # this worker's in-flight requests per instance
        self.others_in_flight = Counter()  # the other workers' (from the last sync)
        self.ewma = {}  # this worker's latency EWMA per instance
        self.others_ewma = {}  # instance id -> [EWMAs of other workers]
        self.latencies = {}  # instance id -> deque of recent latencies (ms), local
        self.others_summary = {}  # instance id -> [summaries of other workers]
        self.minute = {}  # instance id -> UsageWindow, for rpm/tpm
        self.others_minute = {}  # instance id -> [requests, tokens] of the other workers in their last minute
        self._dirty = set()  # breakers changed here and not yet published
        self._reset_seen = {}  # instance id -> breaker_reset_at applied
        self.applied = None  # the snapshot whose policy is in force
        self._redis = None
        self._sync_task = None
        self.shared_ok = None  # None: not shared; True/False: Redis reachable or not
        self.sync_fault = None  # what went wrong with the last sync other than Redis being unreachable, or None

    # --- configuration ----------------------------------------------------------------------------------------

    def apply_snapshot(self, snap):
        """Adopt the policy of a new snapshot and carry out operator breaker resets made since the last one."""
        if self.applied is not None and snap.loaded_at < self.applied.loaded_at:
            return  # a request that started before the last reload: its snapshot is older than the one in force
        self.applied = snap
        self.policy = snap.breaker_policy
        self.retry_ratio = snap.retry_budget_ratio
        for budget in self.budgets.values():
            budget.ratio = snap.retry_budget_ratio
        for model in snap.models.values():
            for inst in model.instances:
                if inst.id not in self._reset_seen:
                    self._reset_seen[inst.id] = inst.breaker_reset_at  # a reset from before this worker existed
                elif self._reset_seen[inst.id] != inst.breaker_reset_at:
                    self._reset_seen[inst.id] = inst.breaker_reset_at
                    logger.info("instance %s breaker reset by an operator", inst.id)
                    self._set(inst.id, health.reset())
                    self.observations.pop(inst.id, None)

    # --- reading ------------------------------------------------------------------------------------------------

    def budget(self, model_name):
        """Return the retry budget of a model (one per model: one model's outage leaves others their retries)."""
        budget = self.budgets.get(model_name)
        if budget is None:
            budget = self.budgets[model_name] = RetryBudget(ratio=self.retry_ratio)
        return budget

    def breaker(self, instance_id):
        """Return the breaker state of an instance."""
        return self.breakers.get(instance_id) or BreakerState()

    def total_in_flight(self, instance_id):
        """Return the in-flight requests of an instance across all workers."""
        return self.in_flight[instance_id] + self.others_in_flight[instance_id]

    def latency_ms(self, instance_id):
        """Return the latency EWMA of an instance across workers, or None if never measured."""
        values = list(self.others_ewma.get(instance_id, ()))
        if instance_id in self.ewma:
            values.append(self.ewma[instance_id])
        return sum(values) / len(values) if values else None

    def usable(self, instance_id, now):
        """Return whether a request may go to the instance now (half-open: one trial at a time per worker)."""
        current = self.breaker(instance_id).current(now)
        if current == CLOSED:
            return True
        if current == HALF_OPEN:
            return self.in_flight[instance_id] == 0
        return False

    def used(self, instance_id, now):
        """Return (requests, tokens) sent to an instance over the last minute, across workers."""
        window = self.minute.get(instance_id)
        requests, tokens = window.totals(now) if window is not None else (0, 0)
        other_requests, other_tokens = self.others_minute.get(instance_id, (0, 0))
        return requests + other_requests, tokens + other_tokens

    def over_limit(self, instance, now):
        """Return why the instance has reached its rpm or tpm limit for this minute, or None."""
        if not instance.rpm and not instance.tpm:
            return None
        requests, tokens = self.used(instance.id, now)
        if instance.rpm and requests >= instance.rpm:
            return f"rpm limit reached ({requests}/{instance.rpm} in the last minute)"
        if instance.tpm and tokens >= instance.tpm:
            return f"tpm limit reached ({tokens}/{instance.tpm} tokens in the last minute)"
        return None

    def limit_frees_in(self, instance_id, now):
        """Return roughly how many seconds until an instance at its limit takes requests again."""
        window = self.minute.get(instance_id)
        oldest = window.oldest() if window is not None else None
        return max(1.0, MINUTE - (now - oldest)) if oldest is not None else MINUTE

    def summary(self, instance_id, now):
        """Return requests, error rate and latency percentiles over the breaker window, across workers.

        `requests` counts every result the breaker saw — client requests and active probes alike — since both decide
        whether the instance is healthy; the latency percentiles are of successful requests only.
        """
        own = self._local_summary(instance_id, now)
        parts = [(own["requests"], own["errors"], own["p50"], own["p95"])]
        parts += [(s["requests"], s["errors"], s["p50"], s["p95"]) for s in self.others_summary.get(instance_id, ())]
        requests = sum(p[0] for p in parts)
        errors = sum(p[1] for p in parts)

        def merged(index):
            weighted = [(p[index], max(p[0], 1)) for p in parts if p[index] is not None]
            if not weighted:
                return None
            return round(sum(v * w for v, w in weighted) / sum(w for _, w in weighted), 2)

        return {
            "requests": requests,
            "error_rate": round(errors / requests, 4) if requests else 0.0,
            "latency_ms_p50": merged(2),
            "latency_ms_p95": merged(3),
        }

    # --- recording ----------------------------------------------------------------------------------------------

    def started(self, instance_id, now=None):
        """Note a request sent to an instance."""
        self.in_flight[instance_id] += 1
        self._count(instance_id, time.time() if now is None else now, 1, 0)

    def finished(self, instance_id, *, ok, latency_ms=None, detail="", counts=True, retry_after=None, tokens=None):
        """Note how a request to an instance ended and update its breaker (and its token use, for tpm).

        `counts=False` is for outcomes that say nothing about the instance (a client error, a client gone away).
        """
        self.in_flight[instance_id] -= 1
        now = time.time()
        if tokens:
            self._count(instance_id, now, 0, tokens)
        if not counts:
            return
        self.observe(instance_id, ok=ok, now=now, detail=detail, retry_after=retry_after)
        if ok and latency_ms is not None:
            previous = self.ewma.get(instance_id)
            self.ewma[instance_id] = (
                latency_ms if previous is None else (EWMA_ALPHA * latency_ms + (1 - EWMA_ALPHA) * previous)
            )
            self.latencies.setdefault(instance_id, deque(maxlen=LATENCY_SAMPLES)).append(latency_ms)

    def _count(self, instance_id, now, requests, tokens):
        """Add to an instance's last-minute usage, forgetting what is older (so the window never grows unbounded)."""
        window = self.minute.get(instance_id)
        if window is None:
            window = self.minute[instance_id] = UsageWindow()
        window.add(now, requests, tokens)

    def observe(self, instance_id, *, ok, now, detail="", retry_after=None):
        """Feed one result (a request or an active probe) to the instance's breaker."""
        state = self.breaker(instance_id)
        obs = self.observations.setdefault(instance_id, Observations())
        if retry_after:
            obs.add(now, False, self.policy.window_seconds)
            new = health.cool_down(state, now, retry_after, f"rate limited upstream (Retry-After {retry_after:g}s)")
        else:
            new = health.record(state, obs, self.policy, now, ok, detail)
        if new != state:
            if new.state == OPEN and state.current(now) != OPEN:
                logger.warning("instance %s breaker opened: %s", instance_id, new.reason)
            elif new.state == CLOSED and state.state != CLOSED:
                logger.info("instance %s breaker closed", instance_id)
            self._set(instance_id, new)

    def _set(self, instance_id, state):
        """Change a breaker here and mark it for publishing."""
        self.breakers[instance_id] = state
        if self._redis is not None:
            self._dirty.add(instance_id)

    # --- sharing through Redis ----------------------------------------------------------------------------------

    def start_sync(self):
        """Start syncing with Redis in the running event loop (no-op without REDIS_URL)."""
        if not self.redis_url or self._sync_task is not None:
            return
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def stop_sync(self):
        """Stop syncing and withdraw this worker's numbers."""
        if self._sync_task is None:
            return
        self._sync_task.cancel()
        try:
            await self._sync_task
        except asyncio.CancelledError:
            pass
        try:
            await self._redis.delete(self._key(f"worker:{self.worker_id}"))
            await self._redis.srem(self._key("workers"), self.worker_id)
        except Exception:  # best effort: the key expires anyway
            pass
        await self._redis.aclose()
        self._sync_task = self._redis = None

    async def _sync_loop(self):
        """Sync every SYNC_SECONDS until cancelled; a Redis outage degrades to local state."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        while True:
            try:
                skipped = await self.sync_once()
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self._unreachable(exc)
            except Exception as exc:
                # Not an outage: keep the other workers' last figures rather than act as if they had none.
                self._faulty(f"{exc.__class__.__name__}: {exc}", exc_info=True)
            else:
                self._reachable()
                self._faulty("; ".join(skipped) if skipped else None)
            await asyncio.sleep(SYNC_SECONDS)

    def _unreachable(self, exc):
        """Fall back to this worker's own figures while Redis cannot be reached (one warning per outage)."""
        if self.shared_ok is not False:
            logger.warning("Redis unreachable (%s): routing state is per worker until it is back", exc)
        self.shared_ok = False
        self.others_in_flight.clear()
        self.others_ewma.clear()
        self.others_summary.clear()
        self.others_minute.clear()

    def _reachable(self):
        """Note that Redis answered (logging the end of an outage)."""
        if self.shared_ok is False:
            logger.warning("Redis reachable again: routing state is shared across workers again")
        self.shared_ok = True

    def _faulty(self, fault, exc_info=False):
        """Note what went wrong with this sync, or None; log when a fault starts and when syncs work again."""
        if fault and self.sync_fault is None:
            logger.error("routing state sync failed: %s", fault, exc_info=exc_info)
        elif not fault and self.sync_fault is not None:
            logger.warning("routing state sync works again")
        self.sync_fault = fault or None

    def _key(self, name):
        """Return a namespaced Redis key."""
        return f"{KEY_PREFIX}{name}"

    def _worker_payload(self, now):
        """Return what this worker publishes about itself."""
        return json.dumps(
            {
                "in_flight": {k: v for k, v in self.in_flight.items() if v},
                "ewma": self.ewma,
                "summary": {i: self._local_summary(i, now) for i in self.observations},
                "minute": {i: list(w.totals(now)) for i, w in self.minute.items() if w.entries},
            }
        )

    def _local_summary(self, instance_id, now):
        """Return this worker's own requests, errors and latency percentiles for an instance."""
        obs = self.observations.get(instance_id)
        requests, errors = obs.counts(now, self.policy.window_seconds) if obs is not None else (0, 0)
        samples = sorted(self.latencies.get(instance_id, ()))
        return {
            "requests": requests,
            "errors": errors,
            "p50": percentile(samples, 50),
            "p95": percentile(samples, 95),
        }

    async def sync_once(self):
        """Publish this worker's changes and numbers; read everyone else's."""
        now = time.time()
        dirty, self._dirty = self._dirty, set()
        pipe = self._redis.pipeline(transaction=False)
        if dirty:
            pipe.hset(self._key("breakers"), mapping={i: json.dumps(self.breaker(i).to_dict()) for i in dirty})
        pipe.set(self._key(f"worker:{self.worker_id}"), self._worker_payload(now), ex=WORKER_TTL_SECONDS)
        pipe.sadd(self._key("workers"), self.worker_id)
        pipe.hgetall(self._key("breakers"))
        pipe.smembers(self._key("workers"))
        try:
            results = await pipe.execute()
        except Exception:
            self._dirty |= dirty  # publish them next time
            raise
        shared_breakers, workers = results[-2], results[-1]
        skipped = []  # what was malformed, and left out of this sync
        for raw_id, raw_state in shared_breakers.items():
            instance_id = raw_id.decode(errors="replace")
            if instance_id in self._dirty:
                continue
            try:
                self.breakers[instance_id] = _breaker_from_redis(raw_state)
            except ValueError as exc:
                skipped.append(f"breaker of instance {instance_id!r} is malformed ({exc})")
        others = sorted(w.decode(errors="replace") for w in workers)
        others = [w for w in others if w != self.worker_id]
        payloads = await self._redis.mget([self._key(f"worker:{w}") for w in others]) if others else []
        in_flight, ewma, summary, minute, gone = Counter(), {}, {}, {}, []
        for worker, payload in zip(others, payloads, strict=True):
            if payload is None:
                gone.append(worker)
                continue
            try:
                data = _worker_from_redis(payload)
            except ValueError as exc:
                skipped.append(f"figures of worker {worker!r} are malformed ({exc})")
                continue
            in_flight.update(data["in_flight"])
            for instance_id, value in data["ewma"].items():
                ewma.setdefault(instance_id, []).append(value)
            for instance_id, value in data["summary"].items():
                summary.setdefault(instance_id, []).append(value)
            for instance_id, (requests, tokens) in data["minute"].items():
                total = minute.setdefault(instance_id, [0, 0])
                total[0] += requests
                total[1] += tokens
        if gone:
            await self._redis.srem(self._key("workers"), *gone)
        self.others_in_flight, self.others_ewma, self.others_summary = in_flight, ewma, summary
        self.others_minute = minute
        return skipped


def _number(value, what, integer=False):
    """Return value if it is a number of sane size (a whole one if asked); raise ValueError otherwise."""
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not -MAX_FIGURE <= value <= MAX_FIGURE:
        raise ValueError(f"{what} is not a {'whole ' if integer else ''}number: {value!r:.80}")
    return value


def _mapping(value, what):
    """Return value if it is a JSON object; raise ValueError otherwise."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    return value


def _json_object(raw, what):
    """Return the JSON object in raw bytes; raise ValueError otherwise."""
    try:
        return _mapping(json.loads(raw), what)
    except ValueError:
        raise ValueError(f"{what} is not a JSON object") from None


def _breaker_from_redis(raw):
    """Return the BreakerState a worker published; raise ValueError if it is not one."""
    data = _json_object(raw, "breaker")
    state = data.get("state", CLOSED)
    if state not in (CLOSED, OPEN, HALF_OPEN):
        raise ValueError(f"unknown state {state!r:.80}")
    if not isinstance(data.get("reason", ""), str):
        raise ValueError("reason is not text")
    _number(data.get("until", 0.0), "until")
    _number(data.get("trips", 0), "trips", integer=True)
    return BreakerState.from_dict(data)


def _worker_from_redis(raw):
    """Return the figures a worker published (see `_worker_payload`); raise ValueError if they are not such."""
    data = _json_object(raw, "payload")
    in_flight = {i: _number(v, "in_flight", True) for i, v in _mapping(data.get("in_flight", {}), "in_flight").items()}
    ewma = {i: _number(v, "ewma") for i, v in _mapping(data.get("ewma", {}), "ewma").items()}
    summary = {}
    for instance_id, value in _mapping(data.get("summary", {}), "summary").items():
        value = _mapping(value, "summary")
        summary[instance_id] = {
            "requests": _number(value.get("requests"), "summary requests", True),
            "errors": _number(value.get("errors"), "summary errors", True),
            **{p: None if value.get(p) is None else _number(value[p], f"summary {p}") for p in ("p50", "p95")},
        }
    minute = {}
    for instance_id, value in _mapping(data.get("minute", {}), "minute").items():
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError("minute is not a [requests, tokens] pair")
        minute[instance_id] = [_number(v, "minute", True) for v in value]
    return {"in_flight": in_flight, "ewma": ewma, "summary": summary, "minute": minute}


_state = None


def get():
    """Return this process's routing state."""
    global _state
    if _state is None:
        _state = RoutingState(settings.REDIS_URL)
    return _state
