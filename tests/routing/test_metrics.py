"""`GET /metrics` (routing/metrics.py) against live ChatVault processes and a live fake provider: what real requests
count and under which labels, the histograms' buckets, the breaker state, who may scrape, and totals across several
workers (two gateway processes sharing one multiprocess directory, and `uvicorn --workers 2`)."""

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from routing import metrics
from routing.models import ConfigRevision, RequestLog
from tests.factories import make_key, make_model, wait_for_model
from tests.fakes import HOST, REPO_ROOT
from tests.gateway import Gateway, free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hello there"}]
TOKEN = "metrics-test-token-0000"


def scrape(gateway, headers=None):
    """Return {(sample name, frozen labels): value} of a successful scrape, parsed by prometheus_client's parser."""
    status, resp_headers, body = gateway.request("GET", "/metrics", headers=headers)
    assert status == 200, body
    assert resp_headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples, name, **labels):
    """Return the sample's value, 0 when absent (a counter not incremented yet has no series)."""
    return samples.get((name, frozenset(labels.items())), 0)


def total(samples, name, **labels):
    """Return the sum of every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def chat(gateway, raw_key, model, **kwargs):
    """Send one chat completion; return the response, or the APIStatusError it raised."""
    client = openai.OpenAI(base_url=gateway.url, api_key=raw_key, max_retries=0)
    try:
        if kwargs.get("stream"):
            return list(client.chat.completions.create(model=model, messages=MESSAGES, **kwargs))
        return client.chat.completions.create(model=model, messages=MESSAGES, **kwargs)
    except openai.APIStatusError as exc:
        return exc


def served(gateway, name, fakes, **fields):
    """Return (raw key, model) for a model with a unique name on the fakes, once the gateway serves it."""
    model = make_model(f"{name}-{uuid.uuid4().hex[:8]}", fakes, **fields)
    raw = make_key(f"key-{model.name}")
    wait_for_model(gateway, raw, model.name)
    return raw, model


def logged_rows(model, count):
    """Wait until the model has `count` chat rows; return them."""
    wait_until(
        lambda: RequestLog.objects.filter(served_model=model.name, endpoint="chat.completions").count() >= count,
        message=f"{count} rows of {model.name}",
    )
    return list(RequestLog.objects.filter(served_model=model.name, endpoint="chat.completions"))


def test_it_counts_requests_by_model_instance_outcome_and_status(gateway, fake, fake_b):
    raw, model = served(gateway, "vault-metrics", [fake, fake_b], input_cost_per_mtok=2, output_cost_per_mtok=8)
    chat(gateway, raw, model.name)
    chat(gateway, raw, model.name)
    chat(gateway, raw, model.name, stream=True, stream_options={"include_usage": True})
    fake.set_config(status=500)
    fake_b.set_config(status=500)
    assert chat(gateway, raw, model.name).status_code == 502  # tried on both instances
    rows = logged_rows(model, 4)

    samples = scrape(gateway)
    assert total(samples, "chatvault_requests_total", model=model.name) == 4
    assert total(samples, "chatvault_requests_total", model=model.name, outcome="ok", status="200") == 3
    assert total(samples, "chatvault_requests_total", model=model.name, outcome="upstream_error", status="502") == 1
    for instance in model.instance_ids:
        mine = [row for row in rows if row.instance_id == instance]
        labels = {"endpoint": "chat.completions", "model": model.name, "instance": instance}
        for outcome, status in {(row.outcome, row.status_code) for row in mine}:
            count = sum(1 for row in mine if (row.outcome, row.status_code) == (outcome, status))
            assert value(samples, "chatvault_requests_total", **labels, outcome=outcome, status=str(status)) == count
        assert value(samples, "chatvault_request_duration_seconds_count", **labels) == len(mine)
        assert value(samples, "chatvault_request_duration_seconds_sum", **labels) == pytest.approx(
            sum(row.latency_ms for row in mine) / 1000, rel=1e-6
        )
        both = {"model": model.name, "instance": instance}
        prompt = sum(row.prompt_tokens or 0 for row in mine)
        completion = sum(row.completion_tokens or 0 for row in mine)
        assert value(samples, "chatvault_tokens_total", **both, kind="prompt") == prompt
        assert value(samples, "chatvault_tokens_total", **both, kind="completion") == completion
        cost = sum((row.cost_usd or Decimal(0)) for row in mine)
        assert value(samples, "chatvault_cost_usd_total", **both) == pytest.approx(float(cost))
    assert (
        total(samples, "chatvault_tokens_total", model=model.name)
        == sum((row.prompt_tokens or 0) + (row.completion_tokens or 0) for row in rows)
        > 0
    )
    assert total(samples, "chatvault_cost_usd_total", model=model.name) > 0
    assert total(samples, "chatvault_time_to_first_token_seconds_count", model=model.name) == 1
    assert value(samples, "chatvault_retries_total", model=model.name) == 1  # the failed request's second attempt
    assert value(samples, "chatvault_workers") == 1
    assert value(samples, "chatvault_config_revision", revision=str(ConfigRevision.current_token())) == 1
    assert ("chatvault_request_log_pending_rows", frozenset()) in samples
    assert value(samples, "chatvault_request_log_dropped_rows_total") == 0
    assert value(samples, "chatvault_request_log_written_rows_total") >= 4
    assert value(samples, "chatvault_event_loop_ticks_total") > 0
    assert ("chatvault_event_loop_max_lag_seconds", frozenset()) in samples


def test_the_duration_histograms_fill_the_right_buckets(gateway, fake):
    raw, model = served(gateway, "vault-buckets", [fake])
    fake.set_config(latency_ms=300)
    chat(gateway, raw, model.name)
    chat(gateway, raw, model.name, stream=True)
    logged_rows(model, 2)

    samples = scrape(gateway)
    labels = {"endpoint": "chat.completions", "model": model.name, "instance": model.instance_ids[0]}
    buckets = {
        float(dict(found)["le"]): v
        for (name, found), v in samples.items()
        if name == "chatvault_request_duration_seconds_bucket" and set(labels.items()) <= found
    }
    assert sorted(buckets) == [*metrics.DURATION_BUCKETS, float("inf")]
    assert buckets[0.25] == 0  # each took 300 ms and some
    assert buckets[1] == 2
    assert buckets[float("inf")] == 2
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    ttft = {"model": model.name, "instance": model.instance_ids[0]}
    assert value(samples, "chatvault_time_to_first_token_seconds_bucket", **ttft, le="0.25") == 0
    assert value(samples, "chatvault_time_to_first_token_seconds_bucket", **ttft, le="1.0") == 1


def test_it_shows_each_instances_breaker_state_and_whether_it_is_usable(gateway, fake, fake_b):
    raw, model = served(gateway, "vault-breakers", [fake, fake_b])
    broken, healthy = model.instance_ids
    fake.set_config(status=503)

    def broken_is_open():
        chat(gateway, raw, model.name)
        return value(scrape(gateway), "chatvault_breaker_state", model=model.name, instance=broken, state="open")

    wait_until(broken_is_open, timeout=20, message="the failing instance's breaker open")
    samples = scrape(gateway)
    for state in ("closed", "half_open"):
        assert value(samples, "chatvault_breaker_state", model=model.name, instance=broken, state=state) == 0
    assert value(samples, "chatvault_breaker_state", model=model.name, instance=healthy, state="closed") == 1
    assert value(samples, "chatvault_breaker_state", model=model.name, instance=healthy, state="open") == 0
    assert value(samples, "chatvault_instance_usable", model=model.name, instance=broken) == 0
    assert value(samples, "chatvault_instance_usable", model=model.name, instance=healthy) == 1
    assert value(samples, "chatvault_instance_drained", model=model.name, instance=broken) == 0
    assert (("chatvault_instance_in_flight_requests", frozenset({"model": model.name, "instance": healthy}.items()))
            in samples)  # fmt: skip


def test_without_a_token_only_local_clients_through_no_proxy_may_scrape(gateway):
    assert value(scrape(gateway), "chatvault_workers") == 1
    # uvicorn trusts X-Forwarded-For from 127.0.0.1: the request then comes from the address it names.
    for headers in (
        {"X-Forwarded-For": "203.0.113.7"},
        {"X-Forwarded-For": "127.0.0.1"},  # a local proxy forwarding someone: not a local client
        {"Forwarded": "for=127.0.0.1"},
        {"X-Real-IP": "127.0.0.1"},
    ):
        status, _, body = gateway.request("GET", "/metrics", headers=headers)
        assert status == 403, headers
        assert b"chatvault_" not in body


def test_with_a_token_every_scrape_must_bring_it(database_url):
    # An empty PROMETHEUS_MULTIPROC_DIR (as `.env` files write unset variables) is no directory: values stay in memory.
    with Gateway.start(database_url, chatvault_metrics_token=TOKEN, prometheus_multiproc_dir="") as gw:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):  # fmt: skip
            status, _, body = gw.request("GET", "/metrics", headers=headers)
            assert status == 401, headers
            assert b"chatvault_" not in body
        # The token stands for the caller, wherever it comes from.
        for extra in ({}, {"X-Forwarded-For": "203.0.113.7"}):
            assert value(scrape(gw, {"Authorization": f"Bearer {TOKEN}", **extra}), "chatvault_workers") == 1
        assert not list(REPO_ROOT.glob(f"*_{gw.process.pid}.db"))  # no multiprocess files in the working directory


@pytest.mark.parametrize(
    ("address", "forwarded", "local"),
    [
        ("127.0.0.1", False, True),
        ("127.0.0.53", False, True),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("127.0.0.1", True, False),
        ("10.0.0.5", False, False),
        ("::ffff:10.0.0.5", False, False),
        ("192.168.1.1", False, False),
        ("", False, False),
        (None, False, False),
        ("localhost", False, False),
    ],
)
def test_it_tells_local_clients_apart(address, forwarded, local):
    assert metrics.is_local_client(address, forwarded) is local


def test_it_compares_the_token_of_a_bearer_header_only():
    assert metrics.has_token("Bearer abc", "abc")
    assert metrics.has_token("bearer abc", "abc")
    assert not metrics.has_token("Bearer abcd", "abc")
    assert not metrics.has_token("Token abc", "abc")
    assert not metrics.has_token("", "abc")
    assert not metrics.has_token(None, "abc")


@contextlib.contextmanager
def uvicorn_workers(database_url, directory, workers):
    """Run `uvicorn --workers N` on a free port sharing the multiprocess directory; yield it as a Gateway."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=database_url, PROMETHEUS_MULTIPROC_DIR=directory,
               CHATVAULT_CONFIG_POLL_SECONDS="0.1", CHATVAULT_LOG_FLUSH_SECONDS="0.05")  # fmt: skip
    log_file = tempfile.NamedTemporaryFile(prefix="gateway-workers-", suffix=".log", delete=False)
    command = [sys.executable, "-m", "uvicorn", "chatvault_site.asgi:application", "--host", HOST, "--port", str(port),
               "--workers", str(workers), "--no-access-log"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                               stderr=subprocess.STDOUT)  # fmt: skip
    gateway = Gateway(process, port, log_file)
    with gateway:
        wait_until(gateway._healthy, timeout=60, message="uvicorn workers up")
        yield gateway
        gateway.wait_log_drained()


