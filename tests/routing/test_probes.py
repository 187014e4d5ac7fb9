"""Tests for routing/probes.py (active health checks), its Celery tasks and command, and its effect on a live gateway.

Probes hit real HTTP upstreams: the fake provider, a small recording server where the fake cannot show what a probe
sent (it records chat requests only), and a closed port.
"""

import io
import json
import time
import types
from datetime import timedelta
from http.server import BaseHTTPRequestHandler

import openai
import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from routing.models import InstanceProbe, Model, ProviderInstance, RoutingSettings
from routing.probes import instance_probe, instances_probe_due
from routing.tasks import probe_instance, probe_instances
from tests.factories import UPSTREAM_KEY, make_key, make_model, wait_for_model, wait_until_open
from tests.gateway import free_port
from tests.helpers import MESSAGES, local_http_server


def tune(**fields):
    """Change RoutingSettings the way admin does."""
    routing_settings = RoutingSettings.load()
    for name, value in fields.items():
        setattr(routing_settings, name, value)
    routing_settings.save()


def dead_upstream():
    """Return a stand-in for a fake provider whose URL nothing listens on."""
    return types.SimpleNamespace(url=f"http://127.0.0.1:{free_port()}/v1")


class _RecordingHandler(BaseHTTPRequestHandler):
    """Answer every GET with the server's configured status and body, after recording it."""

    def do_GET(self):
        server = self.server
        server.seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
        time.sleep(server.delay)
        body = json.dumps(server.body).encode()
        self.send_response(server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    """Return a local HTTP server that records GET requests; set `.status`, `.body`, `.delay` to change answers."""
    listing = {"object": "list", "data": []}
    with local_http_server(_RecordingHandler, seen=[], status=200, body=listing, delay=0.0) as server:
        yield server


@pytest.mark.django_db
def test_it_records_a_healthy_passthrough_instance(fake):
    (instance_id,) = make_model("vault-probe", [fake]).instance_ids

    before = timezone.now()
    probe = instance_probe(instance_id=instance_id)

    assert probe.pk is not None and probe.instance_id == instance_id
    assert probe.ok and probe.error == "" and probe.status_code is None
    assert probe.latency_ms > 0
    assert before <= probe.checked_at <= timezone.now()
    assert list(InstanceProbe.objects.values_list("pk", flat=True)) == [probe.pk]
    assert fake.requests() == [], "a pass-through probe lists models, it sends no chat request"


@pytest.mark.django_db
def test_it_lists_models_with_the_instance_key(recorder):
    (instance_id,) = make_model("vault-probe", [recorder]).instance_ids

    assert instance_probe(instance_id=instance_id).ok
    assert recorder.seen == [{"path": "/v1/models", "authorization": f"Bearer {UPSTREAM_KEY}"}]


@pytest.mark.django_db
def test_it_records_an_error_status_without_the_key(recorder):
    (instance_id,) = make_model("vault-probe", [recorder]).instance_ids
    recorder.status = 401
    recorder.body = {"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY}"}}

    probe = instance_probe(instance_id=instance_id)

    assert not probe.ok and probe.status_code == 401
    assert probe.error == "HTTP 401: Incorrect API key provided: ***"
    assert UPSTREAM_KEY not in InstanceProbe.objects.get().error


@pytest.mark.django_db
@pytest.mark.parametrize("status", [400, 404, 422])
def test_any_status_but_2xx_is_a_failed_probe(recorder, status):
    (instance_id,) = make_model("vault-probe", [recorder]).instance_ids
    recorder.status = status
    recorder.body = {"error": {"message": "Invalid model name passed in model=gpt-nope."}}

    probe = instance_probe(instance_id=instance_id)

    assert not probe.ok and probe.status_code == status
    assert probe.error == f"HTTP {status}: Invalid model name passed in model=gpt-nope."


