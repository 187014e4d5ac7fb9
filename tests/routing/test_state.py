"""Unit tests for the per-worker routing state (no Redis): rpm/tpm windows, in-flight, latency, the model view."""

import time
import types

from routing.health import HALF_OPEN, BreakerPolicy
from routing.state import TIDY_SECONDS, ModelHealth, RoutingState


def instance(rpm=None, tpm=None, id="i", drained=False):
    """Return an object with the fields the state reads from an InstanceConfig."""
    return types.SimpleNamespace(id=id, rpm=rpm, tpm=tpm, drained=drained)


def model(*instances):
    """Return an object with the fields the state reads from a ModelConfig."""
    return types.SimpleNamespace(name="m", instances=instances)


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


def test_the_model_view_sums_up_the_instances_a_request_could_go_to():
    st = RoutingState()
    st.policy = BreakerPolicy(consecutive_failures=1, cooldown_seconds=60.0)
    now = time.time()
    a, b = instance(id="a"), instance(id="b")
    for ms in (100.0, 100.0):
        st.started("a")
        st.finished("a", ok=True, latency_ms=ms)
    st.started("b")
    st.finished("b", ok=True, latency_ms=200.0)
    st.others_summary["b"] = [{"requests": 7, "errors": 1, "p50": 210.0, "p95": 400.0}]  # another worker's results
    st.started("a")  # in flight
    st.others_in_flight["b"] = 2
    tripped, drained, full = instance(id="c"), instance(id="d", drained=True), instance(id="e", rpm=1)
    st.started("c")
    st.finished("c", ok=False, detail="HTTP 500")
    st.started("e")
    st.finished("e", ok=True, latency_ms=1.0)
    view = st.model_view(model(a, b, tripped, drained, full), now + 1)
    assert view == ModelHealth(
        model="m", instances=5, usable=2, requests=10, success_rate=0.9, latency_ms=150.0, in_flight=3
    )


def test_the_model_view_of_a_model_never_used_knows_nothing_yet():
    view = RoutingState().model_view(model(instance(id="a")), time.time())
    assert (view.usable, view.requests, view.success_rate, view.latency_ms, view.in_flight) == (1, 0, None, None, 0)


def figures(st):
    """Return a copy of everything the state holds about instances."""
    return (
        {i: (list(w.entries), w.requests, w.tokens) for i, w in st.minute.items()},
        {i: (list(o.recent), o.failures, o.consecutive_failures) for i, o in st.observations.items()},
        dict(st.in_flight),
        dict(st.breakers),
        dict(st.ewma),
        {i: list(v) for i, v in st.latencies.items()},
    )


def test_reading_changes_nothing_even_once_the_windows_have_moved_on():
    st = RoutingState()
    inst = instance(rpm=2, tpm=10_000)
    for t in (100.0, 130.0):
        st.started("i", now=t)
        st.observe("i", ok=t > 100, now=t)
        st.in_flight["i"] -= 1
    before = figures(st)
    for now, used, requests in ((161.0, (1, 0), 1), (200.0, (0, 0), 0)):
        assert st.used("i", now) == used
        assert st.over_limit(inst, now) is None
        assert st.limit_frees_in("i", now) == (29.0 if used[0] else 60.0)
        assert st.summary("i", now)["requests"] == requests
        assert st.model_view(model(inst), now).requests == requests
        assert st.published(now)["minute"] == ({"i": [1, 0]} if used[0] else {})
        assert figures(st) == before, "a read changed the state"


def test_a_request_start_forgets_old_entries_of_every_instance_at_most_every_tidy_seconds():
    st = RoutingState()
    st.started("old", now=0.0)
    st.observe("old", ok=True, now=0.0)
    st.started("new", now=60.0)  # tidies: nothing is older than a minute yet
    st.started("new", now=60.0 + TIDY_SECONDS / 2)  # too soon to tidy again
    assert len(st.minute["old"].entries) == 1 and len(st.observations["old"].recent) == 1
    st.started("new", now=60.0 + TIDY_SECONDS)
    assert not st.minute["old"].entries and not st.observations["old"].recent
    assert st.used("old", 61.0) == (0, 0)
