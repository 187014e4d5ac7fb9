"""Rows of the analysts' exports, as CSV or JSON Lines (pure: plain values in, text out, no database).

CSV is what a spreadsheet opens cleanly: a header row, ISO-8601 UTC timestamps, RFC 4180 quoting, and no formula
injection: a text cell starting with =, +, -, @, a tab or a carriage return gets a leading apostrophe, so a variant
named "=HYPERLINK(...)" is shown, never run. Numeric columns are written as numbers (-1.5 stays -1.5): only text is
escaped, and a number cannot carry a formula.
"""

import csv
import io
import json
import math
from datetime import UTC, datetime
from decimal import Decimal

# One row per request: these columns, then one per feedback metric (see feedback_column).
REQUEST_COLUMNS = (
    "request_id",
    "created_at",
    "unit",
    "variant",
    "model",
    "instance",
    "context_type",
    "outcome",
    "status_code",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
)
RESULT_COLUMNS = (
    "metric",
    "variant",
    "is_control",
    "role",
    "kind",
    "higher_is_better",
    "units",
    "requests",
    "n",
    "mean",
    "sd",
    "diff",
    "rel_diff",
    "ci_low",
    "ci_high",
    "seq_ci_low",
    "seq_ci_high",
    "p_value",
    "p_value_adjusted",
    "verdict",
    "p50",
    "p95",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def feedback_column(metric):
    """Return the export column of a feedback metric: `feedback`, or `feedback_<metric>` for a custom one."""
    return metric if metric == "feedback" else f"feedback_{metric}"


def escape_text(text):
    """Return text a spreadsheet shows as text: a leading apostrophe before a formula's first character."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _plain(value):
    """Return a value as JSON has it: times in ISO UTC, decimals and finite floats as numbers, else None."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def csv_cell(value):
    """Return one CSV cell: numbers as numbers, booleans as true/false, text escaped, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value.is_finite() else ""
    if isinstance(value, int | float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return escape_text(str(value))


def csv_lines(rows):
    """Return rows (sequences of values) as CSV text, one line each, CRLF-terminated."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        writer.writerow([csv_cell(value) for value in row])
    return out.getvalue()


def jsonl_lines(records):
    """Return records (dicts) as JSON Lines: one compact JSON object per line."""
    return "".join(
        json.dumps({key: _plain(value) for key, value in record.items()}, ensure_ascii=False, separators=(",", ":"))
        + "\n"
        for record in records
    )


def request_header(feedback_metrics):
    """Return the column names of the requests export."""
    return [*REQUEST_COLUMNS, *(feedback_column(metric) for metric in feedback_metrics)]


def request_values(row, scores, feedback_metrics):
    """Return one request's values in header order: row has REQUEST_COLUMNS' values; scores is {metric: score}."""
    return [*row, *(scores.get(metric) for metric in feedback_metrics)]


def requests_text(rows, scores, feedback_metrics, fmt):
    """Return a page of the requests export: rows are REQUEST_COLUMNS' values, scores {request_id: {metric: score}}."""
    values = [request_values(row, scores.get(row[0], {}), feedback_metrics) for row in rows]
    if fmt == "csv":
        return csv_lines(values)
    header = request_header(feedback_metrics)
    return jsonl_lines(dict(zip(header, row, strict=True)) for row in values)


def results_csv(results):
    """Return the results table (one row per metric and variant) as CSV with a header row."""
    return csv_lines([RESULT_COLUMNS, *([row[column] for column in RESULT_COLUMNS] for row in results["metrics"])])