def test_two_gateway_processes_sharing_the_directory_report_the_same_totals(database_url, fake, tmp_path):
    directory = str(tmp_path / "metrics")
    with Gateway.start(database_url, prometheus_multiproc_dir=directory) as first:
        raw, model = served(first, "vault-workers", [fake])
        instance = model.instance_ids[0]
        labels = {"endpoint": "chat.completions", "model": model.name, "instance": instance, "outcome": "ok",
                  "status": "200"}  # fmt: skip

        def requests(gw):
            return value(scrape(gw), "chatvault_requests_total", **labels)

        with Gateway.start(database_url, prometheus_multiproc_dir=directory) as second:
            wait_for_model(second, raw, model.name)
            for _ in range(3):
                chat(first, raw, model.name)
            for _ in range(2):
                chat(second, raw, model.name)
            assert requests(first) == requests(second) == 5
            wait_until(lambda: value(scrape(first), "chatvault_workers") == 2, message="both workers published")
            counts = "chatvault_request_duration_seconds_count"
            assert value(scrape(second), counts, endpoint="chat.completions", model=model.name, instance=instance) == 5
            assert second.terminate() in (0, -15)
            assert f"gauge_livesum_{second.process.pid}.db" not in os.listdir(directory)  # removed as it stopped

        # A worker gone: its live gauges go, its counts stay.
        assert value(scrape(first), "chatvault_workers") == 1
        assert requests(first) == 5
        with Gateway.start(database_url, prometheus_multiproc_dir=directory) as third:
            # Starting, it folded the dead worker's files into the archive: the totals hold.
            assert {name for name in os.listdir(directory) if name.startswith("counter_")} == {
                "counter_archive.db",
                f"counter_{first.process.pid}.db",
                f"counter_{third.process.pid}.db",
            }
            assert requests(third) == requests(first) == 5
            wait_for_model(third, raw, model.name)
            chat(third, raw, model.name)
            assert requests(first) == 6
            third.process.kill()  # no graceful stop: the next scrape forgets its live gauges itself
            third.process.wait()
        assert value(scrape(first), "chatvault_workers") == 1
        assert requests(first) == 6
        first.wait_log_drained()


