"""End-to-end tests of `GET /v1/admin/load-balancer/stats` against a live ChatVault process and live fake providers:
who may call it, what it shows, that it answers quickly when the database does not, and that draining and breaker
resets reach the workers; and of `GET /v1/admin/model-selector/stats`: who may call it, its windows, and that it
shows the rollups."""

import contextlib
import json
import threading
import time
import uuid
from datetime import datetime, timedelta

import httpx
import openai
import psycopg
import pytest
from django.test import Client
from django.utils import timezone

from routing import histogram
from routing.models import InstanceProbe, ProviderInstance, RequestLog
from routing.rollups import rollup_request_logs
from tests.factories import make_key, make_model, wait_for_model, wait_for_reload
from tests.gateway import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

STATS = "/v1/admin/load-balancer/stats"
MESSAGES = [{"role": "user", "content": "hi"}]
INSTANCE_KEYS = {
    "id",
    "api_base",
    "state",
    "reason",
    "until",
    "in_flight",
    "requests",
    "error_rate",
    "latency_ms_p50",
    "latency_ms_p95",
    "probes",
    "drained",
}


def get_stats(gateway, raw_key=None, headers=None):
    """Return (status, headers, decoded JSON) of the stats endpoint."""
    headers = dict(headers or {})
    if raw_key:
        headers["Authorization"] = f"Bearer {raw_key}"
    status, resp_headers, body = gateway.request("GET", STATS, headers=headers)
    return status, resp_headers, json.loads(body)


def instance_entry(stats, instance_id):
    """Return the stats of one instance."""
    return next(i for m in stats["models"] for i in m["instances"] if i["id"] == instance_id)


def chat(gateway, raw_key, model):
    """Send one chat completion; return the raw response (raises on an error status)."""
    client = openai.OpenAI(base_url=gateway.url, api_key=raw_key, max_retries=0)
    return client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)


@pytest.fixture
def lb(gateway, fake, fake_b):
    """Return (admin key, model) for `vault-lb` served by both fakes, once the gateway serves it."""
    model = make_model("vault-lb", [fake, fake_b])
    raw = make_key("ops", is_admin=True)
    wait_for_model(gateway, raw, "vault-lb")
    return raw, model


def http_client(gateway, user=None):
    """Return an httpx client for the gateway that never goes through a proxy, signed in as user if given.

    The session is made the way a login would make it (the admin login refuses non-staff users).
    """
    client = httpx.Client(base_url=gateway.root_url, trust_env=False, timeout=10)
    if user is not None:
        django_client = Client()
        django_client.force_login(user)
        client.cookies.set("sessionid", django_client.cookies["sessionid"].value)
    return client


# --- who may call it ----------------------------------------------------------------------------------------------


def test_it_is_401_without_a_key_in_openai_shape(lb, gateway):
    status, headers, body = get_stats(gateway)
    assert status == 401 and headers["x-request-id"]
    assert body["error"]["type"] == "authentication_error"
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_it_is_401_with_a_bad_key(lb, gateway):
    status, _, body = get_stats(gateway, "cv-not-a-real-key")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_it_is_403_with_a_key_that_is_not_admin(lb, gateway):
    raw = make_key("client")
    wait_for_model(gateway, raw, "vault-lb")
    status, headers, body = get_stats(gateway, raw)
    assert status == 403 and headers["x-request-id"]
    assert body["error"]["type"] == "permission_error"


def test_it_writes_no_request_log_row(lb, gateway):
    raw, _ = lb
    ok_status, ok_headers, _ = get_stats(gateway, raw)
    denied_status, denied_headers, _ = get_stats(gateway)
    assert (ok_status, denied_status) == (200, 401)
    chat(gateway, raw, "vault-lb")  # a row written after ours would have been
    wait_until(lambda: RequestLog.objects.filter(endpoint="chat.completions").exists(), message="chat row")
    ids = {ok_headers["x-request-id"], denied_headers["x-request-id"]}
    assert not RequestLog.objects.filter(request_id__in=ids).exists()


def test_a_staff_session_from_the_admin_login_may_call_it(lb, gateway, django_user_model):
    django_user_model.objects.create_user(username="ops", password="pw-for-ops-123", is_staff=True)
    with http_client(gateway) as client:
        client.get("/admin/login/")
        login = client.post(
            "/admin/login/",
            data={
                "username": "ops",
                "password": "pw-for-ops-123",
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
                "next": "/admin/",
            },
            headers={"Referer": f"{gateway.root_url}/admin/login/"},
        )
        assert login.status_code == 302 and login.headers["location"] == "/admin/"
        response = client.get(STATS)
    assert response.status_code == 200 and response.headers["x-request-id"]
    assert [m["model"] for m in response.json()["models"]] == ["vault-lb"]


