"""Per-worker lifecycle: load the snapshot, start the refresher and the log writer; flush everything on shutdown.

Driven by the ASGI lifespan protocol (see `chatvault_site.asgi`), so uvicorn's graceful shutdown on SIGTERM waits
for in-flight requests and then writes every queued RequestLog row before the process exits.
"""

import asyncio
import gc
import logging
import time

from django.core.exceptions import ImproperlyConfigured

from routing import request_log, snapshot, state

logger = logging.getLogger(__name__)

_state = {"refresher": None, "started": False, "maintenance": None}
MAINTENANCE_SECONDS = 0.2
_lock = None


def started():
    """Return whether this worker has loaded its snapshot and started its threads."""
    return _state["started"]


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
            # Everything loaded so far (Django, the snapshot, …) lives for the whole process: move it out of the
            # cyclic GC's reach so full collections stay short and don't stall requests.
            gc.collect()
            gc.freeze()
            logger.info("ChatVault worker ready")


async def _maintain():
    """Keep the routing state current: new snapshot policy, operator resets, active health-check results."""
    routing_state = state.get()
    while True:
        await asyncio.sleep(MAINTENANCE_SECONDS)
        try:
            snap = snapshot.current()
            if snap is not None and routing_state.applied is not snap:
                routing_state.apply_snapshot(snap)
            while snapshot.probe_results:
                instance_id, ok, _checked_at, detail = snapshot.probe_results.popleft()
                # Fed at the time they arrive: breaker cooldowns and the results window run on the present.
                routing_state.observe(instance_id, ok=ok, now=time.time(), detail=detail)
        except Exception:  # keep maintaining; one bad record must not stop health tracking
            logger.exception("routing state maintenance failed")


async def shutdown():
    """Stop this worker: write every queued log row and close upstream connections."""
    from routing.adapters import openai_compat

    refresher = _state["refresher"]
    if refresher is not None:
        refresher.stop()
    if _state["maintenance"] is not None:
        _state["maintenance"].cancel()
        _state["maintenance"] = None
    await state.get().stop_sync()
    await asyncio.to_thread(request_log.stop)
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