@pytest.mark.django_db
def test_a_litellm_probe_answered_400_is_a_failed_probe(fake):
    (instance_id,) = make_model("vault-probe", [fake], adapter="litellm").instance_ids
    fake.set_config(reject="invalid_model")

    probe = instance_probe(instance_id=instance_id)

    assert not probe.ok and probe.status_code == 400
    assert "Invalid model name" in probe.error


@pytest.mark.django_db
def test_it_records_an_unreachable_instance():
    (instance_id,) = make_model("vault-probe", [dead_upstream()]).instance_ids

    probe = instance_probe(instance_id=instance_id)

    assert not probe.ok and probe.status_code is None
    assert probe.error.startswith("cannot reach upstream")
    assert probe.latency_ms is not None


@pytest.mark.django_db
def test_it_times_out_after_the_configured_timeout(recorder):
    (instance_id,) = make_model("vault-probe", [recorder]).instance_ids
    tune(health_check_timeout_seconds=0.2)
    recorder.delay = 2

    probe = instance_probe(instance_id=instance_id)

    assert not probe.ok and probe.error == "timed out after 0.2s"
    assert 150 < probe.latency_ms < 1500


@pytest.mark.django_db
def test_it_probes_a_litellm_instance_with_a_one_token_completion(fake):
    (instance_id,) = make_model("vault-probe", [fake], adapter="litellm").instance_ids

    assert instance_probe(instance_id=instance_id).ok
    (sent,) = fake.requests()
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent["body"]["max_tokens"] == 1
    assert sent["body"]["messages"] == [{"role": "user", "content": "ping"}]

    fake.set_config(status=503)
    probe = instance_probe(instance_id=instance_id)
    assert not probe.ok and probe.status_code == 503


@pytest.mark.django_db
def test_it_respects_the_interval(fake, fake_b):
    model = make_model("vault-probe", [fake, fake_b])

    first = instances_probe_due()
    assert sorted(p.instance_id for p in first) == sorted(model.instance_ids)
    assert all(p.ok and p.pk for p in first)
    assert instances_probe_due() == []
    assert instances_probe_due(now=timezone.now() + timedelta(seconds=29)) == []
    assert len(instances_probe_due(now=timezone.now() + timedelta(seconds=31))) == 2
    assert InstanceProbe.objects.count() == 4


@pytest.mark.django_db
def test_an_interval_of_zero_turns_probing_off(fake):
    make_model("vault-probe", [fake])
    tune(health_check_interval_seconds=0)

    assert instances_probe_due() == []
    assert InstanceProbe.objects.count() == 0


@pytest.mark.django_db
def test_it_probes_only_serving_instances(fake):
    serving, drained, disabled = make_model("vault-probe", [fake, fake, fake]).instance_ids
    ProviderInstance.objects.filter(pk=drained).update(drained=True)
    ProviderInstance.objects.filter(pk=disabled).update(enabled=False)
    off_model = make_model("vault-probe-off", [fake])
    Model.objects.filter(pk=off_model.pk).update(enabled=False)

    assert [p.instance_id for p in instances_probe_due()] == [serving]
    assert [p.instance_id for p in instances_probe_due(ignore_interval=True)] == [serving]


@pytest.mark.django_db
def test_it_prunes_day_old_probes(fake):
    (instance_id,) = make_model("vault-probe", [fake]).instance_ids
    now = timezone.now()
    old = InstanceProbe.objects.create(instance_id=instance_id, checked_at=now - timedelta(hours=25), ok=True)
    recent = InstanceProbe.objects.create(instance_id=instance_id, checked_at=now - timedelta(hours=1), ok=True)

    (new,) = instances_probe_due()

    assert set(InstanceProbe.objects.values_list("pk", flat=True)) == {recent.pk, new.pk}
    assert not InstanceProbe.objects.filter(pk=old.pk).exists()