def test_a_session_without_staff_status_is_403(lb, gateway, django_user_model):
    user = django_user_model.objects.create_user(username="bob", password="pw-for-bob-123")
    with http_client(gateway, user) as client:
        response = client.get(STATS)
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"


def test_a_bad_key_is_401_even_with_a_staff_session(lb, gateway, django_user_model):
    user = django_user_model.objects.create_user(username="ops", password="pw-for-ops-123", is_staff=True)
    with http_client(gateway, user) as client:
        assert client.get(STATS).status_code == 200
        assert client.get(STATS, headers={"Authorization": "Bearer cv-wrong"}).status_code == 401


def test_other_admin_api_errors_are_in_openai_shape(lb, gateway):
    raw, _ = lb
    status, headers, body = gateway.request("GET", "/v1/admin/nothing-here", headers={"Authorization": f"Bearer {raw}"})
    assert status == 404 and headers["x-request-id"]
    assert json.loads(body)["error"]["code"] == "not_found"
    status, _, body = gateway.request("POST", STATS, b"{}", headers={"Authorization": f"Bearer {raw}"})
    assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"


# --- what it shows ------------------------------------------------------------------------------------------------


def test_it_shows_every_instance_with_the_id_of_the_served_header(lb, gateway, fake, fake_b):
    raw, model = lb
    served = chat(gateway, raw, "vault-lb").headers["x-chatvault-instance"]

    status, headers, stats = get_stats(gateway, raw)
    assert status == 200 and headers["x-request-id"]
    assert [(m["model"], m["strategy"]) for m in stats["models"]] == [("vault-lb", "round-robin")]
    instances = stats["models"][0]["instances"]
    assert [i["id"] for i in instances] == model.instance_ids
    assert served in model.instance_ids
    for entry, fake_provider in zip(instances, (fake, fake_b), strict=True):
        assert set(entry) == INSTANCE_KEYS
        assert entry["api_base"] == fake_provider.url
        assert (entry["state"], entry["reason"], entry["until"], entry["drained"]) == ("closed", None, None, False)
        assert entry["in_flight"] == 0
        assert entry["probes"] == {"ok": 0, "failed": 0, "last": None}
    entry = instance_entry(stats, served)
    assert entry["requests"] == 1 and entry["error_rate"] == 0.0
    assert entry["latency_ms_p50"] > 0 and entry["latency_ms_p95"] >= entry["latency_ms_p50"]


