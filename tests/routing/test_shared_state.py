"""Routing state shared between gateway processes through Redis, and what happens without it."""

import asyncio
import json
import logging
import shutil
import subprocess
import threading
import time

import openai
import pytest
import redis

from routing.state import RoutingState
from routing.state_sync import SYNC_SECONDS
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


async def _until(predicate, timeout=3):
    """Wait, letting the event loop run, until predicate() is true; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _sync_messages(caplog):
    """Return the (level, message) pairs routing.state_sync logged."""
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "routing.state_sync"]


def _run_with_another_worker(redis_url, scenario):
    """Run scenario(me) while this worker syncs, after another worker published one request in flight to "i"."""
    other, me = RoutingState(redis_url), RoutingState(redis_url)

    async def main():
        other.start_sync()
        other.started("i")
        me.start_sync()
        try:
            await _until(lambda: me.total_in_flight("i") == 1)
            await scenario(me)
        finally:
            await me.stop_sync()
            await other.stop_sync()

    asyncio.run(main())


def test_malformed_values_in_redis_are_skipped_and_logged_as_such_not_as_an_outage(redis_url, caplog):
    caplog.set_level(logging.INFO, logger="routing.state_sync")
    store = redis.Redis.from_url(redis_url)

    async def scenario(me):
        store.sadd("chatvault:workers", "w-bad")
        store.set("chatvault:worker:w-bad", b"{not json", ex=60)
        store.hset("chatvault:breakers", "i-bad", json.dumps({"state": "open", "until": "soon"}))
        await _until(lambda: me.sync.fault is not None)
        await asyncio.sleep(5 * SYNC_SECONDS)  # several syncs while the values are still there
        assert me.total_in_flight("i") == 1, "the other worker's figures are still in use"
        assert me.usable("i-bad", time.time()), "the malformed breaker was not adopted"
        store.delete("chatvault:worker:w-bad")
        store.hdel("chatvault:breakers", "i-bad")
        await _until(lambda: me.sync.fault is None)

    _run_with_another_worker(redis_url, scenario)

    messages = _sync_messages(caplog)
    errors = [m for level, m in messages if level >= logging.ERROR]
    assert len(errors) == 2, messages  # one per worker, not one per sync
    assert "figures of worker 'w-bad' are malformed" in errors[0]
    assert "breaker of instance 'i-bad' is malformed" in errors[0]
    assert "routing state sync works again" in [m for _, m in messages]
    assert not [m for _, m in messages if "Redis unreachable" in m]


def test_a_redis_error_that_is_not_an_outage_keeps_the_other_workers_figures(redis_url, caplog):
    caplog.set_level(logging.INFO, logger="routing.state_sync")
    store = redis.Redis.from_url(redis_url)

    async def scenario(me):
        store.delete("chatvault:breakers")
        store.set("chatvault:breakers", "a string where a hash belongs")  # every sync now fails with WRONGTYPE
        await _until(lambda: me.sync.fault is not None)
        await asyncio.sleep(5 * SYNC_SECONDS)
        assert me.total_in_flight("i") == 1, "the other worker's last figures are kept"
        store.delete("chatvault:breakers")
        await _until(lambda: me.sync.fault is None)

    _run_with_another_worker(redis_url, scenario)

    records = [r for r in caplog.records if r.name == "routing.state_sync" and r.levelno >= logging.ERROR]
    assert len(records) == 2, _sync_messages(caplog)  # one per worker
    assert "ResponseError" in records[0].getMessage() and "WRONGTYPE" in records[0].getMessage()
    assert records[0].exc_info is not None, "the traceback is logged"
    assert not [m for _, m in _sync_messages(caplog) if "Redis unreachable" in m]
