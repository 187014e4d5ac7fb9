"""Batched, off-request-path writing of RequestLog rows.

The hot path calls `record(row)`, which only appends to an in-memory queue. A writer thread per worker
(`routing.batch_writer`) inserts the rows in batches (`CHATVAULT_LOG_BATCH_SIZE` rows or
`CHATVAULT_LOG_FLUSH_SECONDS`, whichever comes first) and stamps `ApiKey.last_used_at`. On graceful shutdown `stop()`
drains the queue, so no accepted request goes unrecorded. If the database is down, rows are kept and retried with
backoff rather than dropped.

Every row is made storable when it is queued (`routing.storable`). Should the database still refuse a batch while it
accepts writes, the batch is split until the refused row is isolated; that row is written in a safe form that says
what was wrong, and every other row is written as it is. One bad row never holds up the rows behind it.
"""

import functools
import logging
import uuid
from datetime import UTC, datetime

import psycopg
from django.db import IntegrityError, connection, transaction
from django.db.models import Q

from experiments import feedback
from routing import metrics, storable
from routing.batch_writer import BatchWriter, ProcessWriter, table_accepts_writes
from routing.models import ApiKey, Outcome, RequestLog

logger = logging.getLogger(__name__)

class Counters:
    """Process-wide request counters (unauthenticated requests are counted here, not stored)."""

    unauthenticated = 0
    dropped_rows = 0
    rewritten_rows = 0  # rows the database refused, written in their safe form
    refused_bodies = 0  # requests answered 413 before authentication


class RequestLogWriter(BatchWriter):
    """Write queued RequestLog rows to the database in batches (see `routing.batch_writer`).

    A row the database refuses on its own is written in its safe form (`safe_form`), which says what was wrong.
    """

    what = "request log"

    def __init__(self, batch_size=None, flush_seconds=None):
        super().__init__(name="chatvault-request-log-writer", batch_size=batch_size, flush_seconds=flush_seconds)

    def write_batch(self, rows):
        """Insert the rows (skipping those a retried batch already wrote) and stamp their keys' last use."""
        write_batch(rows)

    def accepts_writes(self):
        """Return whether the request log table is usable."""
        return table_accepts_writes(RequestLog)

    def refused(self, row, error):
        """Write a row the database refuses in its safe form; drop it only if even that is refused."""
        logger.error("request log row %s refused by the database; writing it in a safe form: %s",
                     row.get("request_id"), storable.text(error, 300))  # fmt: skip
        try:
            write_batch([safe_form(row, error)])
        except Exception:
            if not self.accepts_writes():
                raise
            logger.exception("request log row %s dropped: even its safe form was refused", row.get("request_id"))
            self.drop(1)
            return 0
        Counters.rewritten_rows += 1
        return 1

    def drop(self, count):
        """Count rows given up on, for /healthz too."""
        super().drop(count)
        Counters.dropped_rows += count


def _copy_rows(rows):
    """Insert rows with Postgres COPY: the per-row work happens in psycopg's C code, not in Python.

    The writer thread shares the GIL with the event loop, so the cheaper each batch is in Python, the less it
    delays requests.
    """
    from psycopg.types.json import Jsonb

    columns = [connection.ops.quote_name(f.column) for f in RequestLog._meta.concrete_fields if f.column != "id"]
    attnames = [field.attname for field in RequestLog._meta.concrete_fields if field.column != "id"]
    defaults = {f.attname: f.get_default() for f in RequestLog._meta.concrete_fields if f.column != "id"}
    table = connection.ops.quote_name(RequestLog._meta.db_table)
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                values = [row.get(name, defaults[name]) for name in attnames]
                values[attnames.index("decision")] = Jsonb(row.get("decision") or {})
                copy.write_row(values)


@functools.cache
def _spec():
    """Return how RequestLog rows are made storable."""
    return storable.RowSpec([f for f in RequestLog._meta.concrete_fields if f.column != "id"])


def safe_form(row, error):
    """Return a row the database stores whatever row held: the facts that identify it and what went wrong."""
    request_id = row.get("request_id")
    created_at = row.get("created_at")
    safe = {
        name: row.get(name)
        for name in ("endpoint", "user", "requested_model", "served_model", "stream", "error_type", "error_message")
        if isinstance(row.get(name), (str, bool))
    }
    safe.update(
        request_id=request_id if isinstance(request_id, uuid.UUID) else uuid.uuid4(),
        created_at=created_at if isinstance(created_at, datetime) else datetime.now(UTC),
        api_key_id=row.get("api_key_id") if isinstance(row.get("api_key_id"), int) else None,
        outcome=row.get("outcome") if row.get("outcome") in Outcome.values else Outcome.INTERNAL_ERROR,
        status_code=storable.count(row.get("status_code"), storable.MAX_SMALLINT)[0] or 0,
        decision={"unstorable_row": {"error": storable.text(error, 500), "row": storable.text(repr(row), 4000)}},
    )
    return _spec().row(safe)


def write_batch(rows):
    """Insert RequestLog rows and stamp last-used times of their keys, in one transaction."""
    last_used = {}
    for row in rows:
        key_pk = row.get("api_key_id")
        if key_pk is not None and (key_pk not in last_used or row["created_at"] > last_used[key_pk]):
            last_used[key_pk] = row["created_at"]
    with transaction.atomic():
        if connection.vendor == "postgresql":
            try:
                with transaction.atomic():
                    _copy_rows(rows)
            except (IntegrityError, psycopg.IntegrityError):
                # A retried batch whose first commit did reach the database: skip the rows already there.
                RequestLog.objects.bulk_create([RequestLog(**row) for row in rows], ignore_conflicts=True)
        else:
            RequestLog.objects.bulk_create([RequestLog(**row) for row in rows], ignore_conflicts=True)
        for key_pk, when in last_used.items():
            # .update() bypasses signals on purpose: a last-used stamp is not a configuration change.
            ApiKey.objects.filter(Q(last_used_at__lt=when) | Q(last_used_at__isnull=True), pk=key_pk).update(
                last_used_at=when
            )


_process_writer = ProcessWriter(RequestLogWriter)
start = _process_writer.start
stop = _process_writer.stop


def stats():
    """Return this process's request-log counters."""
    return {
        **_process_writer.counters(),
        "dropped": Counters.dropped_rows,
        "rewritten": Counters.rewritten_rows,
        "unauthenticated_requests": Counters.unauthenticated,
        "refused_bodies": Counters.refused_bodies,
    }


def record(row):
    """Queue a RequestLog row for writing, made storable first; keep its rating facts for `POST /v1/feedback`."""
    row = _spec().row(row)
    _process_writer.submit(row)
    feedback.remember(row)  # the request can be rated before its row is written
    metrics.observe(row)
