"""The worker lifecycle in-process: shutdown waits for requests still finishing; maintenance faults log quietly."""

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime

import pytest

from routing import request_log, runtime, snapshot
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


def test_a_lasting_maintenance_fault_is_logged_when_it_starts_and_when_it_ends(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "MAINTENANCE_SECONDS", 0.005)
    caplog.set_level(logging.WARNING, logger="routing.runtime")

    async def scenario():
        maintainer = asyncio.create_task(runtime._maintain())
        # A bad record fails one round, and each round takes one: twenty rounds in a row fail, then all is well.
        snapshot.probe_results.extend([("bad record",)] * 20)
        while snapshot.probe_results:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        maintainer.cancel()

    try:
        asyncio.run(scenario())
    finally:
        snapshot.probe_results.clear()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "routing.runtime"]
    assert [level for level, _ in messages] == ["ERROR", "WARNING"]
    assert "maintenance failed" in messages[0][1] and "recovered" in messages[1][1]
