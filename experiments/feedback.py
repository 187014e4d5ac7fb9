"""Feedback on answers (`POST /v1/feedback`): check a score, find the rated request, write it off the request path.

Finding the request: its RequestLog row may still be queued in this worker's request-log writer, so
`routing.request_log.record` hands each row to `remember()`, which keeps the facts a rating copies (the key, model,
context type, experiment and variant) for the last RECENT_MAX requests or RECENT_SECONDS, whichever is fewer. Any
other request is read from the database on a thread of this module's own (never Django's shared sync thread, which
every sync call of the process queues behind), retried for LOOKUP_RETRY_SECONDS so that a request another worker
served a moment ago, whose row it has not written yet, is still found. The read is scoped to the key: another key's
request is "not found" by the same path, in the same time, with the same answer as an unknown id, so ids cannot be
probed.

Writing: `FeedbackWriter`, one thread per worker like the request log's, upserts the rows in batches on
(request_id, metric), the later post winning by `updated_at` (a second post replaces the first whole, its
`created_at` included). `stop()`, called on graceful shutdown, writes every queued row first.

Selection reads the ratings back through their daily rollup (`experiments.quality`), never this table.
"""

import asyncio
import collections
import dataclasses
import logging
import math
import threading
import time
import uuid

from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from experiments.models import FEEDBACK_METRIC, METRIC_NAME, Feedback
from routing import storable
from routing.batch_writer import BatchWriter, ProcessWriter, table_accepts_writes
from routing.db_threads import DatabaseThreads
from routing.errors import GatewayError, InvalidRequest, NotFound
from routing.models import RequestLog

logger = logging.getLogger(__name__)

MAX_COMMENT_CHARS = 4_000
# Rating facts of recent requests kept in memory. They only need to cover the rows still queued for writing (flushed
# every 0.5 s by default); after that the database has them. Kept small: every entry is memory the garbage collector
# walks, on the same core as the event loop.
RECENT_MAX = 20_000
RECENT_SECONDS = 15.0
# How long a request that is in neither this worker's memory nor the database is looked for before the answer is 404:
# another worker writes its rows within its flush interval (0.5 s by default).
LOOKUP_RETRY_SECONDS = 2.0
# The longest one database read may take before the answer is 503.
DATABASE_WAIT_SECONDS = 2.0
# A read hung in a network partition keeps its thread until it ends: it must only ever hold one of these.
_database_threads = DatabaseThreads("feedback-db")
_outage = {"logged": False}


class RequestNotFound(NotFound):
    """No request with this id was made with this key (or none at all: the two are not told apart)."""

    default_detail = "No chat completion with this request_id was made with this API key."
    default_code = "request_not_found"

    def __init__(self):
        super().__init__(param="request_id")


class FeedbackUnavailable(GatewayError):
    """The database did not answer in time to look the rated request up."""

    status_code = 503
    default_detail = "The database is not answering, so the rated request cannot be looked up; retry later."
    default_code = "database_unavailable"


@dataclasses.dataclass(frozen=True, slots=True)
class RequestFacts:
    """What a rating copies from the rated request's log row."""

    key_pk: int
    served_model: str
    context_type: str
    experiment: str
    variant: str
    experiment_unit: str
    created_at: object  # datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Given:
    """A feedback body, checked."""

    request_id: uuid.UUID
    metric: str
    score: float
    comment: str


# --- checking ---------------------------------------------------------------------------------------------------------


