"""This worker's view of instance health and load: breakers, in-flight counts, latency EWMAs, rpm/tpm use.

Nothing here costs a Redis round trip on the request path: requests read and update in-process dicts. When
`REDIS_URL` is set, `routing.state_sync` shares the state with the other workers in the background (this worker's
figures and breaker changes out, everyone else's into the `others_*` fields); without it the state is per process.

Reads change nothing, so a selector can score every model (`model_view`) without side effects. The windows (the
rpm/tpm minute, the breaker's results window) forget old entries on writes instead: each write trims its own window,
and a request's start trims every window at most every TIDY_SECONDS, so a read skips at most that long's worth of
expired entries.

What stays local on purpose: the failure counters that decide when to trip (each worker trips on what it saw) and
the retry budgets (one per model: a per-process share of that model's requests).
"""

import dataclasses
import logging
import time
from collections import Counter, deque

from django.conf import settings

from routing import health, state_sync
from routing.health import CLOSED, HALF_OPEN, OPEN, BreakerState, Observations, RetryBudget
from routing.stats import percentile

logger = logging.getLogger(__name__)

EWMA_ALPHA = 0.3
LATENCY_SAMPLES = 256
MINUTE = 60.0  # the window of rpm and tpm limits
TIDY_SECONDS = 0.1  # how often a request's start trims every window (reads never do)


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
        """Return (requests, tokens) within the minute ending now (older entries are skipped, not forgotten)."""
        requests, tokens = self.requests, self.tokens
        horizon = now - MINUTE
        for when, old_requests, old_tokens in self.entries:
            if when >= horizon:
                break
            requests -= old_requests
            tokens -= old_tokens
        return requests, tokens

    def oldest(self, now):
        """Return the time of the oldest entry within the minute ending now, or None."""
        horizon = now - MINUTE
        for when, _, _ in self.entries:
            if when >= horizon:
                return when
        return None


def _results(obs, now, window_seconds):
    """Return (results, failures) of Observations within the window ending now (older ones skipped, not forgotten)."""
    results, failures, _, _ = _split_results(obs, now, window_seconds)
    return results, failures


def _split_results(obs, now, window_seconds):
    """Return (results, failures, probes, failed probes) of Observations within the window ending now."""
    results, failures, probes, probe_failures = len(obs.recent), obs.failures, obs.probes, obs.probe_failures
    horizon = now - window_seconds
    for when, ok, probe in obs.recent:
        if when >= horizon:
            break
        results -= 1
        failures -= not ok
        probes -= probe
        probe_failures -= probe and not ok
    return results, failures, probes, probe_failures


@dataclasses.dataclass(frozen=True, slots=True)
class ModelHealth:
    """How a model's instances are doing now, as plain values: see `RoutingState.model_view`."""

    model: str
    instances: int  # enabled instances
    usable: int  # those a request could go to now: not drained, breaker letting it through, under rpm/tpm
    requests: int  # results of the usable ones over the breaker window: every worker's requests, and the probes
    success_rate: float | None  # the share of those results that succeeded; None without any
    latency_ms: float | None  # the mean of the usable ones' latency EWMAs (see `latency_ms`); None if unmeasured
    in_flight: int  # requests in flight to the usable ones, across workers


