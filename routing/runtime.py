"""Per-worker lifecycle: load the snapshot, start the refresher and the log and feedback writers; flush everything on
shutdown.

Driven by the ASGI lifespan protocol (see `chatvault_site.asgi`), so uvicorn's graceful shutdown on SIGTERM waits
for in-flight requests and then writes every queued RequestLog and Feedback row before the process exits.

uvicorn waits `--timeout-graceful-shutdown` seconds for in-flight requests, then cancels the rest and starts the
lifespan shutdown without waiting for them. The API handler turns that cancellation into `stop_serving()`, so each
such request answers "server shutting down" and records its row; `shutdown()` waits for them before it stops the
log writer.
"""

import asyncio
import gc
import logging
import sys
import time

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from experiments import feedback
from routing import loop_monitor, request_log, snapshot, state

logger = logging.getLogger(__name__)

_state = {"refresher": None, "started": False, "maintenance": None, "in_flight": 0, "stopping": False}
MAINTENANCE_SECONDS = 0.2
# gc threshold 2: a full collection is considered after this many generation-1 collections (Python's default is 10).
FULL_COLLECTION_EVERY = 100
# How long shutdown waits for requests cancelled by the server to answer and record themselves.
DRAIN_SECONDS = 5.0
_lock = None


def started():
    """Return whether this worker has loaded its snapshot and started its threads."""
    return _state["started"]


def request_started():
    """Count an API request in flight."""
    _state["in_flight"] += 1


def request_finished():
    """Count an API request done."""
    _state["in_flight"] -= 1


def stop_serving():
    """Note that the server is cancelling the requests its graceful shutdown left: they answer accordingly."""
    _state["stopping"] = True


def stopping():
    """Return whether the server is cancelling in-flight requests because it is shutting down."""
    return _state["stopping"]


def _check_migrated():
    """Refuse to start on a database that lacks some of this release's migrations, with the fix in the message."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if pending:
        names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in pending[:5])
        raise ImproperlyConfigured(
            f"The database is missing {len(pending)} migration(s) ({names}…): run `python manage.py migrate` first."
        )


def _start_sync():
    """Load the snapshot and start the background threads (blocking)."""
    _check_migrated()
    snapshot.reload()
    request_log.start()
    feedback.start()
    refresher = snapshot.Refresher()
    refresher.start()
    _state["refresher"] = refresher
    _state["started"] = True


async def startup():
    """Start this worker, off the event loop's thread."""
    global _lock
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        if not _state["started"]:
            await asyncio.to_thread(_start_sync)
            state.get().start_sync()
            _state["maintenance"] = asyncio.get_running_loop().create_task(_maintain())
            loop_monitor.monitor.start(stacks=settings.CHATVAULT_LOOP_STALL_STACKS)
            # Everything loaded so far (Django, the snapshot, …) lives for the whole process: move it out of the
            # cyclic GC's reach so full collections stay short and don't stall requests.
            gc.collect()
            gc.freeze()
            tune_for_latency()
            logger.info("ChatVault worker ready")


def tune_for_latency():
    """Set the interpreter for a short event-loop tail: how long a thread may hold the GIL, and how often the cyclic
    GC makes a full collection (docs/benchmarks.md, "Tail latency", has the measurements behind both)."""
    # A background thread that runs Python (the log writer encoding a batch, the Redis sync, the config poll) keeps
    # the GIL until the switch interval forces it out: at Python's default 5 ms, every such run can stall the loop
    # that long.
    sys.setswitchinterval(settings.CHATVAULT_GIL_SWITCH_INTERVAL_MS / 1000)
    # Each request leaves cyclic garbage (DRF's view and request refer to each other, asyncio tasks hold their
    # exceptions' frames), which feeds the older generations; a full collection of what was made since start-up
    # stalls the loop for 10-30 ms. Start-up objects are frozen above; full collections come 10 times less often.
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, FULL_COLLECTION_EVERY)


async def _maintain():
    """Keep the routing state current: new snapshot policy, operator resets, active health-check results.

    A failure is logged once when it starts and once when maintenance works again, not on every round.
    """
    routing_state = state.get()
    failing = False
    while True:
        await asyncio.sleep(MAINTENANCE_SECONDS)
        try:
            _maintain_once(routing_state)
        except Exception:  # keep maintaining; one bad record must not stop health tracking
            if not failing:
                logger.exception("routing state maintenance failed (logged again only once it recovers)")
                failing = True
            continue
        if failing:
            logger.warning("routing state maintenance recovered")
            failing = False


def _maintain_once(routing_state):
    """Apply a new snapshot's policy and feed the probe results that arrived to the breakers."""
    snap = snapshot.current()
    if snap is not None and routing_state.applied is not snap:
        routing_state.apply_snapshot(snap)
    while snapshot.probe_results:
        instance_id, ok, _checked_at, detail = snapshot.probe_results.popleft()
        # Fed at the time they arrive: breaker cooldowns and the results window run on the present.
        routing_state.observe(instance_id, ok=ok, now=time.time(), detail=detail, probe=True)


async def _drain_requests():
    """Wait (at most DRAIN_SECONDS) until no API request is in flight, so that each has recorded its row."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while _state["in_flight"] > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if _state["in_flight"] > 0:
        logger.error("%d request(s) still in flight at shutdown; their log rows may be lost", _state["in_flight"])


async def shutdown():
    """Stop this worker: let in-flight requests finish, write every queued log and feedback row, close upstream
    connections."""
    from routing.adapters import openai_compat

    await _drain_requests()
    refresher = _state["refresher"]
    if refresher is not None:
        refresher.stop()
    if _state["maintenance"] is not None:
        _state["maintenance"].cancel()
        _state["maintenance"] = None
    loop_monitor.monitor.stop()
    await state.get().stop_sync()
    await asyncio.to_thread(request_log.stop)
    await asyncio.to_thread(feedback.stop)
    await openai_compat.adapter.close()
    _state["started"] = False
    logger.info("ChatVault worker stopped")


async def lifespan(receive, send):
    """Serve the ASGI lifespan protocol."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:
                logger.exception("startup failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await shutdown()
            finally:
                await send({"type": "lifespan.shutdown.complete"})
            return