def parse_score(value):
    """Return a score in [0, 1]: true/false, 1/-1 (thumbs up/down) or a number from 0 to 1; raise InvalidRequest."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int) and value in (0, 1, -1):  # a huge int never reaches float()
        return 0.0 if value == -1 else float(value)
    if isinstance(value, float) and math.isfinite(value):
        if value == -1:
            return 0.0
        if 0 <= value <= 1:
            return value + 0.0  # -0.0 becomes 0.0
    raise InvalidRequest(
        "'score' must be true or false, 1 or -1 (thumbs up or down), or a number from 0 to 1.",
        param="score",
        code="invalid_score",
    )


def parse(body):
    """Return the Given of a feedback body; raise InvalidRequest naming the field that is wrong."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    request_id = body.get("request_id")
    try:
        if not isinstance(request_id, str) or len(request_id) > 64:
            raise ValueError
        request_id = uuid.UUID(request_id)
    except ValueError:
        raise InvalidRequest(
            "'request_id' must be the x-request-id of a chat completion (a UUID).", param="request_id"
        ) from None
    if "score" not in body:
        raise InvalidRequest("'score' is required.", param="score", code="invalid_score")
    score = parse_score(body["score"])
    metric = body.get("metric")
    if metric is None:
        metric = FEEDBACK_METRIC
    try:
        if not isinstance(metric, str):
            raise ValidationError("not a string")
        METRIC_NAME(metric)
    except ValidationError:
        raise InvalidRequest(f"'metric' must be a name: {METRIC_NAME.message}", param="metric") from None
    comment = body.get("comment")
    if comment is None:
        comment = ""
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS:
        raise InvalidRequest(f"'comment' must be a string of at most {MAX_COMMENT_CHARS:,} characters.",
                             param="comment")  # fmt: skip
    return Given(request_id=request_id, metric=metric, score=score, comment=storable.text(comment))


# --- finding the rated request ----------------------------------------------------------------------------------------


class RecentRequests:
    """The rating facts of the chat requests this worker recorded lately, by request id, bounded in count and age."""

    def __init__(self, max_size=RECENT_MAX, max_age=RECENT_SECONDS):
        self.max_size = max_size
        self.max_age = max_age
        self._facts = collections.OrderedDict()  # request id -> (monotonic time remembered, RequestFacts fields)
        self._lock = threading.Lock()

    def remember(self, row):
        """Keep the facts of a storable RequestLog row (chat completions only: the one kind of request rated)."""
        get = row.get
        if get("endpoint") != "chat.completions" or get("api_key_id") is None:
            return
        # A plain tuple, made into RequestFacts only when read: this runs for every request, on the event loop.
        facts = (get("api_key_id"), get("served_model") or "", get("context_type") or "", get("experiment") or "",
                 get("variant") or "", get("experiment_unit") or "", get("created_at"))  # fmt: skip
        now = time.monotonic()
        with self._lock:
            self._facts[row["request_id"]] = (now, facts)
            while self._facts and (
                len(self._facts) > self.max_size or next(iter(self._facts.values()))[0] < now - self.max_age
            ):
                self._facts.popitem(last=False)

    def get(self, request_id):
        """Return the facts of a request remembered within max_age, or None."""
        with self._lock:
            entry = self._facts.get(request_id)
        if entry is None or entry[0] < time.monotonic() - self.max_age:
            return None
        return RequestFacts(*entry[1])

    def clear(self):
        """Forget everything."""
        with self._lock:
            self._facts.clear()


recent = RecentRequests()


def remember(row):
    """Keep a RequestLog row's rating facts for a while (called for every row as it is queued)."""
    recent.remember(row)


def read_request(request_id, key_pk):
    """Return the RequestFacts of a chat request the key made, from the database, or None."""
    found = (
        RequestLog.objects.filter(request_id=request_id, api_key_id=key_pk, endpoint="chat.completions")
        .values_list("served_model", "context_type", "experiment", "variant", "experiment_unit", "created_at")
        .first()
    )
    return RequestFacts(key_pk, *found) if found is not None else None


async def _read_database(func, *args):
    """Return func(*args) run on an abandonable thread; raise FeedbackUnavailable if it fails or takes too long."""
    try:
        result = await _database_threads.run(func, *args, timeout=DATABASE_WAIT_SECONDS)
    except (DatabaseError, TimeoutError) as exc:
        if not _outage["logged"]:  # an outage is logged when it starts and when it ends, not on every post
            _outage["logged"] = True
            logger.warning("feedback answers 503 until the database answers: %s", exc or "no answer in time")
        raise FeedbackUnavailable() from exc
    if _outage["logged"]:
        _outage["logged"] = False
        logger.warning("feedback reads the database again")
    return result