def test_requests_and_in_flight_move_with_traffic(lb, gateway, fake):
    raw, model = lb
    for _ in range(6):
        chat(gateway, raw, "vault-lb")
    stats = get_stats(gateway, raw)[2]
    assert sum(instance_entry(stats, i)["requests"] for i in model.instance_ids) >= 6

    fake.set_config(latency_ms=1500)
    target = model.instance_ids[0]
    # Round-robin alternates, so of two concurrent requests exactly one waits on the slow fake.
    threads = [threading.Thread(target=chat, args=(gateway, raw, "vault-lb")) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_until(lambda: instance_entry(get_stats(gateway, raw)[2], target)["in_flight"] == 1, message="in flight 1")
    for thread in threads:
        thread.join()
    assert instance_entry(get_stats(gateway, raw)[2], target)["in_flight"] == 0


def test_a_failing_instance_shows_an_open_breaker_with_its_reason(gateway, fake_b):
    model = make_model("vault-failing", [fake_b])
    raw = make_key("ops", is_admin=True)
    wait_for_model(gateway, raw, "vault-failing")
    fake_b.set_config(status=503)
    for _ in range(5):  # the default policy opens after 5 failures in a row
        with pytest.raises(openai.InternalServerError):
            chat(gateway, raw, "vault-failing")

    entry = instance_entry(get_stats(gateway, raw)[2], model.instance_ids[0])
    assert entry["state"] == "open"
    assert "503" in entry["reason"]
    until = datetime.fromisoformat(entry["until"])
    assert until.utcoffset() == timedelta(0)
    assert timezone.now() < until <= timezone.now() + timedelta(seconds=11)
    assert entry["requests"] == 5 and entry["error_rate"] == 1.0


def test_it_shows_the_latest_probe(lb, gateway):
    raw, model = lb
    first, second = model.instance_ids
    now = timezone.now()
    InstanceProbe.objects.create(instance_id=first, checked_at=now - timedelta(seconds=30), ok=True, latency_ms=12)
    InstanceProbe.objects.create(instance_id=first, checked_at=now, ok=False, status_code=503, latency_ms=40)

    stats = get_stats(gateway, raw)[2]
    probe = instance_entry(stats, first)["probes"]["last"]
    assert probe == {"at": now.isoformat(), "ok": False, "latency_ms": 40.0, "error": "HTTP 503"}
    assert instance_entry(stats, second)["probes"]["last"] is None


def test_probes_are_counted_apart_from_client_traffic(lb, gateway):
    raw, model = lb
    first, second = model.instance_ids
    for _ in range(4):
        chat(gateway, raw, "vault-lb")  # round-robin: two client requests each, all served
    now = timezone.now()
    for seconds, ok in ((3, True), (2, False), (1, False)):
        InstanceProbe.objects.create(
            instance_id=first, checked_at=now - timedelta(seconds=seconds), ok=ok, status_code=None if ok else 400
        )

    def probes_fed():
        entry = instance_entry(get_stats(gateway, raw)[2], first)
        return entry if entry["probes"]["failed"] == 2 else None

    entry = wait_until(probes_fed, message="probe results fed to the breaker")
    assert (entry["probes"]["ok"], entry["probes"]["last"]["error"]) == (1, "HTTP 400")
    assert (entry["requests"], entry["error_rate"]) == (2, 0.0), "client traffic only"
    assert entry["state"] == "closed"
    assert instance_entry(get_stats(gateway, raw)[2], second)["probes"] == {"ok": 0, "failed": 0, "last": None}


# --- when the database does not answer ---------------------------------------------------------------------------

# The endpoint waits about 1 s for the database; the bound leaves room for a busy test machine.
QUICKLY = 2.0


@contextlib.contextmanager
def table_locked(database_url, table):
    """Hold an exclusive lock on a table from a connection of our own, so that every query on it waits."""
    with psycopg.connect(database_url) as conn:
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def timed(call):
    """Return (call's result, seconds it took)."""
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_it_answers_quickly_without_probes_while_the_probe_table_is_locked(lb, gateway, database_url):
    raw, model = lb
    first = model.instance_ids[0]
    InstanceProbe.objects.create(instance_id=first, checked_at=timezone.now(), ok=True, latency_ms=12)
    assert instance_entry(get_stats(gateway, raw)[2], first)["probes"]["last"]["ok"] is True
    warning = "admin endpoints go on without latest_probes from the database"
    warnings_before = gateway.log().count(warning)

    with table_locked(database_url, "routing_instanceprobe"):
        for _ in range(2):
            (status, _, stats), seconds = timed(lambda: get_stats(gateway, raw))
            assert status == 200 and seconds < QUICKLY
            entry = instance_entry(stats, first)
            assert entry["probes"]["last"] is None and entry["state"] == "closed"

    assert gateway.log().count(warning) == warnings_before + 1  # once for the outage, not once per call
    wait_until(
        lambda: instance_entry(get_stats(gateway, raw)[2], first)["probes"]["last"], message="probes shown again"
    )
    wait_until(lambda: "admin endpoints read latest_probes from the database again" in gateway.log(), message="log")


def test_a_staff_session_gets_a_quick_503_while_sessions_are_locked(lb, gateway, database_url, django_user_model):
    user = django_user_model.objects.create_user(username="ops", password="pw-for-ops-123", is_staff=True)
    with http_client(gateway, user) as client:
        assert client.get(STATS).status_code == 200
        with table_locked(database_url, "django_session"):
            response, seconds = timed(lambda: client.get(STATS))
        assert response.status_code == 503 and seconds < QUICKLY
        assert response.json()["error"]["code"] == "database_unavailable"
        wait_until(lambda: client.get(STATS).status_code == 200, message="the session is read again")


# --- operator actions reach the workers ---------------------------------------------------------------------------


def test_a_drained_instance_gets_no_more_requests(lb, gateway):
    raw, model = lb
    kept, drained = model.instance_ids
    chat(gateway, raw, "vault-lb")
    inst = ProviderInstance.objects.get(id=drained)
    inst.drained = True
    inst.save()
    wait_for_reload(gateway)

    served = {chat(gateway, raw, "vault-lb").headers["x-chatvault-instance"] for _ in range(6)}
    assert served == {kept}
    entry = instance_entry(get_stats(gateway, raw)[2], drained)
    assert entry["drained"] is True and entry["state"] == "closed"


def test_a_breaker_reset_closes_the_breaker(gateway, fake_b):
    model = make_model("vault-reset", [fake_b])
    raw = make_key("ops", is_admin=True)
    wait_for_model(gateway, raw, "vault-reset")
    instance_id = model.instance_ids[0]
    fake_b.set_config(status=503)
    for _ in range(5):
        with pytest.raises(openai.InternalServerError):
            chat(gateway, raw, "vault-reset")
    assert instance_entry(get_stats(gateway, raw)[2], instance_id)["state"] == "open"

    fake_b.set_config(status=None)
    inst = ProviderInstance.objects.get(id=instance_id)
    inst.breaker_reset_at = timezone.now()
    inst.save()
    wait_until(
        lambda: instance_entry(get_stats(gateway, raw)[2], instance_id)["state"] == "closed", message="breaker reset"
    )
    assert chat(gateway, raw, "vault-reset").headers["x-chatvault-instance"] == instance_id


# --- GET /v1/admin/model-selector/stats ---------------------------------------------------------------------------

SELECTOR = "/v1/admin/model-selector/stats"


def get_selector_stats(gateway, raw_key=None, query="", headers=None):
    """Return (status, headers, decoded JSON) of the model-selector stats."""
    headers = dict(headers or {})
    if raw_key:
        headers["Authorization"] = f"Bearer {raw_key}"
    status, resp_headers, body = gateway.request("GET", SELECTOR + query, headers=headers)
    return status, resp_headers, json.loads(body)


def log_row(ago, *, model="vault-lb", instance="", outcome="ok", **fields):
    """Write a chat-completions RequestLog row created `ago` before now."""
    RequestLog.objects.create(
        request_id=uuid.uuid4(),
        created_at=timezone.now() - ago,
        served_model=model,
        instance_id=instance or None,
        outcome=outcome,
        status_code=200 if outcome == "ok" else 502,
        **fields,
    )


@pytest.fixture
def traffic(lb):
    """Log and roll up requests to vault-lb 10 minutes, 5 hours, 3 days and 8 days ago; return the admin key."""
    raw, model = lb
    first, second = model.instance_ids
    minutes = timedelta(minutes=10)
    log_row(minutes, instance=first, latency_ms=100, ttft_ms=40, stream=True, context_type="math", cost_usd="0.01")
    log_row(minutes, instance=second, outcome="upstream_error", latency_ms=30, context_type="math")
    log_row(minutes, model="", outcome="client_error", latency_ms=1, context_type="translation")  # none eligible
    log_row(timedelta(hours=5), instance=first, latency_ms=400, context_type="code_generation", cost_usd="0.02")
    log_row(timedelta(days=3), instance=first, latency_ms=1000, cost_usd="0.03")
    log_row(timedelta(days=8), instance=first, latency_ms=1000, cost_usd="1")
    rollup_request_logs(since=timezone.now() - timedelta(days=9))
    return raw


def figure(ms):
    """Return what the endpoint shows for a latency: the middle of its histogram bucket, to a tenth."""
    return round(histogram.bucket_value(histogram.bucket_index(ms)), 1)


def test_selector_stats_are_401_without_a_key_and_403_with_a_key_that_is_not_admin(lb, gateway):
    status, headers, body = get_selector_stats(gateway)
    assert status == 401 and headers["x-request-id"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "authentication_error"

    raw = make_key("client")
    wait_for_model(gateway, raw, "vault-lb")
    status, _, body = get_selector_stats(gateway, raw)
    assert status == 403 and body["error"]["type"] == "permission_error"
    assert get_selector_stats(gateway, "cv-not-a-real-key")[0] == 401


def test_selector_stats_take_a_staff_session_but_not_a_session_without_staff(lb, gateway, django_user_model):
    staff = django_user_model.objects.create_user(username="ops", password="pw-for-ops-123", is_staff=True)
    other = django_user_model.objects.create_user(username="bob", password="pw-for-bob-123")
    for user, expected in ((staff, 200), (other, 403)):
        with http_client(gateway, user) as client:
            assert client.get(SELECTOR).status_code == expected


@pytest.mark.parametrize("query", ["?window=30d", "?window=", "?window=1H", "?window=" + "x" * 5000])
def test_selector_stats_refuse_another_window_in_openai_shape(lb, gateway, query):
    raw, _ = lb
    status, headers, body = get_selector_stats(gateway, raw, query)
    assert status == 400 and headers["x-request-id"]
    assert body["error"] == {
        "message": "window must be one of 1h, 24h, 7d.",
        "type": "invalid_request_error",
        "param": "window",
        "code": "invalid_window",
    }


def test_selector_stats_show_each_window_from_the_rollups(traffic, gateway):
    by_window = {}
    for name in ("1h", "24h", "7d"):
        status, _, stats = get_selector_stats(gateway, traffic, f"?window={name}")
        assert status == 200 and stats["window"]["name"] == name and stats["experiments"] == []
        by_window[name] = stats
    default = get_selector_stats(gateway, traffic)[2]
    assert default["window"]["name"] == "24h" and default["models"] == by_window["24h"]["models"]

    one_hour, day, week = (by_window[name] for name in ("1h", "24h", "7d"))
    assert one_hour["models"] == [
        {
            "model": "vault-lb",
            "requests": 2,
            "success_rate": 0.5,
            "latency_ms_p50": figure(100),  # of successful requests only
            "latency_ms_p95": figure(100),
            "ttft_ms_p50": figure(40),
            "cost_usd": 0.01,
            "selections": {"math": 2},
        }
    ]
    assert one_hour["context_types"] == {"math": 2, "translation": 1}

    (entry,) = day["models"]
    assert (entry["requests"], entry["success_rate"], entry["cost_usd"]) == (3, 0.6667, 0.03)
    assert (entry["latency_ms_p50"], entry["latency_ms_p95"]) == (figure(100), figure(400))
    assert entry["selections"] == {"code_generation": 1, "math": 2}
    assert day["context_types"] == {"code_generation": 1, "math": 2, "translation": 1}

    (entry,) = week["models"]
    assert (entry["requests"], entry["success_rate"], entry["cost_usd"]) == (4, 0.75, 0.06)
    assert (entry["latency_ms_p50"], entry["latency_ms_p95"]) == (figure(400), figure(1000))


def test_selector_stats_windows_end_now_and_start_at_a_minute_or_an_hour(traffic, gateway):
    for name, length in (("1h", timedelta(hours=1)), ("24h", timedelta(days=1)), ("7d", timedelta(days=7))):
        window = get_selector_stats(gateway, traffic, f"?window={name}")[2]["window"]
        start, end = datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])
        assert start.utcoffset() == end.utcoffset() == timedelta(0)
        assert abs(end - timezone.now()) < timedelta(seconds=30)
        unit = timedelta(hours=1) if name == "7d" else timedelta(minutes=1)
        assert (start - start.replace(minute=0, second=0, microsecond=0)) % unit == timedelta(0)
        assert timedelta(0) <= end - start - length < unit


