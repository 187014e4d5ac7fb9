"""Tests for experiments/admin_api.py: the results and requests exports against a live ChatVault process (who may
call them, formats, since/until, errors in OpenAI's shape), the export's keyset pages, its constant memory, and the
model-selector stats' experiments list."""

import csv
import io
import json
import tracemalloc
import uuid
from datetime import UTC, timedelta
from decimal import Decimal

import httpx
import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from experiments import admin_api
from experiments.models import Experiment, Feedback, Variant
from experiments.results import experiment_results
from experiments.rollups import rollup_experiments
from routing.models import Model, RequestLog
from routing.rollups import floor_hour
from tests.factories import make_key, wait_for_reload

pytestmark = pytest.mark.django_db(transaction=True)

RESULTS = "/v1/admin/experiments/exp-1/results"
REQUESTS = "/v1/admin/experiments/exp-1/requests"
# 2 × n_units rows of exp-1 from row 0 on, a second apart from `start`: unit i % n_units, variant a or b by unit.
INSERT_ROWS = """
INSERT INTO routing_requestlog (
    request_id, created_at, endpoint, "user", requested_model, served_model, stream, outcome, status_code, error_type,
    error_message, prompt_tokens, completion_tokens, cost_usd, latency_ms, ttft_ms, attempts, decision, context_type,
    instance_id, api_key_id, experiment, variant, experiment_unit
)
SELECT gen_random_uuid(), %(start)s::timestamptz + make_interval(secs => i), 'chat.completions', '', 'model-a',
       'model-' || v, false, 'ok', 200, '', '', 100, 20, 0.00012::numeric(14, 8), 50 + i %% 100, NULL, 1, '{}'::jsonb,
       'code_generation', 'model-' || v || '-0', NULL, 'exp-1', v, 'unit-' || lpad((i %% %(units)s)::text, 12, '0')
FROM (SELECT i, CASE WHEN i %% %(units)s %% 2 = 0 THEN 'a' ELSE 'b' END AS v
      FROM generate_series(0, %(rows)s - 1) AS i) AS g
"""


def insert_rows(rows, units, start):
    """Insert rows RequestLog rows of exp-1 in SQL (fast enough for a few hundred thousand)."""
    with connection.cursor() as cursor:
        cursor.execute(INSERT_ROWS, {"start": start, "rows": rows, "units": units})


def make_experiment(exp_id="exp-1", status="draft"):
    """Create an experiment with variants a (control) and b on models model-a and model-b."""
    experiment = Experiment.objects.create(id=exp_id, name="Latency test", status=status, primary_metric="latency_ms")
    for position, name in enumerate("ab"):
        model, _ = Model.objects.get_or_create(name=f"model-{name}")
        Variant.objects.create(experiment=experiment, name=name, model=model, is_control=name == "a", position=position)
    return experiment


def log(at, unit, variant, *, latency_ms, context_type="", cost_usd=Decimal("0.00012")):
    return RequestLog.objects.create(
        request_id=uuid.uuid4(),
        created_at=at,
        served_model=f"model-{variant}",
        outcome="ok",
        status_code=200,
        latency_ms=latency_ms,
        prompt_tokens=10,
        completion_tokens=4,
        cost_usd=cost_usd,
        context_type=context_type,
        experiment="exp-1",
        variant=variant,
        experiment_unit=unit,
    )


@pytest.fixture
def admin_key(gateway):
    """Return an admin API key the gateway accepts."""
    raw = make_key("analyst", is_admin=True)
    wait_for_reload(gateway)
    return raw


@pytest.fixture
def experiment():
    """Return exp-1 with 12 logged requests (one with a hostile context type) and two ratings, rolled up."""
    experiment = make_experiment()
    start = floor_hour(timezone.now()) - timedelta(hours=2)
    for i in range(12):
        row = log(
            start + timedelta(minutes=i),
            f"unit-{i % 6}",
            "ab"[i % 6 % 2],
            latency_ms=100.0 + 10 * i,
            context_type="=1+2" if i == 0 else "chat",
        )
        if i < 2:
            Feedback.objects.create(
                request_id=row.request_id,
                score=1.0 - i,
                metric="helpful" if i else "feedback",
                experiment="exp-1",
                variant=row.variant,
                experiment_unit=row.experiment_unit,
                request_created_at=row.created_at,
            )
    rollup_experiments(since=start)
    experiment.start = start
    return experiment


