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
