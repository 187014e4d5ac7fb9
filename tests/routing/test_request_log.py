"""The batched request-log writer: rows survive a database outage, and retries back off instead of spinning."""

import time
import uuid
from datetime import UTC, datetime

import pytest
from django.db import connection

from routing.models import RequestLog
from routing.request_log import RequestLogWriter
from tests.gateway import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def row(**fields):
    """Return a minimal RequestLog row dict."""
    return {
        "request_id": uuid.uuid4(),
        "created_at": datetime.now(UTC),
        "outcome": "ok",
        "status_code": 200,
        "decision": {"instance": "x"},
        **fields,
    }


def test_rows_are_written_in_batches_with_every_field():
    writer = RequestLogWriter(batch_size=50, flush_seconds=0.05)
    writer.start()
    try:
        for i in range(120):
            writer.submit(row(user=f"u{i}", prompt_tokens=i))
        wait_until(lambda: writer.pending() == 0, message="rows written")
    finally:
        writer.stop()
    assert RequestLog.objects.count() == 120
    stored = RequestLog.objects.get(user="u7")
    assert stored.prompt_tokens == 7 and stored.decision == {"instance": "x"} and stored.endpoint == "chat.completions"


def test_a_whole_batch_is_written_at_once_and_a_partial_one_waits_for_the_flush_interval():
    writer = RequestLogWriter(batch_size=3, flush_seconds=60)
    writer.start()
    try:
        for _ in range(3):
            writer.submit(row())
        wait_until(lambda: writer.written == 3, timeout=5, message="the full batch written without waiting 60 s")
        writer.submit(row())
        time.sleep(0.3)
        assert writer.written == 3 and writer.pending() == 1, "one row is no batch: it waits for the interval"
    finally:
        writer.stop()
    assert writer.written == 4 and RequestLog.objects.count() == 4, "stopping writes what is left"


def test_an_outage_loses_nothing_and_retries_back_off():
    writer = RequestLogWriter(batch_size=100, flush_seconds=0.05)
    with connection.cursor() as cur:
        cur.execute("ALTER TABLE routing_requestlog RENAME TO routing_requestlog_away")
    writer.start()
    try:
        for _ in range(2000):
            writer.submit(row())
        time.sleep(1.5)
        # Backing off from 0.05 s doubling: a handful of tries, not one per full batch that arrived.
        assert 1 <= writer.failures <= 6
        assert writer.written == 0
    finally:
        with connection.cursor() as cur:
            cur.execute("ALTER TABLE routing_requestlog_away RENAME TO routing_requestlog")
    try:
        wait_until(lambda: writer.pending() == 0, timeout=15, message="rows written after the outage")
    finally:
        writer.stop()
    assert RequestLog.objects.count() == 2000 and writer.failures == 0


HOSTILE_VALUES = [
    {"user": "nul\x00user"},
    {"user": "lone\ud800surrogate"},
    {"requested_model": "\udfffmodel\x00"},
    {"error_message": "upstream said \x00\ud800"},
    {"prompt_tokens": -5},
    {"prompt_tokens": 2**40},
    {"completion_tokens": "12"},
    {"completion_tokens": 1.5},
    {"latency_ms": float("nan")},
    {"cost_usd": 10**9},
    {"decision": {"model": {"requested": "a\x00b\ud800"}, "ratio": float("inf"), "k\x00": [1, "\udc80"]}},
]


@pytest.mark.parametrize("fields", HOSTILE_VALUES, ids=lambda f: next(iter(f)))
def test_a_hostile_value_is_made_storable_when_the_row_is_queued(fields):
    from routing import request_log

    request_log.start()
    try:
        request_log.record(row(**fields))
        request_log.record(row(user="after"))
        wait_until(lambda: request_log.stats()["pending"] == 0, message="rows written")
    finally:
        request_log.stop()
    assert RequestLog.objects.count() == 2
    assert request_log.stats()["dropped"] == 0
    stored = RequestLog.objects.exclude(user="after").get()
    # Stored as a whole row, not in the writer's last-resort safe form.
    assert "unstorable_row" not in stored.decision
    assert "\x00" not in stored.user + stored.requested_model + stored.error_message
    (name, value), = fields.items()
    if name in ("user", "requested_model", "error_message"):
        assert getattr(stored, name) == value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
    elif name != "decision":
        assert name in stored.decision["unstorable"], "the row says what was wrong"