def get(gateway, path, key=None):
    """Return (status, headers, body bytes)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return gateway.request("GET", path, headers=headers)


def csv_of(body):
    return list(csv.reader(io.StringIO(body.decode())))


# --- who may call them ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [RESULTS, REQUESTS])
def test_it_is_401_without_a_key_403_with_a_key_that_is_not_admin_and_200_with_an_admin_key(
    gateway, experiment, admin_key, path
):
    status, _, body = get(gateway, path)
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    client_key = make_key("client")
    wait_for_reload(gateway)
    status, _, body = get(gateway, path, client_key)
    assert status == 403 and json.loads(body)["error"]["type"] == "permission_error"
    assert get(gateway, path, admin_key)[0] == 200


def test_a_staff_session_may_export_and_a_session_without_staff_may_not(gateway, experiment, django_user_model):
    staff = django_user_model.objects.create_user(username="ana", password="pw-for-ana-123", is_staff=True)
    other = django_user_model.objects.create_user(username="bob", password="pw-for-bob-123")
    for user, expected in ((staff, 200), (other, 403)):
        django_client = Client()
        django_client.force_login(user)
        with httpx.Client(base_url=gateway.root_url, trust_env=False, timeout=10) as client:
            client.cookies.set("sessionid", django_client.cookies["sessionid"].value)
            assert client.get(RESULTS).status_code == expected
            assert client.get(REQUESTS).status_code == expected


# --- errors -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/admin/experiments/nope/results", "/v1/admin/experiments/nope/requests"])
def test_an_unknown_experiment_is_404_in_openai_shape(gateway, admin_key, path):
    status, _, body = get(gateway, path, admin_key)
    error = json.loads(body)["error"]
    assert (
        status == 404
        and error["code"] == "experiment_not_found"
        and set(error)
        == {
            "message",
            "type",
            "param",
            "code",
        }
    )


@pytest.mark.parametrize(
    ("path", "param"),
    [
        (RESULTS + "?format=xml", "format"),
        (REQUESTS + "?format=json", "format"),
        (REQUESTS + "?since=yesterday", "since"),
        (REQUESTS + "?until=2026-13-45", "until"),
        (REQUESTS + "?since=2026-02-01&until=2026-01-01", "until"),
    ],
)
def test_bad_parameters_are_400_in_openai_shape(gateway, experiment, admin_key, path, param):
    status, _, body = get(gateway, path, admin_key)
    error = json.loads(body)["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and error["param"] == param


# --- results ----------------------------------------------------------------------------------------------------------


def test_the_results_json_is_what_the_rollups_give(gateway, experiment, admin_key):
    status, headers, body = get(gateway, RESULTS, admin_key)
    assert status == 200 and headers["content-type"] == "application/json"
    shown = json.loads(body)
    expected = json.loads(json.dumps(experiment_results(experiment)))
    assert shown["metrics"] == expected["metrics"] and shown["srm"] == expected["srm"]
    assert [(v["variant"], v["units"], v["requests"]) for v in shown["variants"]] == [("a", 3, 6), ("b", 3, 6)]
    assert shown["experiment"]["id"] == "exp-1"


def test_the_results_csv_is_an_attachment_with_one_row_per_metric_and_variant(gateway, experiment, admin_key):
    status, headers, body = get(gateway, RESULTS + "?format=csv", admin_key)
    assert status == 200 and headers["content-type"].startswith("text/csv")
    assert headers["content-disposition"] == 'attachment; filename="exp-1-results.csv"'
    lines = csv_of(body)
    assert lines[0][:3] == ["metric", "variant", "is_control"]
    metric_names = experiment_results(experiment)["metric_names"]
    assert len(lines) == 1 + 2 * len(metric_names)


# --- requests ---------------------------------------------------------------------------------------------------------


def test_the_requests_csv_has_a_header_a_row_per_request_and_escapes_formulas(gateway, experiment, admin_key):
    status, headers, body = get(gateway, REQUESTS, admin_key)
    assert status == 200 and headers["content-type"].startswith("text/csv")
    assert headers["content-disposition"] == 'attachment; filename="exp-1-requests.csv"'
    lines = csv_of(body)
    assert lines[0][-2:] == ["feedback", "feedback_helpful"]
    records = [dict(zip(lines[0], line, strict=True)) for line in lines[1:]]
    assert len(records) == 12
    first = records[0]
    assert first["context_type"] == "'=1+2" and first["feedback"] == "1.0" and first["feedback_helpful"] == ""
    assert records[1]["feedback_helpful"] == "0.0"
    assert first["created_at"] == experiment.start.astimezone(UTC).isoformat()
    assert (first["latency_ms"], first["cost_usd"], first["variant"], first["model"]) == (
        "100.0",
        "0.00012",
        "a",
        "model-a",
    )
    assert [r["created_at"] for r in records] == sorted(r["created_at"] for r in records)


def test_the_requests_jsonl_has_one_object_per_request(gateway, experiment, admin_key):
    status, headers, body = get(gateway, REQUESTS + "?format=jsonl", admin_key)
    assert status == 200 and headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in body.decode().splitlines()]
    assert len(records) == 12 and records[0]["context_type"] == "=1+2" and records[0]["latency_ms"] == 100.0


def test_since_and_until_bound_the_requests(gateway, experiment, admin_key):
    since = (experiment.start + timedelta(minutes=3)).isoformat().replace("+00:00", "Z")
    until = (experiment.start + timedelta(minutes=7)).isoformat().replace("+00:00", "Z")
    status, _, body = get(gateway, f"{REQUESTS}?format=jsonl&since={since}&until={until}", admin_key)
    latencies = [json.loads(line)["latency_ms"] for line in body.decode().splitlines()]
    assert status == 200 and latencies == [130.0, 140.0, 150.0, 160.0]  # since <= created_at < until


def test_a_large_export_streams_every_row_once_across_pages(gateway, admin_key):
    make_experiment()
    rows = 2 * admin_api.EXPORT_PAGE + 17
    insert_rows(rows, 1000, timezone.now() - timedelta(days=1))
    status, _, body = get(gateway, REQUESTS, admin_key)
    lines = csv_of(body)
    assert status == 200 and len(lines) == rows + 1
    assert len({line[0] for line in lines[1:]}) == rows


# --- pages, in-process ------------------------------------------------------------------------------------------------


def pages(experiment_id="exp-1", fmt="csv", **bounds):
    """Yield the export's pages as the view reads them."""
    after = None
    while True:
        text, after = admin_api.export_page(
            experiment_id,
            since=bounds.get("since"),
            until=bounds.get("until"),
            after=after,
            feedback_metrics=["feedback"],
            fmt=fmt,
        )
        yield text
        if after is None:
            return


