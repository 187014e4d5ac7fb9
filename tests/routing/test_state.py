"""Unit tests for the per-worker routing state (no Redis): rpm/tpm windows, in-flight, latency, trials."""

import time
import types

from routing.health import HALF_OPEN, BreakerPolicy
from routing.state import RoutingState


def instance(rpm=None, tpm=None, id="i"):
    """Return an object with the fields the state reads from an InstanceConfig."""
    return types.SimpleNamespace(id=id, rpm=rpm, tpm=tpm)


def test_an_instance_at_its_rpm_is_over_the_limit_until_the_minute_passes():
    st = RoutingState()
    inst = instance(rpm=3)
    for t in (100.0, 110.0, 120.0):
        st.started("i", now=t)
        st.finished("i", ok=True)
    assert st.over_limit(inst, 121.0) == "rpm limit reached (3/3 in the last minute)"
    assert st.limit_frees_in("i", 121.0) == 39.0
    assert st.over_limit(inst, 160.5) is None  # the request at 100 s left the window


def test_tokens_count_against_tpm():
    st = RoutingState()
    st.started("i")
    st.finished("i", ok=True, tokens=900)
    assert st.over_limit(instance(tpm=1000), time.time()) is None
    st.started("i")
    st.finished("i", ok=True, tokens=200)
    assert "tpm limit reached (1100/1000" in st.over_limit(instance(tpm=1000), time.time())


def test_no_limits_means_never_over():
    st = RoutingState()
    for _ in range(1000):
        st.started("i")
    assert st.over_limit(instance(), 0) is None


def test_in_flight_and_latency_follow_requests():
    st = RoutingState()
    st.started("i")
    st.started("i")
    assert st.total_in_flight("i") == 2
    st.finished("i", ok=True, latency_ms=100)
    st.finished("i", ok=True, latency_ms=200)
    assert st.total_in_flight("i") == 0
    assert st.latency_ms("i") == 0.3 * 200 + 0.7 * 100


def test_a_half_open_instance_takes_one_trial_at_a_time():
    st = RoutingState()
    st.policy = BreakerPolicy(consecutive_failures=1, cooldown_seconds=0.0)
    st.started("i")
    st.finished("i", ok=False, detail="HTTP 500")
    now = time.time() + 1
    assert st.breaker("i").current(now) == HALF_OPEN
    assert st.usable("i", now)
    st.started("i")
    assert not st.usable("i", now), "a trial is already in flight"


def test_the_usage_window_forgets_old_requests_as_new_ones_arrive():
    st = RoutingState()
    for t in range(1000):
        st.started("i", now=float(t))
    assert len(st.minute["i"].entries) <= 61
    assert st.used("i", 999.0) == (61, 0)


def test_the_latency_percentiles_are_nearest_rank():
    st = RoutingState()
    for ms in range(100, 0, -1):
        st.started("i")
        st.finished("i", ok=True, latency_ms=float(ms))
    summary = st.summary("i", time.time())
    assert summary["latency_ms_p50"] == 50.0
    assert summary["latency_ms_p95"] == 95.0, "the 95th of 100 samples, not the 96th"
