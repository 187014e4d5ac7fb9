"""Tests for routing/admin/dashboard.py: the admin index's dashboard and the figures of the model and instance lists,
read from the rollups and the live routing state, with a bounded number of queries whatever the log holds."""

import re
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from routing import histogram, state
from routing.admin import dashboard
from routing.auth import api_key_create
from routing.health import OPEN, BreakerState
from routing.models import InstanceProbe, KeyRollup, Model, Provider, ProviderInstance
from routing.rollups import floor_hour, rollup_request_logs
from tests.routing.test_rollups import log as rollups_log

pytestmark = pytest.mark.django_db

RED, GREEN, GREY_BLUE, GREY, PURPLE = "#c62828", "#2e7d32", "#546e7a", "#9e9e9e", "#6a1b9a"


@pytest.fixture
def provider():
    """Return an OpenAI-compatible provider with a key."""
    obj = Provider(name="openai", kind="openai", api_base="https://api.openai.example/v1")
    obj.set_api_key("sk-provider-key-0000")
    obj.save()
    return obj


def make_instances(model, provider, *ids, **fields):
    """Create instances of the model on the provider; return them."""
    return [
        ProviderInstance.objects.create(id=i, model=model, provider=provider, litellm_model="openai/gpt-4o", **fields)
        for i in ids
    ]


@pytest.fixture
def fleet(provider):
    """Return {name: instance}: vault-a's healthy, broken, drained and disabled instances, and vault-b's keyless one."""
    a = Model.objects.create(name="vault-a")
    b = Model.objects.create(name="vault-b")
    (healthy, broken) = make_instances(a, provider, "a-healthy", "a-broken")
    (drained,) = make_instances(a, provider, "a-drained", drained=True)
    (disabled,) = make_instances(a, provider, "a-disabled", enabled=False)
    keyless_provider = Provider.objects.create(name="groq", kind="groq", openai_compatible=True)
    (keyless,) = make_instances(b, keyless_provider, "b-keyless")
    return {i.pk: i for i in (healthy, broken, drained, disabled, keyless)}


@pytest.fixture
def broken(fleet):
    """Open a-broken's breaker in this process's routing state (what the admin reads); undo afterwards."""
    routing_state = state.get()
    reason = "5 consecutive failures, last: HTTP 503: <script>alert('upstream')</script>"
    routing_state.breakers["a-broken"] = BreakerState(state=OPEN, reason=reason, until=time.time() + 60, trips=1)
    yield routing_state
    routing_state.breakers.pop("a-broken", None)


def log(at, *, instance="a-healthy", key=None, **fields):
    """Write one chat RequestLog row (of vault-a, ok, 100 ms unless told), by this key."""
    return rollups_log(at, instance=instance, api_key=key, **fields)


def shown(ms):
    """Return how a percentile of this value is shown: its histogram bucket's middle (within 6 %), in whole ms."""
    return f"{histogram.bucket_value(histogram.bucket_index(ms)):,.0f}"


def index(client, **params):
    """Return the admin index page's HTML."""
    response = client.get(reverse("admin:index"), params)
    assert response.status_code == 200
    return response.content.decode()


def row(page, kind, name):
    """Return the HTML of the dashboard's row of a model or instance."""
    match = re.search(rf'<tr class="{kind}-row" data-{kind}="{re.escape(name)}">(.*?)</tr>', page, re.S)
    assert match, f"no {kind} row for {name}"
    return match.group(1)


def cell(html, name):
    """Return the text of a cell with this class in a row."""
    match = re.search(rf'<td class="[^"]*\b{name}\b[^"]*">(.*?)</td>', html, re.S)
    assert match, f"no {name} cell"
    return match.group(1).strip()


def badge(html):
    """Return (colour, words) of the state badge in a row."""
    match = re.search(r'<span class="state-badge [^"]*" style="background: (#[0-9a-f]{6});[^"]*">([^<]*)</span>', html)
    assert match, "no state badge"
    return match.groups()


# --- the dashboard ------------------------------------------------------------------------------------------------


def test_each_instance_shows_its_state_in_its_colour(admin_client, fleet, broken):
    page = index(admin_client)

    assert badge(row(page, "instance", "a-healthy")) == (GREEN, "closed")
    assert badge(row(page, "instance", "a-broken")) == (RED, "open")
    assert badge(row(page, "instance", "a-drained")) == (GREY_BLUE, "drained")
    assert badge(row(page, "instance", "a-disabled")) == (GREY, "disabled")
    assert badge(row(page, "instance", "b-keyless")) == (PURPLE, "no key")
    assert "no API key: set one on the instance or its provider" in row(page, "instance", "b-keyless")
    # a model is as healthy as its instances: amber while some serve, red when none does
    assert badge(row(page, "model", "vault-a")) == ("#ef6c00", "1 of 4 serving")
    assert badge(row(page, "model", "vault-b")) == (RED, "0 of 1 serving")
    assert f'href="{reverse("admin:routing_providerinstance_change", args=["a-broken"])}"' in page


