"""Fault tests: real fake-provider processes inject faults; a real gateway must hide them while it can.

Each test checks what the client saw, what the upstreams saw, and that there is exactly one RequestLog row per
client request.
"""

import itertools
import json
import socket
import time

import openai
import pytest

from routing.models import Outcome
from tests.factories import instance_stats, make_key, make_model, set_instance, tune, wait_for_model
from tests.gateway import wait_until
from tests.helpers import MESSAGES, wait_rows

pytestmark = pytest.mark.django_db(transaction=True)


_pairs_made = itertools.count()


class Client:
    """An SDK client bound to one model, answering which instance served each request."""

    def __init__(self, gateway, raw_key, model):
        self.sdk = openai.OpenAI(base_url=gateway.url, api_key=raw_key, max_retries=0)
        self.model = model

    def __call__(self, stream=False):
        """Send one request; return the instance that served it (raise the SDK's error otherwise)."""
        create = self.sdk.chat.completions
        if stream:
            with create.with_streaming_response.create(model=self.model, messages=MESSAGES, stream=True) as resp:
                body = resp.read().decode()
                assert body.rstrip().endswith("data: [DONE]"), body[-200:]
                return resp.headers["x-chatvault-instance"]
        resp = create.with_raw_response.create(model=self.model, messages=MESSAGES)
        resp.parse()
        return resp.headers["x-chatvault-instance"]


@pytest.fixture
def pair(gateway, fake, fake_b):
    """Return (chat, id of the instance on `fake`, id of the one on `fake_b`) for a fresh two-instance model.

    A fresh model name per test gives it a fresh rotation and retry budget in the long-lived gateway process.
    """
    name = f"vault-ha-{next(_pairs_made)}"
    model = make_model(name, [fake, fake_b])
    raw = make_key()
    wait_for_model(gateway, raw, name)
    return Client(gateway, raw, name), *model.instance_ids