def test_a_row_the_database_refuses_is_isolated_and_every_other_row_is_written():
    writer = RequestLogWriter(batch_size=500, flush_seconds=0.05)
    # Submitted as-is (not through record()), so nothing made these storable: the database refuses them.
    bad = [row(user="nul\x00"), row(prompt_tokens=-5), row(completion_tokens=2**40), row(decision={"x": "\x00"})]
    good = [row(user=f"good{i}") for i in range(60)]
    writer.start()
    try:
        for item in good[:30] + bad + good[30:]:
            writer.submit(item)
        wait_until(lambda: writer.pending() == 0, message="rows written")
        assert writer.is_alive()
        writer.submit(row(user="later"))
        wait_until(lambda: writer.pending() == 0, message="later row written")
    finally:
        writer.stop()
    assert writer.dropped == 0
    assert RequestLog.objects.filter(user__startswith="good").count() == 60
    assert RequestLog.objects.filter(user="later").count() == 1
    rewritten = RequestLog.objects.filter(request_id__in=[b["request_id"] for b in bad])
    assert rewritten.count() == 4
    for stored in rewritten:
        assert "unstorable_row" in stored.decision and stored.decision["unstorable_row"]["error"]


def test_no_request_can_blind_the_log_through_the_gateway(gateway, fake):
    """Every poisoning vector found so far, then 20 normal requests: every request has its row, none is dropped."""
    import json

    from tests.factories import make_key, make_model, wait_for_model

    make_model("vault-poison", [fake])
    raw = make_key(name="poison")
    wait_for_model(gateway, raw, "vault-poison")
    auth = {"Authorization": f"Bearer {raw}", "Content-Type": "application/json"}
    hello = [{"role": "user", "content": "hi"}]

    def chat(body, headers=auth):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return gateway.request("POST", "/v1/chat/completions", data, headers)[0]

    sent = []
    for user in ("nul\u0000user", "lone\ud800"):
        sent.append(chat({"model": "vault-poison", "messages": hello, "user": user}))
    for model in ("vault\u0000poison", "vault\ud800"):
        sent.append(chat({"model": model, "messages": hello}))
    sent.append(chat(b'{"model": "vault-\xed\xa0\x80", "messages": [{"role": "user", "content": "hi"}]}'))
    for path in ("/v1/models/%00", "/v1/models/%ED%A0%80", "/v1/models/a%00b"):
        sent.append(gateway.request("GET", path, headers=auth)[0])
    sent.append(chat({"model": "vault-poison", "messages": hello, "x\u0000": {"api_key": "k"}}))
    sent.append(chat({"model": "vault-poison", "messages": hello, "tools\ud800": [{"api_base": "http://x"}]}))
    for bad in (-5, 2**40, "12", 1.5):
        fake.set_config(usage={"prompt_tokens": bad})
        sent.append(chat({"model": "vault-poison", "messages": hello}))
        sent.append(chat({"model": "vault-poison", "messages": hello, "stream": True}))
    fake.reset_config()
    assert all(status < 500 for status in sent), sent
    assert sent[-8:] == [200] * 8, "a malformed usage from the upstream never fails a served response"
    for _ in range(20):
        assert chat({"model": "vault-poison", "messages": hello}) == 200

    key_rows = RequestLog.objects.filter(api_key__name="poison")
    expected = len(sent) + 20 + 1  # and the wait_for_model listing
    wait_until(lambda: key_rows.count() >= expected, message=f"{expected} rows")
    assert key_rows.count() == expected
    assert gateway.health()["request_log"]["dropped"] == 0
    assert not key_rows.filter(decision__has_key="unstorable_row").exists(), "every row stored whole"
    usage_rows = key_rows.filter(decision__has_key="usage_problems")
    assert usage_rows.count() == 8 and not usage_rows.exclude(outcome="ok").exists()