def test_an_upstream_reason_is_shown_escaped(admin_client, broken):
    html = row(index(admin_client), "instance", "a-broken")
    assert "HTTP 503: &lt;script&gt;alert(&#x27;upstream&#x27;)&lt;/script&gt;" in html
    assert "<script>" not in html


def test_a_half_open_breaker_is_amber_and_a_model_without_instances_red(admin_client, fleet, broken):
    broken.breakers["a-broken"] = BreakerState(state=OPEN, reason="cooling", until=time.time() - 1, trips=1)
    Model.objects.create(name="vault-empty")
    page = index(admin_client)
    assert badge(row(page, "instance", "a-broken")) == ("#ef6c00", "half open")
    assert badge(row(page, "model", "vault-empty")) == (RED, "no instance")


def test_the_figures_are_the_rollups_not_the_log(admin_client, fleet):
    now = timezone.now()
    key, _ = api_key_create(name="billing")
    for ms in (100.0, 100.0, 100.0, 1000.0):
        log(now - timedelta(minutes=5), latency_ms=ms, cost_usd="0.25", key=key, ttft_ms=ms / 10, stream=True)
    log(now - timedelta(minutes=4), outcome="upstream_error", latency_ms=30.0, instance="a-broken", key=key)
    log(now - timedelta(minutes=4), outcome="no_capacity", instance=None, key=key)  # reached no instance
    rollup_request_logs()
    log(now - timedelta(minutes=3), cost_usd="100")  # logged after the last rollup: not shown until the next one

    page = index(admin_client)

    healthy = row(page, "instance", "a-healthy")
    assert cell(healthy, "requests") == "4"
    assert cell(healthy, "error-rate") == "0.0 %"
    assert cell(healthy, "latency") == f"{shown(100)} / {shown(1000)}"
    assert cell(healthy, "ttft") == f"{shown(10)} / {shown(100)}"
    assert cell(healthy, "cost") == "1.0000"
    assert cell(row(page, "instance", "a-broken"), "error-rate") == "100.0 %"
    model = row(page, "model", "vault-a")
    assert (cell(model, "requests"), cell(model, "error-rate")) == ("6", "33.3 %")
    assert cell(model, "cost") == "1.0000"
    assert cell(row(page, "instance", "a-drained"), "requests") == "0"
    assert cell(row(page, "instance", "a-drained"), "latency") == "—"


def test_the_window_is_the_last_hour_or_the_last_24_hours(admin_client, fleet):
    now = timezone.now()
    log(now - timedelta(minutes=10))
    log(now - timedelta(hours=3))
    log(now - timedelta(hours=30))  # in neither
    rollup_request_logs(since=now - timedelta(hours=31))

    assert cell(row(index(admin_client, window="1h"), "instance", "a-healthy"), "requests") == "1"
    assert cell(row(index(admin_client, window="24h"), "instance", "a-healthy"), "requests") == "2"
    assert cell(row(index(admin_client), "instance", "a-healthy"), "requests") == "2"  # the default
    assert cell(row(index(admin_client, window="7y"), "instance", "a-healthy"), "requests") == "2"  # unknown: default


def test_sparklines_and_charts_draw_each_point(admin_client, fleet):
    now = timezone.now()
    for minutes_ago in (50, 50, 20):
        log(now - timedelta(minutes=minutes_ago))
    log(now - timedelta(minutes=20), outcome="upstream_error", model="vault-b", instance="b-keyless")
    rollup_request_logs()

    page = index(admin_client, window="1h")

    trend = cell(row(page, "instance", "a-healthy"), "trend")
    (requests_line,) = re.findall(r'<polyline points="([^"]+)"', trend)  # no errors: no red line
    assert len(requests_line.split()) in (61, 62)  # a point a minute
    heights = sorted({float(p.split(",")[1]) for p in requests_line.split()})
    assert len(heights) == 3  # 0, 1 and 2 requests a minute: each on its own height
    failing = cell(row(page, "instance", "b-keyless"), "trend")
    assert re.findall(r'stroke="(#[0-9a-f]+)"', failing) == ["#1f77b4", RED]  # its error, in red
    charts = re.findall(r'<svg xmlns="http://www.w3.org/2000/svg" class="metric-chart".*?</svg>', page, re.S)
    assert [re.search(r"<title>(.*?)</title>", c).group(1) for c in charts] == [
        "Requests per minute",
        "Errors per minute",
    ]
    assert re.findall(r'<g class="legend">.*?<text[^>]*>([^<]*)</text>', charts[0]) == ["vault-a", "vault-b"]
    assert "Requests per hour" in index(admin_client, window="24h")