def test_pages_split_ties_of_the_same_instant_without_losing_or_repeating_rows(monkeypatch):
    make_experiment()
    at = timezone.now() - timedelta(hours=1)
    ids = {log(at, f"u{i}", "a", latency_ms=float(i)).request_id for i in range(7)}
    monkeypatch.setattr(admin_api, "EXPORT_PAGE", 3)
    exported = [line[0] for text in pages() for line in csv.reader(io.StringIO(text))]
    assert len(exported) == 7 and {uuid.UUID(i) for i in exported} == ids


def test_a_large_export_runs_in_constant_memory(monkeypatch):
    make_experiment()
    monkeypatch.setattr(admin_api, "EXPORT_PAGE", 1000)  # smaller pages: the same point, made with fewer rows
    rows = 60_000
    insert_rows(rows, 20_000, timezone.now() - timedelta(days=3))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE routing_requestlog")  # as autovacuum would: the page query then walks the index
    produced = count = 0
    tracemalloc.start()
    try:
        for text in pages():
            produced += len(text)
            count += text.count("\r\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    # The export is ~9 MB of text; holding it (or its rows) would peak above that, a page at about 2 MB.
    assert produced > 9_000_000 and peak < produced / 4, (produced, peak)
    print(f"exported {rows} rows, {produced / 1e6:.1f} MB, tracemalloc peak {peak / 1e6:.1f} MB")


# --- model-selector stats ---------------------------------------------------------------------------------------------


def test_the_model_selector_stats_list_running_experiments(gateway, experiment, admin_key):
    make_experiment("exp-2")  # a draft: not listed
    Experiment.objects.filter(pk="exp-1").update(status="running")
    status, _, body = get(gateway, "/v1/admin/model-selector/stats", admin_key)
    assert status == 200
    (summary,) = json.loads(body)["experiments"]
    assert (summary["id"], summary["status"], summary["primary_metric"]) == ("exp-1", "running", "latency_ms")
    assert [(v["variant"], v["model"], v["units"], v["requests"]) for v in summary["variants"]] == [
        ("a", "model-a", 3, 6),
        ("b", "model-b", 3, 6),
    ]
    assert summary["variants"][0]["verdict"] == "control" and summary["srm_mismatch"] is False
