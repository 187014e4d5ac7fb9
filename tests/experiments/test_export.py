"""Tests for experiments/export.py: CSV cells a spreadsheet cannot run, numbers kept numbers, JSON Lines."""

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from experiments import export


@pytest.mark.parametrize(
    "text",
    ["=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", '=HYPERLINK("http://x")'],
)
def test_text_that_would_start_a_formula_gets_a_leading_apostrophe(text):
    assert export.csv_cell(text) == "'" + text


@pytest.mark.parametrize("text", ["gpt-4o", "a=b", "ok", "", "'quoted", "u-1"])
def test_other_text_is_left_alone(text):
    assert export.csv_cell(text) == text


def test_numbers_stay_numbers_even_when_negative():
    assert export.csv_cell(-1.5) == "-1.5"
    assert export.csv_cell(-3) == "-3"
    assert export.csv_cell(Decimal("-0.00012000")) == "-0.00012"
    assert export.csv_cell(Decimal("0E-8")) == "0"
    assert export.csv_cell(float("nan")) == "" and export.csv_cell(float("inf")) == ""
    assert export.csv_cell(None) == "" and export.csv_cell(True) == "true"


def test_times_are_iso_utc():
    moment = datetime(2026, 1, 31, 10, 0, 0, 123000, tzinfo=timezone(timedelta(hours=1)))
    assert export.csv_cell(moment) == "2026-01-31T09:00:00.123000+00:00"


def test_csv_lines_quote_what_needs_quoting_and_read_back():
    text = export.csv_lines([["a,b", 'say "hi"', "line\nbreak", "-x", -2.5]])
    assert text.endswith("\r\n")
    assert next(csv.reader(io.StringIO(text))) == ["a,b", 'say "hi"', "line\nbreak", "'-x", "-2.5"]


def row(**overrides):
    values = {
        "request_id": uuid.UUID(int=1),
        "created_at": datetime(2026, 1, 31, 9, tzinfo=UTC),
        "unit": "a1b2c3",
        "variant": "=evil",
        "model": "gpt-4o",
        "instance": "gpt-4o-0",
        "context_type": "code_generation",
        "outcome": "ok",
        "status_code": 200,
        "latency_ms": 120.5,
        "ttft_ms": None,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": Decimal("0.00100000"),
    }
    values.update(overrides)
    return tuple(values[column] for column in export.REQUEST_COLUMNS)


def test_a_csv_page_has_one_line_per_request_with_a_column_per_feedback_metric():
    header = export.request_header(["feedback", "helpful"])
    assert header[-2:] == ["feedback", "feedback_helpful"]
    scores = {uuid.UUID(int=1): {"feedback": 1.0}}
    text = export.requests_text([row(), row(request_id=uuid.UUID(int=2))], scores, ["feedback", "helpful"], "csv")
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == [
        "00000000-0000-0000-0000-000000000001",
        "2026-01-31T09:00:00+00:00",
        "a1b2c3",
        "'=evil",
        "gpt-4o",
        "gpt-4o-0",
        "code_generation",
        "ok",
        "200",
        "120.5",
        "",
        "10",
        "5",
        "0.001",
        "1.0",
        "",
    ]
    assert lines[1][-2:] == ["", ""]


def test_a_jsonl_page_has_one_object_per_line_with_plain_values():
    text = export.requests_text([row()], {uuid.UUID(int=1): {"helpful": 0.5}}, ["feedback", "helpful"], "jsonl")
    assert text.count("\n") == 1
    record = json.loads(text)
    assert list(record) == export.request_header(["feedback", "helpful"])
    assert record["variant"] == "=evil"  # JSON is data, not a spreadsheet: no escaping
    assert record["cost_usd"] == 0.001 and record["ttft_ms"] is None and record["feedback_helpful"] == 0.5
    assert record["created_at"] == "2026-01-31T09:00:00+00:00"
    assert record["request_id"] == "00000000-0000-0000-0000-000000000001"


def test_the_results_csv_is_the_metrics_table():
    metric_row = {column: None for column in export.RESULT_COLUMNS}
    metric_row.update(metric="latency_ms", variant="-b", diff=-12.5, verdict="better", is_control=False)
    lines = list(csv.reader(io.StringIO(export.results_csv({"metrics": [metric_row]}))))
    assert lines[0] == list(export.RESULT_COLUMNS)
    values = dict(zip(lines[0], lines[1], strict=True))
    assert (values["variant"], values["diff"], values["is_control"]) == ("'-b", "-12.5", "false")