def test_the_top_keys_by_cost_and_by_errors(admin_client, fleet):
    now = timezone.now()
    cheap, _ = api_key_create(name="cheap")
    dear, _ = api_key_create(name="dear")
    flaky, _ = api_key_create(name="flaky")
    log(now, key=cheap, cost_usd="0.01")
    log(now, key=dear, cost_usd="2.5")
    for _ in range(3):
        log(now, key=flaky, outcome="upstream_error")
    log(now, key=cheap, outcome="upstream_timeout")
    rollup_request_logs()
    KeyRollup.objects.create(bucket_start=floor_hour(now), api_key_id=9999, requests=1, cost_usd="1")  # deleted

    page = index(admin_client)

    (by_cost, by_errors) = re.findall(r'<table class="top-keys">(.*?)</table>', page, re.S)
    names = r"<tr><td>(?:<a [^>]*>)?([^<]*)"
    assert re.findall(names, by_cost) == [str(dear), "deleted key #9999", str(cheap)]
    assert re.findall(names, by_errors) == [str(flaky), str(cheap)]
    assert f'href="{reverse("admin:routing_apikey_change", args=[dear.pk])}"' in by_cost


def test_the_last_probe_of_each_instance(admin_client, fleet):
    now = timezone.now()
    InstanceProbe.objects.create(instance_id="a-healthy", checked_at=now - timedelta(minutes=2), ok=True, latency_ms=12)
    InstanceProbe.objects.create(instance_id="a-broken", checked_at=now - timedelta(minutes=9), ok=True, latency_ms=9)
    InstanceProbe.objects.create(instance_id="a-broken", checked_at=now, ok=False, status_code=500, error="")

    page = index(admin_client)

    assert cell(row(page, "instance", "a-healthy"), "probe").startswith('<span class="probe-ok">ok · 12 ms</span>')
    assert cell(row(page, "instance", "a-broken"), "probe").startswith('<span class="probe-failed">failed · HTTP 500')
    assert cell(row(page, "instance", "a-drained"), "probe") == "—"


def test_the_dashboard_costs_the_same_few_queries_whatever_there_is(admin_client, provider):
    def queries():
        index(admin_client)  # warm the session
        with CaptureQueriesContext(connection) as captured:
            index(admin_client)
        return len(captured)

    model = Model.objects.create(name="vault-0")
    make_instances(model, provider, "i-0")
    log(timezone.now(), model="vault-0", instance="i-0", key=api_key_create(name="k")[0])
    rollup_request_logs()
    few = queries()

    now = timezone.now()
    for m in range(1, 8):
        model = Model.objects.create(name=f"vault-{m}")
        for i in make_instances(model, provider, *(f"i-{m}-{n}" for n in range(3))):
            key, _ = api_key_create(name=f"k-{i.pk}")
            InstanceProbe.objects.create(instance=i, checked_at=now, ok=True)
            for age in range(0, 24 * 60, 97):
                log(now - timedelta(minutes=age), model=model.name, instance=i.pk, key=key)
    rollup_request_logs(since=now - timedelta(days=1))

    assert queries() == few <= 12


def test_staff_without_the_instance_view_permission_get_the_plain_index(client, django_user_model, fleet):
    user = django_user_model.objects.create_user(username="clerk", password="pw-clerk-1234", is_staff=True)
    client.force_login(user)
    page = index(client)
    assert 'id="dashboard"' not in page


# --- the model and instance lists ----------------------------------------------------------------------------------


def list_cell(page, pk, field):
    """Return the HTML of one column of a changelist row (the row whose checkbox holds pk)."""
    match = re.search(rf'value="{re.escape(pk)}".*?</tr>', page, re.S)
    assert match, f"no row {pk}"
    cell_match = re.search(rf'<td class="field-{field}">(.*?)</td>', match.group(0), re.S)
    assert cell_match, f"no {field} column"
    return cell_match.group(1)


@pytest.fixture
def traffic(fleet):
    """Log and roll up: a-healthy served 2 requests 10 minutes ago and 1 three hours ago; a-broken failed 1."""
    now = timezone.now()
    for ms in (100.0, 1000.0):
        log(now - timedelta(minutes=10), latency_ms=ms, ttft_ms=ms / 10, cost_usd="0.5", stream=True)
    log(now - timedelta(hours=3), latency_ms=100.0)
    log(now - timedelta(minutes=10), instance="a-broken", outcome="upstream_timeout")
    log(now - timedelta(minutes=10), model="vault-b", instance="b-keyless")
    rollup_request_logs(since=now - timedelta(hours=4))
    InstanceProbe.objects.create(instance_id="a-broken", checked_at=now, ok=False, error="HTTP 401: <b>bad key</b>")