@pytest.mark.django_db
def test_the_celery_tasks_run_eagerly_without_a_broker(fake):
    assert settings.CELERY_TASK_ALWAYS_EAGER
    healthy, sick = make_model("vault-probe", [fake, dead_upstream()]).instance_ids

    assert probe_instances.delay().get() == 2
    assert probe_instance.delay(sick).get() is False
    assert probe_instance.delay(healthy).get() is True
    assert InstanceProbe.objects.filter(instance_id=sick, ok=False).count() == 2


def test_the_worker_finds_the_tasks_and_beat_schedules_the_round():
    from chatvault_site.celery import app

    app.loader.import_default_modules()  # what a worker does at start: triggers autodiscovery
    assert {"routing.tasks.probe_instances", "routing.tasks.probe_instance"} <= set(app.tasks)
    (entry,) = (e for e in app.conf.beat_schedule.values() if e["task"] == "routing.tasks.probe_instances")
    assert entry["schedule"] == 5.0


@pytest.mark.django_db
def test_the_command_runs_one_round_and_prints_it(fake):
    healthy, sick = make_model("vault-probe", [fake, dead_upstream()]).instance_ids
    tune(health_check_interval_seconds=0)

    out = io.StringIO()
    call_command("probe_instances", stdout=out)
    assert out.getvalue().strip() == "No instance is due for a probe."

    out = io.StringIO()
    call_command("probe_instances", "--all", stdout=out)
    lines = dict(line.split(maxsplit=1) for line in out.getvalue().splitlines())
    assert lines[healthy].startswith("ok ") and lines[healthy].endswith(" ms")
    assert lines[sick].startswith("failed ") and "cannot reach upstream" in lines[sick]
    assert InstanceProbe.objects.count() == 2


# --- End to end: probe results reach a live gateway's breakers ------------------------------------------------------


def _probe_twice():
    """Run two scheduled rounds, the second one interval later; return the rows."""
    first = instances_probe_due()
    return first + instances_probe_due(now=timezone.now() + timedelta(seconds=31))


def _served_by(client, model_name, count=6):
    """Send requests and return the instances that served them."""
    served = []
    for _ in range(count):
        resp = client.chat.completions.with_raw_response.create(model=model_name, messages=MESSAGES)
        resp.parse()
        served.append(resp.headers["x-chatvault-instance"])
    return served


@pytest.mark.django_db(transaction=True)
def test_failed_probes_open_the_breaker_of_a_gateway(gateway, fake, fake_b):
    tune(breaker_consecutive_failures=2)
    healthy, sick = make_model("vault-probed", [fake, fake_b], adapter="litellm").instance_ids
    raw = make_key()
    wait_for_model(gateway, raw, "vault-probed")
    fake_b.set_config(status=503)

    probes = _probe_twice()

    assert sorted((p.instance_id, p.ok, p.status_code) for p in probes) == sorted(
        [(healthy, True, None), (healthy, True, None), (sick, False, 503), (sick, False, 503)]
    )
    # The upstream has recovered, but the gateway only learns that from a trial once the breaker cools down.
    fake_b.reset_config()
    fake_b.clear_requests()
    fake.clear_requests()
    wait_until_open(gateway, sick)
    client = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)

    assert set(_served_by(client, "vault-probed")) == {healthy}
    assert len(fake.requests()) == 6
    assert fake_b.requests() == []


@pytest.mark.django_db(transaction=True)
def test_a_passthrough_instance_that_fails_its_probes_gets_no_requests(gateway, fake):
    # One attempt per request: without the probes, round-robin would send every other request to the dead one.
    tune(breaker_consecutive_failures=2, max_attempts=1)
    healthy, dead = make_model("vault-probed-pt", [fake, dead_upstream()]).instance_ids
    raw = make_key()
    wait_for_model(gateway, raw, "vault-probed-pt")

    probes = _probe_twice()

    assert [p.ok for p in probes if p.instance_id == dead] == [False, False]
    wait_until_open(gateway, dead)
    client = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)

    assert set(_served_by(client, "vault-probed-pt")) == {healthy}
