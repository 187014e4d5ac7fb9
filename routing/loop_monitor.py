"""Event-loop lag monitor: how late this worker's event loop runs what is due, and what held it up.

A ticker coroutine sleeps `TICK_SECONDS` and measures how late it wakes. That lateness is the delay any request
waiting on the loop saw at that moment: a stall of d ms is caught with probability about d / TICK_SECONDS, so the
counts are a sample, while the largest lag and the stall counts above each threshold say whether the loop stalls at
all. Garbage collections, which stop whichever thread triggers them, are timed per generation too (`gc`: how many,
the longest, the total). The figures are on /healthz (`event_loop`) and on /metrics.

With `CHATVAULT_LOOP_STALL_STACKS` on, a watchdog thread also notices a stall while it is still going on (the ticker
is overdue by `STALL_MS`) and records the stack of every thread at that moment: the loop's own thread shows what
blocks it, the others what competes with it for the GIL. The last `RECENT` stalls are kept (and logged at WARNING);
the watchdog wakes every millisecond, so it is a diagnosis tool, off by default.
"""

import asyncio
import collections
import gc
import logging
import sys
import threading
import time
import traceback

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.02
STALL_MS = 1.0
THRESHOLDS_MS = (1, 2, 5, 10, 50, 100)
RECENT = 20
STACK_FRAMES = 12


class LoopMonitor:
    """The lag figures of one event loop, and the task (and optional watchdog) that measures them."""

    def __init__(self):
        self.ticks = 0
        self.max_lag_ms = 0.0
        self.total_lag_ms = 0.0
        self.over = dict.fromkeys(THRESHOLDS_MS, 0)
        self.recent = collections.deque(maxlen=RECENT)
        self.started_at = None
        self._due = None  # when the ticker should wake next (time.monotonic), for the watchdog
        self._task = None
        self._watchdog = None
        self._stop = threading.Event()
        self._loop_thread = None
        self.gc = [{"collections": 0, "total_ms": 0.0, "max_ms": 0.0} for _ in range(3)]
        self._gc_began = None

    def observe(self, lag_ms):
        """Count one tick that woke lag_ms late."""
        self.ticks += 1
        self.total_lag_ms += lag_ms
        if lag_ms > self.max_lag_ms:
            self.max_lag_ms = lag_ms
        for threshold in THRESHOLDS_MS:
            if lag_ms <= threshold:
                break
            self.over[threshold] += 1

    def _on_gc(self, phase, info):
        """Time each garbage collection (a gc.callbacks hook: it runs in whichever thread collects)."""
        if phase == "start":
            self._gc_began = time.perf_counter()
            return
        began, self._gc_began = self._gc_began, None
        if began is None:
            return
        ms = (time.perf_counter() - began) * 1000
        figures = self.gc[info["generation"]]
        figures["collections"] += 1
        figures["total_ms"] += ms
        if ms > figures["max_ms"]:
            figures["max_ms"] = ms

    async def _tick(self):
        """Sleep TICK_SECONDS again and again, counting how late each wake-up is."""
        while True:
            began = time.monotonic()
            self._due = began + TICK_SECONDS
            await asyncio.sleep(TICK_SECONDS)
            self.observe(max(0.0, (time.monotonic() - self._due) * 1000))

    def _watch(self):
        """Record every thread's stack once per stall the ticker is overdue for (watchdog thread)."""
        seen_due = None
        while not self._stop.wait(0.001):
            due = self._due
            if due is None or due == seen_due:
                continue
            late_ms = (time.monotonic() - due) * 1000
            if late_ms < STALL_MS:
                continue
            seen_due = due
            self.recent.append(self._stall_record(late_ms))
            logger.warning("event loop stalled %.1f ms: %s", late_ms, self.recent[-1]["threads"])

    def _stall_record(self, late_ms):
        """Return what every thread was doing during a stall that has lasted late_ms so far."""
        names = {t.ident: t.name for t in threading.enumerate()}
        threads = {}
        for ident, frame in sys._current_frames().items():
            if ident == threading.get_ident():
                continue
            name = "event loop" if ident == self._loop_thread else names.get(ident, str(ident))
            stack = traceback.extract_stack(frame, limit=STACK_FRAMES)
            threads[name] = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in reversed(stack)]
        return {"at": time.time(), "late_ms": round(late_ms, 2), "threads": threads}

    def start(self, *, stacks=False):
        """Start measuring on the running loop (and the stack watchdog if asked)."""
        if self._task is not None:
            return
        self.started_at = time.time()
        self._loop_thread = threading.get_ident()
        self._task = asyncio.get_running_loop().create_task(self._tick())
        gc.callbacks.append(self._on_gc)
        if stacks:
            self._stop.clear()
            self._watchdog = threading.Thread(target=self._watch, name="chatvault-loop-watchdog", daemon=True)
            self._watchdog.start()

    def stop(self):
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
            gc.callbacks.remove(self._on_gc)
        if self._watchdog is not None:
            self._stop.set()
            self._watchdog.join(timeout=1)
            self._watchdog = None

    def stats(self):
        """Return the figures for /healthz: ticks, mean and max lag, stalls over each threshold, recent stalls."""
        return {
            "tick_ms": TICK_SECONDS * 1000,
            "ticks": self.ticks,
            "mean_lag_ms": round(self.total_lag_ms / self.ticks, 3) if self.ticks else None,
            "max_lag_ms": round(self.max_lag_ms, 3),
            "ticks_late_over_ms": {str(t): n for t, n in self.over.items()},
            "gil_switch_interval_ms": round(sys.getswitchinterval() * 1000, 3),
            "gc_thresholds": list(gc.get_threshold()),
            "gc": {
                f"gen{generation}": {name: round(value, 3) for name, value in figures.items()}
                for generation, figures in enumerate(self.gc)
            },
            "recent_stalls": list(self.recent),
        }


monitor = LoopMonitor()
