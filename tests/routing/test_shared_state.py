"""Routing state shared between gateway processes through Redis, and what happens without it."""

import json
import shutil
import subprocess
import threading

import openai
import pytest
import redis

from tests.factories import make_key, make_model, wait_for_model, wait_until_open
from tests.gateway import Gateway, free_port, wait_until
from tests.helpers import MESSAGES

pytestmark = pytest.mark.django_db(transaction=True)


def served_by(gateway, raw, model):
    """Send one request; return the instance that served it."""
    client = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    resp = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    return resp.headers["x-chatvault-instance"]


@pytest.fixture
def sick_and_healthy(fake, fake_b):
    """Return (model name, sick instance id, healthy instance id); the instance on `fake` answers 503."""
    model = make_model("vault-shared", [fake, fake_b])
    fake.set_config(status=503)
    return "vault-shared", *model.instance_ids


def test_a_breaker_opened_by_one_worker_is_respected_by_another(database_url, redis_url, sick_and_healthy, fake):
    name, sick, healthy = sick_and_healthy
    raw = make_key()
    with (
        Gateway.start(database_url, redis_url=redis_url) as one,
        Gateway.start(database_url, redis_url=redis_url) as two,
    ):
        wait_for_model(one, raw, name)
        wait_for_model(two, raw, name)
        for _ in range(10):
            assert served_by(one, raw, name) == healthy
        assert len(fake.requests()) == 5  # worker one opened the breaker
        store = redis.Redis.from_url(redis_url)
        raw_state = wait_until(lambda: store.hget("chatvault:breakers", sick), timeout=2, message="breaker shared")
        stored = json.loads(raw_state)
        assert stored["state"] == "open" and "HTTP 503" in stored["reason"]
        wait_until_open(two, sick)  # worker two has read the shared breaker (it never saw a failure itself)
        for _ in range(10):
            assert served_by(two, raw, name) == healthy
        assert len(fake.requests()) == 5, "worker two never tried the instance worker one found broken"


def test_without_redis_each_worker_keeps_its_own_state(database_url, sick_and_healthy, fake):
    name, sick, healthy = sick_and_healthy
    raw = make_key()
    with Gateway.start(database_url) as one, Gateway.start(database_url) as two:
        wait_for_model(one, raw, name)
        wait_for_model(two, raw, name)
        for _ in range(10):
            served_by(one, raw, name)
        for _ in range(10):
            served_by(two, raw, name)
        assert len(fake.requests()) == 10, "each worker found out for itself"


def test_in_flight_counts_and_latency_are_published_for_other_workers(database_url, redis_url, fake):
    make_model("vault-load", [fake])
    raw = make_key()
    fake.set_config(latency_ms=800)
    with Gateway.start(database_url, redis_url=redis_url) as gw:
        wait_for_model(gw, raw, "vault-load")
        client = openai.OpenAI(base_url=gw.url, api_key=raw, max_retries=0, timeout=10)
        thread = threading.Thread(
            target=lambda: client.chat.completions.create(model="vault-load", messages=MESSAGES), daemon=True
        )
        thread.start()
        store = redis.Redis.from_url(redis_url)

        def published():
            workers = [w.decode() for w in store.smembers("chatvault:workers")]
            payloads = [json.loads(p) for p in store.mget([f"chatvault:worker:{w}" for w in workers]) if p]
            return [p for p in payloads if sum(p["in_flight"].values()) == 1]

        assert wait_until(published, timeout=3, message="in-flight count published")
        thread.join(5)
        fake.reset_config()

        def latency_published():
            workers = [w.decode() for w in store.smembers("chatvault:workers")]
            payloads = [json.loads(p) for p in store.mget([f"chatvault:worker:{w}" for w in workers]) if p]
            return any(p["ewma"] and not p["in_flight"] for p in payloads)

        assert wait_until(latency_published, timeout=3, message="latency published, in-flight back to 0")


def test_a_redis_outage_degrades_to_local_state_without_failing_requests(database_url, fake):
    make_model("vault-noredis", [fake])
    raw = make_key()
    with Gateway.start(database_url, redis_url="redis://127.0.0.1:1/0") as gw:
        wait_for_model(gw, raw, "vault-noredis")
        for _ in range(5):
            served_by(gw, raw, "vault-noredis")
        wait_until(lambda: "Redis unreachable" in gw.log(), timeout=3, message="outage warning")
        assert gw.log().count("Redis unreachable") == 1, "one warning, not one per sync"


def test_redis_going_away_mid_run_degrades_and_recovers(database_url, fake, tmp_path):
    server = shutil.which("redis-server")
    assert server, "redis-server is needed for this test"
    port = free_port()
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start_redis():
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _pings(port), timeout=5, message="private redis up")
        return proc

    make_model("vault-flaky-redis", [fake])
    raw = make_key()
    redis_proc = start_redis()
    try:
        with Gateway.start(database_url, redis_url=f"redis://127.0.0.1:{port}/0") as gw:
            wait_for_model(gw, raw, "vault-flaky-redis")
            served_by(gw, raw, "vault-flaky-redis")
            redis_proc.terminate()
            redis_proc.wait(5)
            wait_until(lambda: "Redis unreachable" in gw.log(), timeout=5, message="outage warning")
            for _ in range(5):
                served_by(gw, raw, "vault-flaky-redis")  # no request fails for it
            redis_proc = start_redis()
            wait_until(lambda: "Redis reachable again" in gw.log(), timeout=5, message="recovery")
            assert gw.log().count("Redis unreachable") == 1
    finally:
        redis_proc.terminate()
        redis_proc.wait(5)


def _pings(port):
    """Return whether a Redis answers on the port."""
    try:
        return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2).ping()
    except redis.exceptions.ConnectionError:
        return False