def test_selector_stats_read_the_rollups_not_the_log(traffic, gateway):
    before = get_selector_stats(gateway, traffic, "?window=7d")[2]
    RequestLog.objects.all().delete()
    log_row(timedelta(minutes=1), latency_ms=5)  # never rolled up
    after = get_selector_stats(gateway, traffic, "?window=7d")[2]
    assert after["models"] == before["models"] and after["models"][0]["requests"] == 4


def test_selector_stats_list_every_served_model_even_without_traffic(lb, gateway):
    raw, _ = lb
    log_row(timedelta(minutes=2), model="vault-retired", latency_ms=50)
    rollup_request_logs()
    status, _, stats = get_selector_stats(gateway, raw)
    assert status == 200
    assert [(m["model"], m["requests"], m["success_rate"], m["latency_ms_p50"]) for m in stats["models"]] == [
        ("vault-lb", 0, None, None),
        ("vault-retired", 1, 1.0, figure(50)),
    ]
    assert stats["context_types"] == {}


def test_selector_stats_percentiles_come_from_the_merged_histograms(lb, gateway):
    raw, model = lb
    # 20 successes over two instances and three hours: the 19th and 20th (the p95) are slow
    for index in range(20):
        ago = timedelta(hours=index % 3, minutes=5)
        log_row(ago, instance=model.instance_ids[index % 2], latency_ms=1000 if index in (3, 12) else 100)
    rollup_request_logs()
    (entry,) = get_selector_stats(gateway, raw)[2]["models"]
    assert (entry["requests"], entry["latency_ms_p50"], entry["latency_ms_p95"]) == (20, figure(100), figure(1000))


def test_selector_stats_are_a_quick_503_while_the_rollups_are_locked(lb, gateway, database_url):
    raw, _ = lb
    with table_locked(database_url, "routing_requestrollup"):
        (status, _, body), seconds = timed(lambda: get_selector_stats(gateway, raw))
    assert status == 503 and seconds < QUICKLY
    assert body["error"]["code"] == "database_unavailable"
    wait_until(lambda: get_selector_stats(gateway, raw)[0] == 200, message="the rollups are read again")
