"""Sharing the routing state (`routing.state`) between gateway workers through Redis.

What is shared: breaker states (closed/open/half-open, reason, until), in-flight counts, latency EWMAs and each
worker's requests and tokens per instance over the last minute (for rpm/tpm limits), plus a per-worker summary of
recent results for the stats endpoint. A background task syncs every `SYNC_SECONDS`, publishing this worker's figures
and breaker changes and reading everyone else's; requests never wait on it. A breaker opened by one worker is
therefore respected by all others within about one sync interval.

When Redis is unreachable, a worker logs one warning, forgets the other workers' (now stale) figures and carries on
with its own until Redis is back; no request fails for it. Any other sync error (a value in Redis that is not what a
worker writes, a bug) is logged as what it is, once until the sync works again: a malformed entry is skipped and the
rest of what the workers published is read as usual.
"""

import asyncio
import json
import logging
import os
import time
import uuid
from collections import Counter

from routing.health import CLOSED, HALF_OPEN, OPEN, BreakerState

logger = logging.getLogger(__name__)

SYNC_SECONDS = 0.1
WORKER_TTL_SECONDS = 5
KEY_PREFIX = "chatvault:"
MAX_FIGURE = 1e15  # larger numbers (and NaN, infinities) from another worker are malformed


class RedisSync:
    """Keeps one worker's RoutingState in step with the other workers' through Redis, in the running event loop."""

    def __init__(self, routing_state, redis_url):
        self.state = routing_state
        self.redis_url = redis_url
        self.worker_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dirty = set()  # breakers changed here and not yet published
        self.redis = None
        self.task = None
        self.shared_ok = None  # None: no sync yet; True/False: Redis reachable or not
        self.fault = None  # what went wrong with the last sync other than Redis being unreachable, or None

    def start(self):
        """Start syncing every SYNC_SECONDS in the running event loop."""
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self):
        """Stop syncing and withdraw this worker's figures."""
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        try:
            await self.redis.delete(self._key(f"worker:{self.worker_id}"))
            await self.redis.srem(self._key("workers"), self.worker_id)
        except Exception:  # best effort: the key expires anyway
            pass
        await self.redis.aclose()
        self.task = self.redis = None

    async def _loop(self):
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
        self.state.forget_others()

    def _reachable(self):
        """Note that Redis answered (logging the end of an outage)."""
        if self.shared_ok is False:
            logger.warning("Redis reachable again: routing state is shared across workers again")
        self.shared_ok = True

    def _faulty(self, fault, exc_info=False):
        """Note what went wrong with this sync, or None; log when a fault starts and when syncs work again."""
        if fault and self.fault is None:
            logger.error("routing state sync failed: %s", fault, exc_info=exc_info)
        elif not fault and self.fault is not None:
            logger.warning("routing state sync works again")
        self.fault = fault or None

    def _key(self, name):
        """Return a namespaced Redis key."""
        return f"{KEY_PREFIX}{name}"

    async def sync_once(self):
        """Publish this worker's changes and figures; read everyone else's. Return what was malformed and skipped."""
        st = self.state
        now = time.time()
        dirty, self.dirty = self.dirty, set()
        pipe = self.redis.pipeline(transaction=False)
        if dirty:
            pipe.hset(self._key("breakers"), mapping={i: json.dumps(st.breaker(i).to_dict()) for i in dirty})
        pipe.set(self._key(f"worker:{self.worker_id}"), json.dumps(st.published(now)), ex=WORKER_TTL_SECONDS)
        pipe.sadd(self._key("workers"), self.worker_id)
        pipe.hgetall(self._key("breakers"))
        pipe.smembers(self._key("workers"))
        try:
            results = await pipe.execute()
        except Exception:
            self.dirty |= dirty  # publish them next time
            raise
        shared_breakers, workers = results[-2], results[-1]
        skipped = []  # what was malformed, and left out of this sync
        for raw_id, raw_state in shared_breakers.items():
            instance_id = raw_id.decode(errors="replace")
            if instance_id in self.dirty:
                continue
            try:
                st.breakers[instance_id] = _breaker_from_redis(raw_state)
            except ValueError as exc:
                skipped.append(f"breaker of instance {instance_id!r} is malformed ({exc})")
        others = sorted(w.decode(errors="replace") for w in workers)
        others = [w for w in others if w != self.worker_id]
        payloads = await self.redis.mget([self._key(f"worker:{w}") for w in others]) if others else []
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
            await self.redis.srem(self._key("workers"), *gone)
        st.others_in_flight, st.others_ewma, st.others_summary = in_flight, ewma, summary
        st.others_minute = minute
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
    """Return the figures a worker published (see `RoutingState.published`); raise ValueError if they are not such."""
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