def test_uvicorn_workers_add_up(database_url, fake, tmp_path):
    with uvicorn_workers(database_url, str(tmp_path / "metrics"), workers=2) as gw:
        raw, model = served(gw, "vault-uvicorn", [fake])
        time.sleep(0.5)  # the other worker reloads within its poll interval too
        wait_until(lambda: value(scrape(gw), "chatvault_workers") == 2, timeout=20, message="both workers published")
        for _ in range(12):
            assert not isinstance(chat(gw, raw, model.name), Exception)
        labels = {"endpoint": "chat.completions", "model": model.name, "instance": model.instance_ids[0]}
        # Each scrape lands on either worker (a new connection each): every one adds up both.
        for _ in range(8):
            samples = scrape(gw)
            assert value(samples, "chatvault_requests_total", **labels, outcome="ok", status="200") == 12
            assert value(samples, "chatvault_workers") == 2


def test_the_docs_list_every_metric_and_the_dashboard_uses_only_real_ones(gateway):
    status, _, body = gateway.request("GET", "/metrics")
    assert status == 200
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    queried = {}  # the name a query uses -> the name the docs use
    for family in text_string_to_metric_families(body.decode()):
        documented_as = family.name + ("_total" if family.type == "counter" else "")
        for suffix in suffixes[family.type]:
            queried[family.name + suffix] = documented_as
    documented = set(re.findall(r"`(chatvault_[a-z0-9_]+)`", (REPO_ROOT / "docs" / "metrics.md").read_text()))
    assert len(set(queried.values())) == 24
    assert set(queried.values()) <= documented
    dashboard = json.loads((REPO_ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", ())]
    used = {name for expr in exprs for name in re.findall(r"chatvault_[a-z0-9_]+", expr)}
    assert used and used <= set(queried)