class RoutingState:
    """Breakers, in-flight counts, latency EWMAs and the retry budget of this worker."""

    def __init__(self, redis_url=""):
        self.redis_url = redis_url
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
        self._reset_seen = {}  # instance id -> breaker_reset_at applied
        self._tidy_at = 0.0  # when a request's start next trims every window
        self.applied = None  # the snapshot whose policy is in force
        self.sync = None  # the state_sync.RedisSync sharing this state, while it runs

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
        oldest = window.oldest(now) if window is not None else None
        return max(1.0, MINUTE - (now - oldest)) if oldest is not None else MINUTE

    def summary(self, instance_id, now):
        """Return client requests, their error rate and latency percentiles over the breaker window, across workers.

        Client traffic only: active probes feed the same breaker, but are counted apart (`probe_counts`); the latency
        percentiles are of successful requests only.
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

    def probe_counts(self, instance_id, now):
        """Return {"ok", "failed"}: the active probes of an instance over the breaker window.

        Every worker reads every probe result (`routing.snapshot.poll_probes`), so this worker's count is everyone's.
        """
        obs = self.observations.get(instance_id)
        _, _, probes, failed = _split_results(obs, now, self.policy.window_seconds) if obs else (0, 0, 0, 0)
        return {"ok": probes - failed, "failed": failed}

    def _local_summary(self, instance_id, now):
        """Return this worker's own client requests, errors and latency percentiles for an instance."""
        obs = self.observations.get(instance_id)
        requests = errors = 0
        if obs is not None:
            results, failures, probes, probe_failures = _split_results(obs, now, self.policy.window_seconds)
            requests, errors = results - probes, failures - probe_failures
        samples = sorted(self.latencies.get(instance_id, ()))
        return {
            "requests": requests,
            "errors": errors,
            "p50": percentile(samples, 50),
            "p95": percentile(samples, 95),
        }

    def model_view(self, model, now):
        """Return the ModelHealth of a ModelConfig now, from the instances a request could go to.

        Only reads, as a selector scoring every model on every request needs, and cheap for it: no percentile here
        (those need a sort of the samples).
        """
        open_to = [
            i for i in model.instances if not i.drained and self.usable(i.id, now) and not self.over_limit(i, now)
        ]
        window_seconds = self.policy.window_seconds
        requests = errors = in_flight = 0
        latencies = []
        for inst in open_to:
            obs = self.observations.get(inst.id)
            if obs is not None:
                own_requests, own_errors = _results(obs, now, window_seconds)
                requests += own_requests
                errors += own_errors
            for other in self.others_summary.get(inst.id, ()):
                requests += other["requests"]
                errors += other["errors"]
            in_flight += self.total_in_flight(inst.id)
            latency = self.latency_ms(inst.id)
            if latency is not None:
                latencies.append(latency)
        return ModelHealth(
            model=model.name,
            instances=len(model.instances),
            usable=len(open_to),
            requests=requests,
            success_rate=(requests - errors) / requests if requests else None,
            latency_ms=sum(latencies) / len(latencies) if latencies else None,
            in_flight=in_flight,
        )

    # --- recording ----------------------------------------------------------------------------------------------

    def budget(self, model_name):
        """Return the retry budget of a model (one per model: one model's outage leaves others their retries)."""
        budget = self.budgets.get(model_name)
        if budget is None:
            budget = self.budgets[model_name] = RetryBudget(ratio=self.retry_ratio)
        return budget

    def started(self, instance_id, now=None):
        """Note a request sent to an instance (and trim every window if it is time to)."""
        now = time.time() if now is None else now
        self.in_flight[instance_id] += 1
        self._count(instance_id, now, 1, 0)
        if now >= self._tidy_at:
            self.tidy(now)

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

    def observe(self, instance_id, *, ok, now, detail="", retry_after=None, probe=False):
        """Feed one result (a client request, or an active probe when `probe`) to the instance's breaker."""
        state = self.breaker(instance_id)
        obs = self.observations.setdefault(instance_id, Observations())
        if retry_after:
            obs.add(now, False, self.policy.window_seconds, probe)
            new = health.cool_down(state, now, retry_after, f"rate limited upstream (Retry-After {retry_after:g}s)")
        else:
            new = health.record(state, obs, self.policy, now, ok, detail, probe)
        if new != state:
            if new.state == OPEN and state.current(now) != OPEN:
                logger.warning("instance %s breaker opened: %s", instance_id, new.reason)
            elif new.state == CLOSED and state.state != CLOSED:
                logger.info("instance %s breaker closed", instance_id)
            self._set(instance_id, new)

    def _set(self, instance_id, state):
        """Change a breaker here and mark it for publishing."""
        self.breakers[instance_id] = state
        if self.sync is not None:
            self.sync.dirty.add(instance_id)

    def tidy(self, now):
        """Forget what has left the rpm/tpm minute and the breaker window, in every instance's figures."""
        self._tidy_at = now + TIDY_SECONDS
        for window in self.minute.values():
            window.trim(now)
        window_seconds = self.policy.window_seconds
        for obs in self.observations.values():
            obs.trim(now, window_seconds)

    # --- sharing (see routing.state_sync) -----------------------------------------------------------------------

    def start_sync(self):
        """Start sharing this state through Redis in the running event loop (no-op without REDIS_URL)."""
        if self.redis_url and self.sync is None:
            self.sync = state_sync.RedisSync(self, self.redis_url)
            self.sync.start()

    async def stop_sync(self):
        """Stop sharing this state and withdraw this worker's figures."""
        sync, self.sync = self.sync, None
        if sync is not None:
            await sync.stop()

    def published(self, now):
        """Return this worker's own figures as plain values, for the other workers."""
        minute = {}
        for instance_id, window in self.minute.items():
            totals = window.totals(now)
            if any(totals):
                minute[instance_id] = list(totals)
        return {
            "in_flight": {k: v for k, v in self.in_flight.items() if v},
            "ewma": self.ewma,
            "summary": {i: self._local_summary(i, now) for i in self.observations},
            "minute": minute,
        }

    def forget_others(self):
        """Drop the other workers' figures (Redis cannot be reached: they are stale)."""
        self.others_in_flight.clear()
        self.others_ewma.clear()
        self.others_summary.clear()
        self.others_minute.clear()


_state = None


def get():
    """Return this process's routing state."""
    global _state
    if _state is None:
        _state = RoutingState(settings.REDIS_URL)
    return _state
