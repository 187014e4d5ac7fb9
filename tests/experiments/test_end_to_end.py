"""An experiment from first request to verdict: live gateway, two fake providers, feedback, rollup, results, exports.

The control (e2e-a) is fast and never fails; the treatment (e2e-b) is 40 ms slower and fails every other request,
but users like its answers better. The results (JSON, CSV and the admin page) must say exactly that, with numbers
that match what the request log and the feedback hold, recomputed here independently, unit by unit.
"""

import csv
import io
import json
import statistics as stats
from collections import defaultdict

import pytest
from django.contrib.auth.models import User
from django.test import Client

from experiments.models import Feedback
from experiments.rollups import rollup_experiments
from routing.models import RequestLog
from tests.factories import make_experiment, make_key, make_model, tune, wait_for_model, wait_for_reload
from tests.gateway import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

UNITS = 120
REQUESTS_PER_UNIT = 2


def post(gateway, raw_key, path, body, headers=None):
    """POST JSON; return (status, lower-cased headers, parsed body)."""
    status, response_headers, raw = gateway.request(
        "POST", path, body=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json", **(headers or {})},
    )  # fmt: skip
    return status, {k.lower(): v for k, v in response_headers.items()}, json.loads(raw or b"null")


def liked(unit_index, variant, request_index):
    """Return the thumbs a user gives: the treatment's answers are liked 3 times in 4, the control's 1 in 4."""
    wheel = (unit_index + request_index) % 4
    return wheel != 0 if variant == "e2e-b" else wheel == 0


def unit_means(rows, value):
    """Return {variant: [each unit's mean of value(row) over its rows that have one]}."""
    per_unit = defaultdict(list)
    for row in rows:
        v = value(row)
        if v is not None:
            per_unit[(row.variant, row.experiment_unit)].append(v)
    result = defaultdict(list)
    for (variant, _), values in per_unit.items():
        result[variant].append(sum(values) / len(values))
    return result


def test_traffic_and_feedback_give_the_right_winner_everywhere(gateway, fake, fake_b):
    control = make_model("e2e-a", [fake])
    treatment = make_model("e2e-b", [fake_b])
    make_experiment("e2e", [control, treatment], name="Fast vs liked", primary_metric="feedback",
                    guardrail_metrics=["success_rate", "latency_ms"])  # fmt: skip
    raw = make_key(name="e2e-app")
    admin_raw = make_key(name="e2e-admin", is_admin=True)
    # A failure reaches the client (and the row) instead of failing over, and never trips the treatment's breaker.
    tune(gateway, max_attempts=1, breaker_consecutive_failures=10_000, breaker_error_ratio=1.0)
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, "e2e-a")
    fake_b.set_config(latency_ms=40, error_rate=0.5)

    served = []
    for unit in range(UNITS):
        for index in range(REQUESTS_PER_UNIT):
            status, headers, _ = post(gateway, raw, "/v1/chat/completions",
                                      {"model": "e2e-a", "messages": [{"role": "user", "content": "hi"}],
                                       "user": f"user-{unit}"})  # fmt: skip
            assert headers["x-chatvault-experiment"] == "e2e"
            served.append((unit, index, headers["x-request-id"], headers["x-chatvault-variant"], status))
    assert {v for *_, v, _ in served} == {"e2e-a", "e2e-b"}
    for unit, index, request_id, variant, status in served:
        if status == 200:
            up = liked(unit, variant, index)
            code, _, answer = post(gateway, raw, "/v1/feedback", {"request_id": request_id, "score": up})
            assert code == 200 and answer["variant"] == variant, answer

    wait_until(lambda: RequestLog.objects.filter(experiment="e2e").count() == len(served), message="every row")
    rated = sum(1 for *_, status in served if status == 200)
    wait_until(lambda: Feedback.objects.filter(experiment="e2e").count() == rated, message="every feedback row")
    rollup_experiments()

    rows = list(RequestLog.objects.filter(experiment="e2e"))
    expected = {
        "success_rate": unit_means(rows, lambda r: 1.0 if r.outcome == "ok" else 0.0),
        "latency_ms": unit_means(rows, lambda r: r.latency_ms if r.outcome == "ok" else None),
    }
    scores = {str(f.request_id): f.score for f in Feedback.objects.filter(experiment="e2e")}
    expected["feedback"] = unit_means(rows, lambda r: scores.get(str(r.request_id)))

    def export(path):
        status, headers, body = gateway.request("GET", path, headers={"Authorization": f"Bearer {admin_raw}"})
        assert status == 200, body
        return {k.lower(): v for k, v in headers.items()}, body.decode()

    # The JSON export: the right verdicts, and means and sds that match the log unit by unit.
    results = json.loads(export("/v1/admin/experiments/e2e/results")[1])
    assert results["experiment"]["id"] == "e2e" and not results["srm"]["mismatch"]
    metrics = {(m["metric"], m["variant"]): m for m in results["metrics"]}
    verdicts = {name: metrics[(name, "e2e-b")]["verdict"] for name in ("feedback", "latency_ms", "success_rate")}
    assert verdicts == {"feedback": "better", "latency_ms": "worse", "success_rate": "worse"}, [
        metrics[(name, "e2e-b")] for name in verdicts
    ]
    for name, by_variant in expected.items():
        for variant, means in by_variant.items():
            figure = metrics[(name, variant)]
            assert figure["n"] == len(means), (name, variant)
            assert figure["mean"] == pytest.approx(stats.fmean(means), abs=1e-6), (name, variant)
            assert figure["sd"] == pytest.approx(stats.stdev(means), abs=1e-6), (name, variant)
    units = {v["variant"]: v["units"] for v in results["variants"]}
    assert units == {v: len(expected["success_rate"][v]) for v in ("e2e-a", "e2e-b")}
    assert sum(units.values()) == UNITS

    # The CSV export says the same.
    headers, text = export("/v1/admin/experiments/e2e/results?format=csv")
    assert headers["content-type"].startswith("text/csv")
    by_key = {(r["metric"], r["variant"]): r for r in csv.DictReader(io.StringIO(text))}
    assert {name: by_key[(name, "e2e-b")]["verdict"] for name in verdicts} == verdicts
    assert float(by_key[("feedback", "e2e-b")]["mean"]) == pytest.approx(stats.fmean(expected["feedback"]["e2e-b"]))

    # The requests export: one row per request, with the feedback column.
    lines = [json.loads(line) for line in export("/v1/admin/experiments/e2e/requests?format=jsonl")[1].splitlines()]
    assert len(lines) == len(served)
    assert sum(1 for line in lines if line.get("feedback") is not None) == rated

    # The admin results page, as a staff member sees it.
    User.objects.create_superuser("analyst", "analyst@example.com", "pw-for-tests-only")
    client = Client()
    client.force_login(User.objects.get(username="analyst"))
    page = client.get("/admin/experiments/experiment/e2e/results/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Fast vs liked" in html and "p-value" in html and "95 % CI" in html and "lift" in html.lower()
    assert html.count("<svg") >= 3  # a chart per metric over time
    for word in ("better", "worse"):
        assert word in html
