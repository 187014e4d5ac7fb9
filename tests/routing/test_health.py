"""Unit tests for the circuit breaker and the retry budget (pure state machines)."""

import pytest

from routing.health import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerPolicy,
    BreakerState,
    Observations,
    RetryBudget,
    cool_down,
    record,
    reset,
)

POLICY = BreakerPolicy()  # 5 in a row, or >= 50 % of >= 10 in 60 s; cooldown 10 s doubling to 300 s; 2 trials


def feed(results, state=None, obs=None, start=1000.0, step=1.0, policy=POLICY):
    """Feed results (True = ok) one per `step` seconds; return (state, obs, time of the last one)."""
    state, obs, now = state or BreakerState(), obs or Observations(), start
    for ok in results:
        state = record(state, obs, policy, now, ok, "HTTP 503")
        now += step
    return state, obs, now - step


def test_it_opens_after_five_failures_in_a_row_not_four():
    state, _, _ = feed([False] * 4)
    assert state.state == CLOSED
    state, _, now = feed([False] * 5)
    assert state.state == OPEN and state.until == now + 10
    assert "5 consecutive failures" in state.reason and "HTTP 503" in state.reason


def test_a_success_resets_the_run_of_failures():
    state, _, _ = feed([False, False, False, False, True, False, False, False, False])
    assert state.state == CLOSED


def test_it_opens_on_the_error_ratio_over_enough_requests():
    state, _, _ = feed([False, True] * 4 + [False])  # 5 of 9 failed: too few requests
    assert state.state == CLOSED
    state, _, _ = feed([True, False] * 5)  # 5 of 10 failed, never 5 in a row
    assert state.state == OPEN and "50% of 10 requests" in state.reason


def test_old_results_leave_the_window():
    state, obs, now = feed([False, True] * 4 + [True], step=10)  # spread over 80 s
    state = record(state, obs, POLICY, now + 10, False)
    assert state.state == CLOSED  # only the last 60 s count: too few requests for the ratio


def test_open_becomes_half_open_after_the_cooldown_and_closes_after_two_trials():
    state, obs, now = feed([False] * 5)
    assert state.current(now + 9.9) == OPEN
    assert state.current(now + 10) == HALF_OPEN
    state = record(state, obs, POLICY, now + 10, True)
    assert state.current(now + 10) == HALF_OPEN
    state = record(state, obs, POLICY, now + 11, True)
    assert state == BreakerState()


def test_a_failed_trial_reopens_with_a_doubled_cooldown_capped_at_five_minutes():
    state, obs, now = feed([False] * 5)
    cooldowns = []
    for _ in range(8):
        now = state.until
        state = record(state, obs, POLICY, now, False)
        assert state.state == OPEN and "trial request failed" in state.reason
        cooldowns.append(state.until - now)
    assert cooldowns == [20, 40, 80, 160, 300, 300, 300, 300]


def test_failures_while_open_change_nothing():
    state, obs, now = feed([False] * 5)
    assert record(state, obs, POLICY, now + 1, False) == state


def test_retry_after_cools_an_instance_for_exactly_that_long():
    state = cool_down(BreakerState(), 1000.0, 7, "rate limited upstream (Retry-After 7s)")
    assert state.current(1006.9) == OPEN and state.current(1007) == HALF_OPEN
    assert state.trips == 0


def test_reset_closes():
    state, _, _ = feed([False] * 5)
    assert reset() == BreakerState() and reset().state == CLOSED


def test_state_round_trips_through_plain_values():
    state, _, _ = feed([False] * 5)
    assert BreakerState.from_dict(state.to_dict()) == state


@pytest.mark.parametrize("requests", [100, 250, 1000])
def test_retry_budget_allows_at_most_20_percent_more_attempts_in_any_100_requests(requests):
    budget = RetryBudget(ratio=0.1, burst=10)
    attempts = []
    for _ in range(requests):  # a full outage: every attempt fails and wants a retry
        budget.on_request()
        count = 1
        while count < 3 and budget.try_spend():
            count += 1
        attempts.append(count)
    windows = [sum(attempts[i : i + 100]) for i in range(0, requests - 99)]
    assert max(windows) <= 120


def test_retry_budget_refills_with_traffic():
    budget = RetryBudget(ratio=0.1, burst=10)
    while budget.try_spend():
        pass
    assert not budget.try_spend()
    for _ in range(10):
        budget.on_request()
    assert budget.try_spend()
