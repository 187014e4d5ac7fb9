"""The worker lifecycle in-process: shutdown waits for requests still finishing."""

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from routing import request_log, runtime
from routing.models import RequestLog


@pytest.mark.django_db(transaction=True)
def test_shutdown_waits_for_requests_in_flight_and_writes_their_rows():
    request_id = uuid.uuid4()

    async def request_finishing_late():
        await asyncio.sleep(0.3)
        request_log.record({"request_id": request_id, "created_at": datetime.now(UTC), "outcome": "server_shutdown",
                            "status_code": 503, "decision": {}})  # fmt: skip
        runtime.request_finished()

    async def scenario():
        runtime.request_started()
        request = asyncio.create_task(request_finishing_late())
        await runtime.shutdown()
        assert request.done()
        await request

    request_log.start()
    try:
        asyncio.run(scenario())
        assert RequestLog.objects.filter(request_id=request_id).exists()
    finally:
        request_log.stop()


def test_shutdown_gives_up_waiting_for_a_request_that_never_finishes(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "DRAIN_SECONDS", 0.2)
    runtime.request_started()
    try:
        began = time.monotonic()
        asyncio.run(runtime.shutdown())
        assert time.monotonic() - began < 2
    finally:
        runtime.request_finished()
    assert "1 request(s) still in flight at shutdown" in caplog.text