async def find_request(request_id, key_pk, retry_seconds=LOOKUP_RETRY_SECONDS):
    """Return the RequestFacts of a chat request made with the key, or None when none turns up within retry_seconds."""
    facts = recent.get(request_id)
    if facts is not None and facts.key_pk == key_pk:
        return facts
    deadline = time.monotonic() + retry_seconds
    delay = 0.05
    while True:
        facts = await _read_database(read_request, request_id, key_pk)
        remaining = deadline - time.monotonic()
        if facts is not None or remaining <= 0:
            return facts
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.5)


# --- accepting --------------------------------------------------------------------------------------------------------


async def feedback_give(*, key_pk, body):
    """Check a feedback body, find its request, queue the row for writing and return the feedback as answered.

    Raise InvalidRequest for a bad body, RequestNotFound when the key made no such chat request, FeedbackUnavailable
    when the database cannot tell.
    """
    given = parse(body)
    facts = await find_request(given.request_id, key_pk)
    if facts is None:
        raise RequestNotFound()
    now = timezone.now()
    row = {
        "request_id": given.request_id,
        "metric": given.metric,
        "score": given.score,
        "comment": given.comment,
        "api_key_id": key_pk,
        "experiment": facts.experiment,
        "variant": facts.variant,
        "experiment_unit": facts.experiment_unit,
        "served_model": facts.served_model,
        "context_type": facts.context_type,
        "request_created_at": facts.created_at,
        "created_at": now,
        "updated_at": now,
    }
    submit(row)
    return answer(row)


def answer(row):
    """Return a feedback row as the API shows it."""
    return {
        "object": "feedback",
        "request_id": str(row["request_id"]),
        "metric": row["metric"],
        "score": row["score"],
        "comment": row["comment"],
        "model": row["served_model"] or None,
        "context_type": row["context_type"] or None,
        "experiment": row["experiment"] or None,
        "variant": row["variant"] or None,
        "created_at": row["created_at"].isoformat(),
    }


# --- writing ----------------------------------------------------------------------------------------------------------

_COLUMNS = ("request_id", "metric", "score", "comment", "api_key_id", "experiment", "variant", "experiment_unit",
            "served_model", "context_type", "request_created_at", "created_at", "updated_at")  # fmt: skip


def _upsert_sql():
    """Return the statement that writes one feedback row, replacing an older one for the same request and metric."""
    table = Feedback._meta.db_table
    quote = connection.ops.quote_name
    column_of = {field.attname: field.column for field in Feedback._meta.concrete_fields}
    columns = [quote(column_of[name]) for name in _COLUMNS]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns[2:])  # all but the key (request_id, metric)
    return (
        f"INSERT INTO {quote(table)} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
        f"ON CONFLICT (request_id, metric) DO UPDATE SET {updates} "
        f"WHERE {quote(table)}.updated_at <= EXCLUDED.updated_at"
    )


def write_batch(rows):
    """Upsert feedback rows in one transaction; of two posts for the same request and metric the later one stays."""
    sql = _upsert_sql()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, [[row[name] for name in _COLUMNS] for row in rows])


class FeedbackWriter(BatchWriter):
    """Write queued feedback rows in batches (the request log's batch size and flush interval), until stopped.

    Rows are upserted, so a batch retried after a failure is harmless; a row the database refuses on its own is
    dropped, logged and counted.
    """

    what = "feedback"

    def __init__(self, batch_size=None, flush_seconds=None):
        super().__init__(name="chatvault-feedback-writer", batch_size=batch_size, flush_seconds=flush_seconds)

    def write_batch(self, rows):
        """Upsert the rows."""
        write_batch(rows)

    def accepts_writes(self):
        """Return whether the feedback table is usable."""
        return table_accepts_writes(Feedback)

    def refused(self, row, error):
        """Drop a row the database refuses (a rating is not worth a safe form), logging which."""
        logger.error("feedback row for request %s refused by the database; dropped: %s", row.get("request_id"), error)
        self.drop(1)
        return 0


_process_writer = ProcessWriter(FeedbackWriter)
start = _process_writer.start
stop = _process_writer.stop
submit = _process_writer.submit
stats = _process_writer.counters
