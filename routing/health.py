"""The per-instance circuit breaker and the retry budget: pure state machines over plain values.

closed → open after `consecutive_failures` failures in a row, or when at least `error_ratio` of the requests of the
last `window_seconds` failed (once there were `min_requests` of them) → half_open once the cooldown has passed
(`cooldown_seconds`, doubling with every trip in a row up to `max_cooldown_seconds`) → closed after
`half_open_successes` successful trials; a failed trial opens it again with a longer cooldown. An upstream 429 with
Retry-After opens it for exactly that long ("cooling"), without counting as a trip.

Nothing here reads the clock, the network or the database: callers pass `now` and get new values back.
"""

import dataclasses
from collections import deque

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Tunables, from RoutingSettings."""

    consecutive_failures: int = 5
    error_ratio: float = 0.5
    min_requests: int = 10
    window_seconds: float = 60.0
    cooldown_seconds: float = 10.0
    max_cooldown_seconds: float = 300.0
    half_open_successes: int = 2


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerState:
    """What every worker agrees on about an instance (this is what is shared through Redis)."""

    state: str = CLOSED
    reason: str = ""
    until: float = 0.0  # when an open breaker lets a trial through (epoch seconds)
    trips: int = 0  # trips in a row, for the doubling cooldown

    def current(self, now):
        """Return the state as of now: an open breaker whose cooldown has passed is half-open."""
        if self.state == OPEN and now >= self.until:
            return HALF_OPEN
        return self.state

    def to_dict(self):
        """Return the state as plain JSON-able values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        """Return a state from `to_dict` output (unknown keys ignored)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclasses.dataclass(slots=True)
class Observations:
    """One worker's recent results for an instance (local, never shared): client requests and probes alike."""

    consecutive_failures: int = 0
    trial_successes: int = 0
    recent: deque = dataclasses.field(default_factory=deque)  # (time, ok, probe), oldest first
    failures: int = 0  # failed results in `recent`, kept so the error ratio costs O(1)
    probes: int = 0  # results in `recent` that were active probes, so client traffic can be told apart in O(1)
    probe_failures: int = 0

    def add(self, now, ok, window_seconds, probe=False):
        """Record a result and forget those older than the window."""
        self.recent.append((now, ok, probe))
        if not ok:
            self.failures += 1
        if probe:
            self.probes += 1
            self.probe_failures += not ok
        self.trim(now, window_seconds)
        if ok:
            self.consecutive_failures = 0
        else:
            self.consecutive_failures += 1

    def trim(self, now, window_seconds):
        """Forget results older than the window (amortised O(1): each result is dropped once)."""
        horizon = now - window_seconds
        while self.recent and self.recent[0][0] < horizon:
            _, old_ok, old_probe = self.recent.popleft()
            if not old_ok:
                self.failures -= 1
            if old_probe:
                self.probes -= 1
                self.probe_failures -= not old_ok

    def counts(self, now, window_seconds):
        """Return (results, failures) within the window ending now."""
        self.trim(now, window_seconds)
        return len(self.recent), self.failures

    def clear(self):
        """Forget every result."""
        self.recent.clear()
        self.failures = self.probes = self.probe_failures = 0
        self.consecutive_failures = 0

    def error_ratio(self):
        """Return (failures / requests, requests) over the window."""
        total = len(self.recent)
        return (self.failures / total if total else 0.0), total


def _cooldown(policy, trips):
    """Return the cooldown after the given number of trips in a row."""
    return min(policy.cooldown_seconds * (2 ** max(trips - 1, 0)), policy.max_cooldown_seconds)


def _open(state, policy, now, reason):
    """Return the state tripped open."""
    trips = state.trips + 1
    return BreakerState(state=OPEN, reason=reason, until=now + _cooldown(policy, trips), trips=trips)


def record(state, obs, policy, now, ok, detail="", probe=False):
    """Return the breaker state after one result (obs is updated in place); `probe` marks an active probe's result.

    `detail` says what failed (e.g. "HTTP 503") and ends up in the reason an operator reads.
    """
    current = state.current(now)
    obs.add(now, ok, policy.window_seconds, probe)
    if current == HALF_OPEN:
        if not ok:
            obs.trial_successes = 0
            return _open(state, policy, now, f"trial request failed ({detail})" if detail else "trial request failed")
        obs.trial_successes += 1
        if obs.trial_successes >= policy.half_open_successes:
            obs.trial_successes = 0
            obs.clear()
            return BreakerState()
        return BreakerState(state=HALF_OPEN, reason=state.reason, until=state.until, trips=state.trips)
    if current == OPEN or ok:
        return state
    if obs.consecutive_failures >= policy.consecutive_failures:
        return _open(state, policy, now, f"{obs.consecutive_failures} consecutive failures, last: {detail or 'error'}")
    ratio, total = obs.error_ratio()
    if total >= policy.min_requests and ratio >= policy.error_ratio:
        return _open(state, policy, now, f"{ratio:.0%} of {total} requests failed in {policy.window_seconds:.0f}s")
    return state


def cool_down(state, now, seconds, reason):
    """Return the state opened for exactly `seconds` (an upstream asked us to back off), keeping the trip count."""
    until = max(now + seconds, state.until if state.state == OPEN else 0.0)
    return BreakerState(state=OPEN, reason=reason, until=until, trips=state.trips)


def reset():
    """Return a closed breaker (an operator's reset)."""
    return BreakerState()


class RetryBudget:
    """A token bucket that bounds retries to a share of requests, so a full outage cannot multiply traffic.

    Each request deposits `ratio` tokens (up to `burst`); each retry spends one. Over any run of N requests at most
    `burst + ratio * N` retries happen: with the defaults (0.1, 10), 100 requests send at most 120 attempts.
    """

    def __init__(self, ratio=0.1, burst=10.0):
        self.ratio = ratio
        self.burst = burst
        self.tokens = burst

    def on_request(self):
        """Credit the budget for one client request."""
        self.tokens = min(self.burst, self.tokens + self.ratio)

    def try_spend(self):
        """Spend one retry if the budget allows it; return whether it did."""
        if self.tokens >= 1.0 - 1e-9:  # ten deposits of 0.1 add up to 0.999…
            self.tokens -= 1.0
            return True
        return False