def _closed_port():
    """Return a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failover_hides_a_failing_instance_and_its_breaker_opens(pair, fake, fake_b):
    chat, sick, healthy = pair
    fake.set_config(status=503)
    served = [chat(stream=i % 2 == 1) for i in range(30)]

    assert set(served) == {healthy}, "no request failed and none was served by the sick instance"
    # Round-robin sends every other request to the sick instance until 5 failures in a row open its breaker.
    assert len(fake.requests()) == 5
    assert len(fake_b.requests()) == 30
    rows = wait_rows(30)
    assert {r.outcome for r in rows} == {Outcome.OK}
    failed_over = [r for r in rows if r.attempts == 2]
    assert len(failed_over) == 5
    assert [a["instance"] for a in failed_over[0].decision["attempts"]] == [sick, healthy]
    assert failed_over[0].decision["attempts"][0]["status"] == 503
    later = rows[-1].decision
    assert later["attempts"] == [
        {"instance": healthy, "outcome": "ok", "status": 200, "ms": later["attempts"][0]["ms"]}
    ]
    assert later["skipped"][sick].startswith("open: 5 consecutive failures")


@pytest.mark.parametrize("fault", ["connection_refused", "hang", "garbage", "disconnect", "status_500"])
def test_each_kind_of_fault_fails_over_without_a_client_error(gateway, pair, fake, fault):
    chat, sick, healthy = pair
    if fault == "connection_refused":
        set_instance(gateway, sick, api_base=f"http://127.0.0.1:{_closed_port()}/v1")
    elif fault == "hang":
        set_instance(gateway, sick, timeout=0.5)
        fake.set_config(fault="hang")
    elif fault == "status_500":
        fake.set_config(status=500)
    else:
        fake.set_config(fault=fault)
    served = [chat(stream=stream) for stream in (False, True, False, True)]
    assert set(served) == {healthy}
    rows = wait_rows(4)
    assert {r.outcome for r in rows} == {Outcome.OK}
    assert sum(r.attempts for r in rows) == 6  # round-robin tried the sick one twice


def test_429_with_retry_after_cools_the_instance_for_that_long(pair, fake):
    chat, sick, healthy = pair
    fake.set_config(status=429, retry_after=2)
    assert chat() == healthy  # the first pick was the rate-limited one: failed over
    assert len(fake.requests()) == 1
    cooled_at = time.monotonic()
    fake.reset_config()
    served = [chat() for _ in range(6)]
    assert set(served) == {healthy}, "cooling: no traffic to the rate-limited instance"
    assert len(fake.requests()) == 1
    time.sleep(max(0, 2.1 - (time.monotonic() - cooled_at)))
    served = [chat() for _ in range(6)]
    assert sick in served, "after Retry-After the instance gets traffic again"


def trip_with_a_one_second_cooldown(gateway, chat, fake):
    """Make the instance on `fake` fail until its breaker opens, with a cooldown of 1 s."""
    tune(gateway, breaker_cooldown_seconds=1)
    fake.set_config(status=503)
    for _ in range(10):
        chat()
    assert len(fake.requests()) == 5  # five failures in a row: open now


def test_breaker_goes_open_half_open_closed(gateway, pair, fake):
    chat, sick, healthy = pair
    trip_with_a_one_second_cooldown(gateway, chat, fake)
    fake.reset_config()
    fake.clear_requests()
    time.sleep(1.1)  # half-open: trial requests go through, one at a time
    served = [chat() for _ in range(8)]
    assert served.count(sick) >= 2
    # Two successful trials closed it: round-robin again, strictly alternating.
    assert all(a != b for a, b in zip(served[-4:], served[-3:], strict=False)), served


def test_a_failed_trial_reopens_with_a_longer_cooldown(gateway, pair, fake):
    chat, sick, healthy = pair
    trip_with_a_one_second_cooldown(gateway, chat, fake)
    time.sleep(1.1)
    for _ in range(4):
        chat()
    assert len(fake.requests()) == 6, "exactly one trial while half-open, and it failed"
    time.sleep(1.1)  # the second cooldown is 2 s: still open
    for _ in range(4):
        chat()
    assert len(fake.requests()) == 6


def test_when_no_instance_can_serve_the_client_gets_503_with_retry_after(pair, fake, fake_b):
    chat, _, _ = pair
    fake.set_config(status=503)
    fake_b.set_config(status=503)
    errors = []
    for _ in range(12):
        with pytest.raises(openai.APIStatusError) as exc:
            chat()
        errors.append(exc.value)
    assert errors[0].status_code == 502  # the upstreams' own failure while they were still tried
    assert errors[-1].status_code == 503
    assert int(errors[-1].response.headers["retry-after"]) in range(1, 11)
    rows = wait_rows(12)
    assert rows[-1].outcome == Outcome.NO_CAPACITY and rows[-1].attempts == 0


def test_a_full_outage_does_not_multiply_upstream_traffic(gateway, pair, fake, fake_b):
    chat, _, _ = pair
    # Keep the breakers closed so only the retry budget stands between clients and the upstreams.
    tune(gateway, breaker_consecutive_failures=10_000, breaker_min_requests=10_000)
    fake.set_config(status=503)
    fake_b.set_config(status=503)
    for _ in range(100):
        with pytest.raises(openai.InternalServerError):
            chat()
    upstream_attempts = len(fake.requests()) + len(fake_b.requests())
    assert 100 <= upstream_attempts <= 120
    rows = wait_rows(100)
    assert sum(r.attempts for r in rows) == upstream_attempts
    assert {r.status_code for r in rows} == {502}


def test_a_genuine_client_error_costs_one_extra_attempt_reaches_the_client_and_trips_no_breaker(gateway, fake,
                                                                                                fake_b):  # fmt: skip
    model = make_model("vault-trio", [fake, fake_b, fake_b])  # three instances: a third attempt would be possible
    raw = make_key()
    wait_for_model(gateway, raw, "vault-trio")
    chat = Client(gateway, raw, "vault-trio")
    fake.set_config(status=400)
    fake_b.set_config(status=400)
    # 12 refusals each: counted as failures, they would open the breakers (5 in a row, or half of 10 requests).
    for i in range(18):
        with pytest.raises(openai.BadRequestError) as exc:
            chat(stream=i % 2 == 1)
        assert exc.value.code == "upstream_rejected"
        assert exc.value.body["message"] == (
            "The upstream provider rejected the request: Fake provider rejected the request."
        )
    assert len(fake.requests()) + len(fake_b.requests()) == 36, "each request tried on two instances, never a third"
    rows = wait_rows(18)
    assert {(r.status_code, r.attempts) for r in rows} == {(400, 2)}
    assert not any(a.get("blamed") for r in rows for a in r.decision["attempts"])
    stats = instance_stats(gateway)
    assert {stats[i]["state"] for i in model.instance_ids} == {"closed"}
    fake.reset_config()
    fake_b.reset_config()
    assert len({chat() for _ in range(6)}) == 3, "every instance still in rotation"


def test_a_client_error_of_a_model_with_one_instance_is_not_retried(gateway, fake):
    make_model("vault-single", [fake])
    raw = make_key()
    wait_for_model(gateway, raw, "vault-single")
    fake.set_config(status=422)
    with pytest.raises(openai.BadRequestError):  # the gateway answers any upstream refusal as 400
        Client(gateway, raw, "vault-single")()
    assert len(fake.requests()) == 1
    (row,) = wait_rows(1)
    assert row.attempts == 1 and row.status_code == 400


@pytest.mark.parametrize(
    ("knobs", "status", "said"),
    [
        ({"reject": "invalid_model"}, 400, "Invalid model name passed in model="),
        ({"reject": "invalid_api_key"}, 401, "Incorrect API key provided."),
        ({"reject": "invalid_api_key", "status": 400}, 400, "Incorrect API key provided."),
    ],
)
def test_a_misconfigured_instance_is_failed_over_and_its_breaker_opens_with_the_reason(gateway, pair, fake, knobs,
                                                                                       status, said):  # fmt: skip
    chat, bad, good = pair
    fake.set_config(**knobs)
    served = [chat(stream=i % 2 == 1) for i in range(20)]

    assert set(served) == {good}, "every request served, by the good instance"
    assert len(fake.requests()) == 5, "five rejections in a row opened the bad one's breaker"
    entry = instance_stats(gateway)[bad]
    assert entry["state"] == "open"
    assert entry["reason"].startswith(f"5 consecutive failures, last: misconfigured, HTTP {status}: {said}")
    rows = wait_rows(20)
    assert {r.outcome for r in rows} == {Outcome.OK}
    failed_over = [r for r in rows if r.attempts == 2]
    assert len(failed_over) == 5
    assert "Upstream said" not in failed_over[0].error_message
    assert rows[-1].decision["skipped"][bad] == f"open: {entry['reason']}"


def test_a_misconfigured_instance_alone_is_the_gateway_fault_not_the_client(gateway, fake):
    make_model("vault-lone", [fake])
    raw = make_key()
    wait_for_model(gateway, raw, "vault-lone")
    fake.set_config(reject="invalid_model")
    with pytest.raises(openai.InternalServerError) as exc:
        Client(gateway, raw, "vault-lone")()
    assert exc.value.status_code == 502 and exc.value.code == "upstream_misconfigured"
    (row,) = wait_rows(1)
    assert "Upstream said: Invalid model name passed in model=" in row.error_message


def test_a_refusal_its_peer_serves_counts_against_the_refusing_instance(gateway, pair, fake):
    chat, bad, good = pair
    fake.set_config(status=400)  # words that say nothing of the deployment: only its peers show it is at fault
    served = [chat(stream=i % 2 == 1) for i in range(20)]

    assert set(served) == {good}
    assert len(fake.requests()) == 5
    entry = instance_stats(gateway)[bad]
    assert entry["state"] == "open"
    assert entry["reason"] == (
        "5 consecutive failures, last: "
        "HTTP 400 to a request another instance served: Fake provider rejected the request."
    )
    rows = wait_rows(20)
    failed_over = [r for r in rows if r.attempts == 2]
    assert len(failed_over) == 5
    assert failed_over[0].decision["attempts"][0]["blamed"] is True


def test_a_drained_instance_gets_no_new_requests(gateway, pair, fake):
    chat, sick, healthy = pair
    set_instance(gateway, sick, drained=True)
    assert {chat() for _ in range(6)} == {healthy}
    assert fake.requests() == []


def test_a_client_leaving_a_non_streaming_request_cancels_the_upstream_call(gateway, fake):
    make_model("vault-slow", [fake])
    raw = make_key()
    wait_for_model(gateway, raw, "vault-slow")
    fake.set_config(latency_ms=5000)
    body = json.dumps({"model": "vault-slow", "messages": MESSAGES}).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {raw}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    wait_until(lambda: fake.stats()["in_flight"] == 1, timeout=3, message="upstream call started")
    sock.close()
    # The upstream answers after 5 s; a call the gateway left running would end in an answer, not a cancellation.
    wait_until(lambda: fake.stats()["cancelled"] == 1, timeout=4, message="upstream call cancelled")
    assert fake.stats()["in_flight"] == 0
    (row,) = wait_rows(1)
    assert row.outcome == Outcome.CLIENT_DISCONNECTED
    assert row.decision["attempts"][0]["outcome"] == "cancelled"


def test_an_instance_at_its_rpm_limit_is_skipped_until_the_minute_passes(gateway, pair, fake, fake_b):
    chat, limited, other = pair
    set_instance(gateway, limited, rpm=2)
    served = [chat() for _ in range(8)]
    assert served.count(limited) == 2 and len(fake.requests()) == 2
    rows = wait_rows(8)
    assert rows[-1].decision["skipped"][limited] == "rpm limit reached (2/2 in the last minute)"


def test_when_every_instance_is_at_its_limit_the_client_gets_503_with_retry_after(gateway, pair):
    chat, first, second = pair
    set_instance(gateway, first, rpm=1)
    set_instance(gateway, second, rpm=1)
    chat()
    chat()
    with pytest.raises(openai.APIStatusError) as exc:
        chat()
    assert exc.value.status_code == 503
    assert 1 <= int(exc.value.response.headers["retry-after"]) <= 60
