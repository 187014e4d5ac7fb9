"""A thread that writes queued rows to the database in batches, off the request path: the request log's and
feedback's writers are both one.

The request path calls `submit(row)`, which only appends to an in-memory deque: it wakes the thread only when a
whole batch is waiting, not for every row, because a thread woken hundreds of times a second competes with the event
loop for the GIL each time. The thread writes batches of `batch_size` rows, or what came within `flush_seconds`,
whichever comes first. While the database is down, rows are
kept (up to MAX_PENDING_ROWS, the oldest dropped and counted beyond that) and retried with a growing backoff. A
batch the database refuses while it still accepts writes is split until the refused row is alone, so one bad row
never holds up the rows behind it; what becomes of that row is the subclass's choice (`refused`). `stop()` writes
everything still queued before the thread ends, so a graceful shutdown loses nothing.
"""

import collections
import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connection

logger = logging.getLogger(__name__)

# Rows held while the database is unreachable; beyond this the oldest are dropped (and counted) to bound memory.
MAX_PENDING_ROWS = 200_000
MAX_BACKOFF_SECONDS = 10.0
# Tries of a failing database at shutdown before the rows still held are given up on.
FINAL_ATTEMPTS = 5


class BatchWriter(threading.Thread):
    """Write queued rows in batches until stopped; subclasses say how a batch is written and what a bad row becomes."""

    what = "rows"  # how log messages name the rows

    def __init__(self, *, name, batch_size=None, flush_seconds=None):
        super().__init__(name=name, daemon=True)
        self.batch_size = batch_size or settings.CHATVAULT_LOG_BATCH_SIZE
        self.flush_seconds = flush_seconds if flush_seconds is not None else settings.CHATVAULT_LOG_FLUSH_SECONDS
        self.rows = collections.deque()  # appended by submit (any thread), taken by this thread
        self._wake = threading.Event()  # set when a whole batch waits, or to stop
        self._stop_requested = threading.Event()
        self.submitted = 0
        self.written = 0
        self.dropped = 0
        self.failures = 0  # failed writes in a row

    # --- what subclasses provide ------------------------------------------------------------------------------------

    def write_batch(self, rows):
        """Write rows in one transaction; raise if the database refuses them."""
        raise NotImplementedError

    def accepts_writes(self):
        """Return whether the database answers and the table is usable (so a refused batch is the rows' fault)."""
        raise NotImplementedError

    def refused(self, row, error):
        """Handle one row the database refused on its own; return 1 if it was written in some form, else 0."""
        logger.error("%s row refused by the database; dropped: %s", self.what, error)
        self.drop(1)
        return 0

    # --- the thread -------------------------------------------------------------------------------------------------

    def submit(self, row):
        """Queue one row; never blocks, and wakes the thread only once a whole batch waits."""
        self.submitted += 1
        rows = self.rows
        rows.append(row)
        if len(rows) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def pending(self):
        """Return how many submitted rows are not yet written (or given up on)."""
        return self.submitted - self.written - self.dropped

    def drop(self, count):
        """Count rows given up on."""
        self.dropped += count

    def run(self):
        """Collect rows into batches and write them until stopped, then write what is left."""
        pending = []
        while True:
            if self.failures:
                # While the database is failing, wait out a growing backoff before the next try (still queueing
                # rows), instead of retrying as fast as full batches arrive.
                self._stop_requested.wait(min(self.flush_seconds * 2**self.failures, MAX_BACKOFF_SECONDS))
            else:
                self._wake.wait(self.flush_seconds)
            self._wake.clear()
            stopping = self._stop_requested.is_set()
            pending.extend(self._take())
            pending = self._write_all(pending, final=stopping)
            if stopping:
                break
        connection.close()  # this thread's own connection; it ends with the thread

    def _take(self):
        """Return every row queued so far, oldest first."""
        rows, popleft = self.rows, self.rows.popleft
        return [popleft() for _ in range(len(rows))]

    def _write_all(self, rows, final):
        """Write rows in batches; return the rows that could not be written yet (none when final)."""
        attempt = 0
        while rows:
            batch = rows[: self.batch_size]
            try:
                close_old_connections()
                written = self._write_isolating(batch)
            except Exception:
                attempt += 1
                if not self.failures:
                    logger.exception("%s write failed; %d rows kept for retry", self.what, len(rows))
                self.failures += 1
                if len(rows) > MAX_PENDING_ROWS:
                    self.drop(len(rows) - MAX_PENDING_ROWS)
                    rows = rows[-MAX_PENDING_ROWS:]
                if not final:
                    return rows
                if attempt >= FINAL_ATTEMPTS:
                    self.drop(len(rows))
                    logger.error("giving up on %d %s rows at shutdown", len(rows), self.what)
                    return []
                time.sleep(min(2**attempt * 0.2, 5))
                continue
            if self.failures:
                logger.warning("%s writes recovered after %d failed attempts", self.what, self.failures)
                self.failures = 0
            self.written += written
            rows = rows[self.batch_size :]
        return rows

    def _write_isolating(self, rows):
        """Write rows and return how many were written; if the database refuses them while it accepts writes, split
        them around the refused rows and hand each of those to `refused`.

        Raise only when the database itself is failing (down, or the table unusable): then the caller keeps every
        row and retries later, so `write_batch` must make a second write of the same row harmless.
        """
        try:
            self.write_batch(rows)
            return len(rows)
        except Exception as exc:
            if not self.accepts_writes():
                raise
            error = exc
        if len(rows) > 1:
            middle = len(rows) // 2
            return self._write_isolating(rows[:middle]) + self._write_isolating(rows[middle:])
        return self.refused(rows[0], error)

    def stop(self, timeout=30.0):
        """Write every queued row and end the thread."""
        self._stop_requested.set()
        self._wake.set()
        self.join(timeout)
        if self.is_alive():
            logger.error("%s writer did not finish within %.0f s", self.what, timeout)


class ProcessWriter:
    """This process's one writer of a kind: started at start-up or on first use, drained and stopped on shutdown."""

    def __init__(self, factory):
        self.factory = factory
        self.writer = None

    def start(self):
        """Start the writer thread unless it runs (idempotent); return it."""
        if self.writer is None or not self.writer.is_alive():
            self.writer = self.factory()
            self.writer.start()
        return self.writer

    def stop(self):
        """Write every queued row and stop the writer thread."""
        if self.writer is not None:
            self.writer.stop()
            self.writer = None

    def submit(self, row):
        """Queue a row, starting the writer if it is not running yet."""
        (self.writer or self.start()).submit(row)

    def counters(self):
        """Return {pending, written, dropped} of this process's writer (zeros before it starts)."""
        writer = self.writer
        return {
            "pending": writer.pending() if writer else 0,
            "written": writer.written if writer else 0,
            "dropped": writer.dropped if writer else 0,
        }


def table_accepts_writes(model):
    """Return whether the database answers and model's table can be read in a transaction."""
    from django.db import transaction

    try:
        close_old_connections()
        with transaction.atomic():
            model.objects.filter(pk=-1).exists()
    except Exception:
        return False
    return True
