"""Graceful shutdown: requests that outlive `--timeout-graceful-shutdown` are answered, and recorded, before exit."""

import json
import threading
import time
import uuid

import pytest

from routing.models import Outcome, RequestLog
from tests.factories import make_key, make_model, wait_for_model
from tests.gateway import Gateway, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hi"}]
GRACE_SECONDS = 2


def post_chat(gw, raw, model, stream, results, name):
    """POST a chat completion and keep (status, headers, body) or the exception under results[name]."""
    body = json.dumps({"model": model, "messages": MESSAGES, "stream": stream}).encode()
    headers = {"Authorization": f"Bearer {raw}", "Content-Type": "application/json"}
    try:
        results[name] = gw.request("POST", "/v1/chat/completions", body, headers=headers, timeout=60)
    except Exception as exc:  # an answer cut short is what this test looks for
        results[name] = exc


def test_requests_cut_short_by_the_shutdown_answer_and_are_recorded(database_url, fake, fake_b):
    make_model("vault-stalls", [fake])
    make_model("vault-quick", [fake_b])
    raw = make_key()
    # Rows would sit in memory for a minute: only the shutdown flush can write them in time.
    with Gateway.start(
        database_url, graceful_timeout=GRACE_SECONDS, chatvault_log_flush_seconds=60, chatvault_log_batch_size=100000
    ) as gw:
        wait_for_model(gw, raw, "vault-stalls")
        wait_for_model(gw, raw, "vault-quick")
        fake.set_config(fault="stall")  # streams: a few chunks, then nothing; others: half a body, then nothing
        fake_b.set_config(latency_ms=1000)  # well within the grace period
        results = {}
        calls = {
            "stream-1": ("vault-stalls", True),
            "stream-2": ("vault-stalls", True),
            "plain-1": ("vault-stalls", False),
            "plain-2": ("vault-stalls", False),
            "quick": ("vault-quick", False),
        }
        threads = [
            threading.Thread(target=post_chat, args=(gw, raw, model, stream, results, name))
            for name, (model, stream) in calls.items()
        ]
        for thread in threads:
            thread.start()
        wait_until(lambda: fake.stats()["in_flight"] == 4 and fake_b.stats()["in_flight"] == 1, message="upstreams")
        assert gw.health()["request_log"]["dropped"] == 0
        sent_at = time.monotonic()
        # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is the signal's.
        assert gw.terminate() in (0, -15)
        assert time.monotonic() - sent_at < GRACE_SECONDS + 5
        for thread in threads:
            thread.join(10)
        log = gw.log()

    assert "ChatVault worker stopped" in log
    assert "Exception in ASGI application" not in log and "still in flight" not in log

    status, _, body = results["quick"]
    assert status == 200 and json.loads(body)["choices"]  # finished within the grace period, served as usual
    ids = {}
    for name in ("plain-1", "plain-2"):
        status, headers, body = results[name]
        assert status == 503, body
        assert json.loads(body) == {
            "error": {
                "message": "The gateway is shutting down; retry the request.",
                "type": "api_error",
                "param": None,
                "code": "server_shutdown",
            }
        }
        ids[name] = uuid.UUID(headers["x-request-id"])
    for name in ("stream-1", "stream-2"):
        status, headers, body = results[name]
        assert status == 200
        events = [e for e in body.decode().split("\n\n") if e]
        assert events[0].startswith("data: {") and b"[DONE]" not in body
        assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "server_shutdown"
        ids[name] = uuid.UUID(headers["x-request-id"])

    rows = {r.request_id: r for r in RequestLog.objects.filter(endpoint="chat.completions")}
    assert len(rows) == 5
    for name, request_id in ids.items():
        assert rows[request_id].outcome == Outcome.SERVER_SHUTDOWN, name
        assert rows[request_id].status_code == (200 if name.startswith("stream") else 503)
    assert [r.outcome for r in rows.values()].count(Outcome.OK) == 1