def test_the_instance_list_shows_each_instances_state_figures_and_probe(admin_client, traffic, broken):
    page = admin_client.get(reverse("admin:routing_providerinstance_changelist")).content.decode()

    assert badge(list_cell(page, "a-broken", "live_state")) == (RED, "open")
    assert "5 consecutive failures, last: HTTP 503: &lt;script&gt;" in list_cell(page, "a-broken", "live_state")
    assert badge(list_cell(page, "b-keyless", "live_state")) == (PURPLE, "no key")
    assert list_cell(page, "a-healthy", "last_hour") == "2 · 0.0 %"
    assert list_cell(page, "a-healthy", "last_day").startswith("3 · 0.0 %<br><svg ")
    assert list_cell(page, "a-broken", "last_hour") == "1 · 100.0 %"
    assert list_cell(page, "a-drained", "last_hour") == "0"
    latency = f"{shown(100)} / {shown(1000)}<br>TTFT {shown(10)} / {shown(100)}"
    assert list_cell(page, "a-healthy", "latency_day") == latency
    assert list_cell(page, "a-healthy", "cost_day") == "1.0000"
    probe = list_cell(page, "a-broken", "last_probe")
    assert probe.startswith(f'<span style="color: {RED}">failed</span> · HTTP 401: &lt;b&gt;bad key&lt;/b&gt;<br>')
    assert list_cell(page, "a-healthy", "last_probe") == "—"


def test_the_model_list_shows_each_models_health_and_figures(admin_client, traffic, broken):
    page = admin_client.get(reverse("admin:routing_model_changelist")).content.decode()

    model_a = Model.objects.get(name="vault-a").pk
    model_b = Model.objects.get(name="vault-b").pk
    assert badge(list_cell(page, str(model_a), "health")) == ("#ef6c00", "1 of 4 serving")
    assert badge(list_cell(page, str(model_b), "health")) == (RED, "0 of 1 serving")
    assert list_cell(page, str(model_a), "last_hour") == "3 · 33.3 %"
    assert list_cell(page, str(model_a), "last_day").startswith("4 · 25.0 %<br><svg ")
    assert list_cell(page, str(model_b), "latency_day") == f"{shown(100)} / {shown(100)}<br>TTFT —"  # no stream
    assert list_cell(page, str(model_b), "cost_day") == "0"


def test_the_instance_list_costs_the_same_queries_for_one_row_or_many(admin_client, provider):
    def queries():
        listing = reverse("admin:routing_providerinstance_changelist")
        admin_client.get(listing)  # warm the session
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(listing).status_code == 200
        return len(captured)

    model = Model.objects.create(name="vault-q")
    make_instances(model, provider, "q-0")
    one = queries()
    now = timezone.now()
    for inst in make_instances(model, provider, *(f"q-{n}" for n in range(1, 12))):
        InstanceProbe.objects.create(instance=inst, checked_at=now, ok=True)
        log(now, model="vault-q", instance=inst.pk)
    rollup_request_logs()
    assert queries() == one


# --- pure parts ---------------------------------------------------------------------------------------------------


def test_summarize_puts_each_row_in_its_point_and_in_its_model_and_instance():
    start = timezone.now().replace(minute=0, second=0, microsecond=0)
    points = dashboard.points_of(start, start + timedelta(minutes=2, seconds=30), dashboard.MINUTE)
    assert points == [start, start + timedelta(minutes=1), start + timedelta(minutes=2)]
    rows = [
        (start, "m", "i", 3, 2, Decimal("1"), [0, 3], []),
        (start + timedelta(minutes=2), "m", "", 1, 0, Decimal("0"), [], []),
        (start - timedelta(minutes=5), "m", "i", 1, 1, Decimal("0"), [1], []),  # before the first point
    ]
    by_model, by_instance = dashboard.summarize(rows, points, dashboard.MINUTE)
    assert (by_model["m"].requests, by_model["m"].errors, by_model["m"].points) == (5, 2, [3, 0, 1])
    assert by_model["m"].error_points == [1, 0, 1] and by_model["m"].latency == [1, 3]
    assert (by_instance["i"].requests, by_instance["i"].points) == (4, [3, 0, 0]) and "" not in by_instance


def test_model_health_counts_the_serving_instances():
    assert dashboard.model_health(True, ["closed", "closed"]) == ("closed", "2 of 2 serving")
    assert dashboard.model_health(True, ["closed", "half_open"]) == ("half_open", "2 of 2 serving")
    assert dashboard.model_health(True, ["closed", "drained"]) == ("half_open", "1 of 2 serving")
    assert dashboard.model_health(True, ["open", "no key"]) == ("open", "0 of 2 serving")
    assert dashboard.model_health(False, ["closed"]) == ("disabled", "disabled")
