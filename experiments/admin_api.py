"""Analysts' endpoints: `GET /v1/admin/experiments/{id}/results` and `GET /v1/admin/experiments/{id}/requests`.

Served by Django's full handler like the other `/v1/admin/` endpoints (`routing.admin_api`), so an admin API key or
a staff session works; errors come in OpenAI's shape. Every database read runs on a thread of this module's own
pool, never on the event loop nor on Django's shared sync thread.

The results come from the rollups only (`experiments.results`). The requests export reads the log: it streams pages
of EXPORT_PAGE rows, each read by keyset on (created_at, id) along the (experiment, created_at) index, so a
million rows go out in constant memory and no page costs more than the one before.
"""

import functools
from datetime import UTC, datetime, time

from django.db.models import Q
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.dateparse import parse_date, parse_datetime

from experiments import export, results
from experiments.models import BUILTIN_METRICS, FEEDBACK_METRIC, Experiment, Feedback
from routing.admin_api import _authorize
from routing.api import GatewayView, current_snapshot
from routing.db_threads import DatabaseThreads
from routing.errors import InvalidRequest, NotFound
from routing.models import RequestLog

EXPORT_PAGE = 5000
# Reads of an export or a results table take longer than the operators' stats reads: their own threads.
_database_threads = DatabaseThreads("experiments-api-db")
_REQUEST_FIELDS = (
    "request_id",
    "created_at",
    "experiment_unit",
    "variant",
    "served_model",
    "instance_id",
    "context_type",
    "outcome",
    "status_code",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
)
_CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}


async def _read(func, *args):
    """Return func(*args) run like a request on this module's database threads."""
    return await _database_threads.run(func, *args)


def _format(request, allowed):
    """Return the ?format= asked for (the first allowed one by default); 400 if it is not one of allowed."""
    fmt = request.query_params.get("format", allowed[0])
    if fmt not in allowed:
        raise InvalidRequest(f"format must be one of {', '.join(allowed)}.", param="format", code="invalid_format")
    return fmt


def _moment(request, name):
    """Return the ISO time (or date: its midnight UTC) of a query parameter, UTC when it names no offset; or None."""
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    moment = None
    try:
        moment = parse_datetime(value)
        if moment is None and (day := parse_date(value)) is not None:
            moment = datetime.combine(day, time())
    except ValueError:
        moment = None
    if moment is None:
        raise InvalidRequest(
            f"{name} must be an ISO time such as 2026-01-31T09:00:00Z or a date such as 2026-01-31.",
            param=name,
            code="invalid_time",
        )
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _attachment(experiment_id, what, fmt):
    return f'attachment; filename="{experiment_id}-{what}.{fmt}"'


def _results_of(experiment_id):
    """Return the experiment's results, or None when there is no such experiment."""
    experiment = Experiment.objects.filter(pk=experiment_id).first()
    return None if experiment is None else results.experiment_results(experiment)


def _not_found(experiment_id):
    return NotFound(f"No experiment with id {experiment_id!r}.", code="experiment_not_found")


class ExperimentResultsView(GatewayView):
    """GET /v1/admin/experiments/{id}/results?format=json|csv — every metric of every variant against the control."""

    async def get(self, request, experiment_id):
        """Return the results as JSON, or the metrics table as a CSV attachment."""
        await _authorize(request, await current_snapshot())
        fmt = _format(request, ("json", "csv"))
        found = await _read(_results_of, experiment_id)
        if found is None:
            raise _not_found(experiment_id)
        if fmt == "json":
            return JsonResponse(found)
        response = HttpResponse(export.results_csv(found), content_type=_CONTENT_TYPES["csv"])
        response["Content-Disposition"] = _attachment(experiment_id, "results", "csv")
        return response


def feedback_metrics_of(experiment_id):
    """Return the experiment's feedback metric names, or None when there is no such experiment."""
    if not Experiment.objects.filter(pk=experiment_id).exists():
        return None
    names = set(
        Feedback.objects.filter(experiment=experiment_id)
        .exclude(metric__in=BUILTIN_METRICS)
        .order_by()
        .values_list("metric", flat=True)
        .distinct()
    )
    return [FEEDBACK_METRIC, *sorted(names - {FEEDBACK_METRIC})]


def export_page(experiment_id, *, since, until, after, feedback_metrics, fmt):
    """Return (text, position after it) of the next page of the requests export; the position is None at the end.

    after is the (created_at, id) of the last row of the previous page, or None for the first page.
    """
    logs = RequestLog.objects.filter(experiment=experiment_id)
    if since is not None:
        logs = logs.filter(created_at__gte=since)
    if until is not None:
        logs = logs.filter(created_at__lt=until)
    if after is not None:
        created_at, pk = after
        # created_at >= is what the index seeks on; the OR only settles ties within one instant.
        logs = logs.filter(created_at__gte=created_at).filter(Q(created_at__gt=created_at) | Q(pk__gt=pk))
    page = list(logs.order_by("created_at", "pk").values_list("pk", *_REQUEST_FIELDS)[:EXPORT_PAGE])
    if not page:
        return "", None
    scores = {}
    ratings = Feedback.objects.filter(request_id__in=[row[1] for row in page], metric__in=feedback_metrics)
    for request_id, metric, score in ratings.order_by().values_list("request_id", "metric", "score"):
        scores.setdefault(request_id, {})[metric] = score
    rows = [row[1:] for row in page]
    text = export.requests_text(rows, scores, feedback_metrics, fmt)
    last = page[-1]
    return text, ((last[2], last[0]) if len(page) == EXPORT_PAGE else None)


async def _export_stream(experiment_id, since, until, feedback_metrics, fmt):
    """Yield the requests export page by page (the header first for CSV), each page read on a database thread."""
    if fmt == "csv":
        yield export.csv_lines([export.request_header(feedback_metrics)])
    after = None
    while True:
        read = functools.partial(
            export_page,
            experiment_id,
            since=since,
            until=until,
            after=after,
            feedback_metrics=feedback_metrics,
            fmt=fmt,
        )
        text, after = await _read(read)
        if text:
            yield text
        if after is None:
            return


class ExperimentRequestsView(GatewayView):
    """GET /v1/admin/experiments/{id}/requests?format=csv|jsonl&since=&until= — one row per request, streamed."""

    async def get(self, request, experiment_id):
        """Stream the experiment's requests (created since <= t < until) as a CSV or JSON Lines attachment."""
        await _authorize(request, await current_snapshot())
        fmt = _format(request, ("csv", "jsonl"))
        since, until = _moment(request, "since"), _moment(request, "until")
        if since is not None and until is not None and until < since:
            raise InvalidRequest("until must not be before since.", param="until", code="invalid_time")
        feedback_metrics = await _read(feedback_metrics_of, experiment_id)
        if feedback_metrics is None:
            raise _not_found(experiment_id)
        response = StreamingHttpResponse(
            _export_stream(experiment_id, since, until, feedback_metrics, fmt), content_type=_CONTENT_TYPES[fmt]
        )
        response["Content-Disposition"] = _attachment(experiment_id, "requests", fmt)
        response["Cache-Control"] = "no-store"
        return response
