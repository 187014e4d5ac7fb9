"""The event-loop lag monitor (`routing.loop_monitor`): a loop that is blocked shows up as lag, and with stacks on,
the stall is recorded with what the loop's thread was doing."""

import asyncio
import json
import time

import pytest

from routing.loop_monitor import TICK_SECONDS, LoopMonitor


def test_lags_are_counted_over_each_threshold():
    monitor = LoopMonitor()
    for lag in (0.2, 1.5, 3.0, 7.0, 120.0):
        monitor.observe(lag)
    stats = monitor.stats()
    assert stats["ticks"] == 5 and stats["max_lag_ms"] == 120.0
    assert stats["ticks_late_over_ms"] == {"1": 4, "2": 3, "5": 2, "10": 1, "50": 1, "100": 1}
    assert stats["mean_lag_ms"] == round((0.2 + 1.5 + 3.0 + 7.0 + 120.0) / 5, 3)


def blocked_loop(monitor, *, stacks, block_s=0.03):
    """Run a loop with the monitor on; block it once for block_s inside a function named hold_the_loop."""

    def hold_the_loop():
        time.sleep(block_s)

    async def main():
        monitor.start(stacks=stacks)
        await asyncio.sleep(TICK_SECONDS * 3)
        hold_the_loop()
        await asyncio.sleep(TICK_SECONDS * 3)
        monitor.stop()

    asyncio.run(main())


def test_a_blocked_loop_is_a_lag_as_long_as_the_block():
    monitor = LoopMonitor()
    blocked_loop(monitor, stacks=False)
    stats = monitor.stats()
    assert stats["ticks"] >= 3
    assert 10 <= stats["max_lag_ms"] < 200, "the 30 ms block delays the tick due meanwhile by up to 30 ms"
    assert stats["ticks_late_over_ms"]["10"] >= 1
    assert stats["recent_stalls"] == [], "stacks are only recorded when asked for"


def test_with_stacks_on_a_stall_records_what_the_loops_thread_was_doing():
    monitor = LoopMonitor()
    blocked_loop(monitor, stacks=True)
    stalls = monitor.stats()["recent_stalls"]
    assert stalls, "the watchdog saw the 30 ms stall while it lasted"
    loop_stack = stalls[0]["threads"]["event loop"]
    assert any("hold_the_loop" in frame for frame in loop_stack)
    json.dumps(stalls)  # served on /healthz as they are


@pytest.mark.django_db(transaction=True)
def test_a_running_gateway_reports_its_loop_on_healthz(gateway):
    first = gateway.health()["event_loop"]
    time.sleep(TICK_SECONDS * 10)
    second = gateway.health()["event_loop"]
    assert second["ticks"] > first["ticks"] > 0
    assert set(second["ticks_late_over_ms"]) == {"1", "2", "5", "10", "50", "100"}
    assert second["recent_stalls"] == [], "stack recording is off by default"
    # Tuned for the tail at start-up (routing.runtime.tune_for_latency).
    assert second["gil_switch_interval_ms"] == 1.0
    assert second["gc_thresholds"][2] == 100
    assert second["gc"]["gen0"]["collections"] > 0
