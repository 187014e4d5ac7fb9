"""Tests for the request log's admin list (routing/admin/logs.py, routing/admin/keyset.py): a compact row, filters
whose choices come from the configuration, keyset pages, exact id search, and no query that reads the whole log."""

import re
import uuid
from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlparse

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from routing.admin import logs
from routing.admin.keyset import COUNT_CAP, KeysetChangeList
from routing.models import ApiKey, Model, Outcome, Provider, ProviderInstance, RequestLog

pytestmark = pytest.mark.django_db

URL = reverse("admin:routing_requestlog_changelist")


@pytest.fixture
def config():
    """Return two configured models with an instance each, and two keys."""
    provider = Provider.objects.create(name="prov", kind="openai")
    models = [Model.objects.create(name=name) for name in ("vault-fast", "vault-idle")]
    instances = [
        ProviderInstance.objects.create(id=f"inst-{m.name}", model=m, provider=provider, litellm_model="openai/x")
        for m in models
    ]
    keys = [ApiKey.objects.create(name=name, prefix=f"cv-{name}", key_hash=name * 16) for name in ("ci", "web")]
    return {"models": models, "instances": instances, "keys": keys}


def log(at=None, **fields):
    """Write one RequestLog row (now, unless at says when)."""
    values = {
        "request_id": uuid.uuid4(),
        "created_at": at or timezone.now(),
        "requested_model": "vault-fast",
        "served_model": "vault-fast",
        "instance_id": "inst-vault-fast",
        "outcome": Outcome.OK,
        "status_code": 200,
        **fields,
    }
    return RequestLog.objects.create(**values)


def listed(response):
    """Return the request ids the page lists, in order."""
    assert response.status_code == 200, response
    return [row.request_id for row in response.context["cl"].result_list]


def log_queries(captured):
    """Return the captured SQL statements that read the request log."""
    return [q["sql"] for q in captured.captured_queries if 'FROM "routing_requestlog"' in q["sql"]]


def link(response, label):
    """Return the query string of a page link, or None when the page has none."""
    url = dict(response.context["cl"].page_links)[label]
    return url and {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}


# --- the row ------------------------------------------------------------------------------------------------------


def test_a_row_shows_the_request_compactly(admin_client, config):
    row = log(
        api_key=config["keys"][0],
        requested_model="auto",
        served_model="vault-fast",
        stream=True,
        outcome=Outcome.UPSTREAM_ERROR,
        status_code=502,
        latency_ms=812.4,
        prompt_tokens=1200,
        completion_tokens=300,
        cost_usd=Decimal("0.00420000"),
    )

    page = admin_client.get(URL).content.decode()

    cells = re.search(r"<tr>.*?field-request.*?</tr>", page, re.S).group(0)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cells))
    for shown in (str(row.request_id)[:8], "ci", "auto → vault-fast ⇢", "inst-vault-fast", "upstream error", "502",
                  "812 ms", "1,200 / 300", "$0.0042"):  # fmt: skip
        assert shown in text, shown
    assert 'class="cv-outcome cv-error"' in cells
    assert str(row.request_id) not in text  # the whole id only on hover
    assert f'href="/admin/routing/requestlog/{row.pk}/change/' in cells


def test_outcomes_have_their_colours(admin_client, config):
    for outcome in (Outcome.OK, Outcome.CLIENT_ERROR, Outcome.CLIENT_DISCONNECTED):
        log(outcome=outcome)
    page = admin_client.get(URL).content.decode()
    for tone, label, badge in (("ok", "OK", "ok"), ("warn", "Client error", "client error"),
                               ("muted", "Client disconnected", "disconnected")):  # fmt: skip
        assert f'<span class="cv-outcome cv-{tone}" title="{label}">{badge}</span>' in page


# --- no query reads the whole log ---------------------------------------------------------------------------------


PAGES = [
    {},
    {"outcome__exact": "ok"},
    {"served_model": "vault-fast"},
    {"instance__id__exact": "inst-vault-fast"},
    {"stream__exact": "1"},
    {"period": "1h"},
    {"since": "2020-01-01", "until": "2100-01-01"},
    {"q": "vault"},
    {"o": "1"},
    {"end": "1"},
]


@pytest.mark.parametrize("params", PAGES, ids=lambda p: "&".join(p) or "first")
def test_no_page_counts_distincts_or_offsets_the_whole_log(admin_client, config, params):
    for _ in range(3):
        log(api_key=config["keys"][0], stream=True)
    admin_client.get(URL)  # the session and content types, once

    with CaptureQueriesContext(connection) as captured:
        assert admin_client.get(URL, params).status_code == 200

    statements = log_queries(captured)
    assert statements
    for sql in statements:
        assert "DISTINCT" not in sql and "OFFSET" not in sql, sql
        assert "COUNT(" not in sql or f"LIMIT {COUNT_CAP + 1}" in sql, sql  # a capped count reads 1,001 rows at most
    if "q" in params:
        assert not [sql for sql in statements if "COUNT(" in sql]  # a text search says nothing of its total


def test_the_unfiltered_list_gives_the_planners_estimate_not_a_count(admin_client, config):
    RequestLog.objects.bulk_create(
        RequestLog(request_id=uuid.uuid4(), created_at=timezone.now(), outcome="ok", status_code=200)
        for _ in range(COUNT_CAP + 100)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE routing_requestlog")

    with CaptureQueriesContext(connection) as captured:
        page = admin_client.get(URL).content.decode()

    assert not [sql for sql in log_queries(captured) if "COUNT(" in sql]
    assert re.search(r"about 1,1\d\d request logs in all", page)
    RequestLog.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE routing_requestlog")  # the statistics outlive the test's transaction: reset them


def test_a_filtered_list_counts_up_to_the_cap(admin_client, config):
    RequestLog.objects.bulk_create(
        RequestLog(request_id=uuid.uuid4(), created_at=timezone.now(), outcome=outcome, status_code=200)
        for outcome in ["ok"] * (COUNT_CAP + 10) + ["rate_limited"] * 150
    )

    with CaptureQueriesContext(connection) as captured:
        many = admin_client.get(URL, {"outcome__exact": "ok"})
    counts = [sql for sql in log_queries(captured) if "COUNT(" in sql]
    some = admin_client.get(URL, {"outcome__exact": "rate_limited"})

    assert many.context["cl"].count_text == "more than 1,000 request logs"
    assert len(counts) == 1 and counts[0].endswith(f"LIMIT {COUNT_CAP + 1}) subquery")
    assert some.context["cl"].count_text == "150 request logs"


def test_a_list_within_one_page_is_counted_without_a_query(admin_client, config):
    log(outcome=Outcome.RATE_LIMITED, status_code=429)

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(URL, {"outcome__exact": "rate_limited"})

    assert response.context["cl"].count_text == "1 request log"
    assert not [sql for sql in log_queries(captured) if "COUNT(" in sql]


def test_a_count_that_would_take_long_is_given_up(admin_client, config, monkeypatch):
    now = timezone.now()
    RequestLog.objects.bulk_create(
        RequestLog(
            request_id=uuid.uuid4(),
            created_at=now - timedelta(seconds=i),
            outcome="ok",
            status_code=200,
            user="wanted" if i >= 29_850 else "other",
        )  # fmt: skip
        for i in range(30_000)
    )
    monkeypatch.setattr(KeysetChangeList, "COUNT_BUDGET_MS", 1)  # the 150 oldest of 30,000 rows: a long count

    response = admin_client.get(URL, {"user": "wanted"})  # a plain field lookup: no index helps it

    assert len(listed(response)) == 100 and response.context["cl"].count_text == ""
    assert listed(admin_client.get(URL, {"outcome__exact": "ok"}))  # the page after it still answers


# --- filters ------------------------------------------------------------------------------------------------------


def test_filter_choices_come_from_the_configuration_not_the_log(admin_client, config):
    log(served_model="ghost-model", instance_id="ghost-instance")

    with CaptureQueriesContext(connection) as captured:
        page = admin_client.get(URL).content.decode()

    filters = page[page.index('id="changelist-filter"') :]
    for configured in ("vault-idle", "inst-vault-idle", "web", "Upstream timeout"):  # none of them in the log
        assert configured in filters, configured
    assert "ghost-model" not in filters and "ghost-instance" not in filters
    for sql in log_queries(captured):  # the page, and its capped count unless the table is estimated
        assert sql.endswith("LIMIT 101") or sql.endswith(f"LIMIT {COUNT_CAP + 1}) subquery"), sql


def test_each_filter_narrows_the_list(admin_client, config):
    now = timezone.now()
    plain = log(at=now - timedelta(minutes=1))
    other = log(at=now - timedelta(minutes=2), served_model="vault-idle", instance_id="inst-vault-idle",
                api_key=config["keys"][1], outcome=Outcome.UPSTREAM_TIMEOUT, status_code=504, stream=True)  # fmt: skip
    old = log(at=now - timedelta(days=3))

    def only(**params):
        return listed(admin_client.get(URL, params))

    assert only() == [plain.request_id, other.request_id, old.request_id]
    assert only(outcome__exact="upstream_timeout") == [other.request_id]
    assert only(served_model="vault-idle") == [other.request_id]
    assert only(instance__id__exact="inst-vault-idle") == [other.request_id]
    assert only(api_key__id__exact=config["keys"][1].pk) == [other.request_id]
    assert only(stream__exact="1") == [other.request_id]
    assert only(period="1h") == [plain.request_id, other.request_id]
    since = (now - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:%S")
    until = (now - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")
    assert only(since=since, until=until) == [old.request_id]


def test_a_bad_time_or_page_key_is_refused_with_djangos_error_page(admin_client, config):
    for params in ({"since": "yesterday"}, {"period": "2w"}, {"after": "soon"}):
        response = admin_client.get(URL, params)
        assert response.status_code == 302 and response.url.endswith("?e=1"), params


# --- keyset pages ---------------------------------------------------------------------------------------------------


def test_keyset_pages_walk_the_whole_log_once_either_way(admin_client, config):
    now = timezone.now()
    # 250 rows, every seven sharing a timestamp (so pages end inside a group): the id must break the ties.
    rows = RequestLog.objects.bulk_create(
        RequestLog(request_id=uuid.uuid4(), created_at=now - timedelta(seconds=i // 7), outcome="ok", status_code=200)
        for i in range(250)
    )
    newest_first = [r.request_id for r in sorted(rows, key=lambda r: (r.created_at, r.pk), reverse=True)]

    seen, params = [], {}
    while params is not None:
        response = admin_client.get(URL, params)
        seen += listed(response)
        params = link(response, "Older ›")
    assert seen == newest_first
    assert link(response, "Oldest") is None and link(response, "Newest") is not None

    response = admin_client.get(URL, {"end": "1"})
    seen = []
    while True:
        seen = listed(response) + seen
        params = link(response, "‹ Newer")
        if params is None:
            break
        response = admin_client.get(URL, params)
    assert seen == newest_first
    assert [len(listed(admin_client.get(URL, p))) for p in ({}, {"end": "1"})] == [100, 100]


def test_time_sorts_both_ways_and_no_other_column_sorts(admin_client, config):
    now = timezone.now()
    first, second = log(at=now - timedelta(minutes=2), status_code=200), log(at=now, status_code=500)

    assert listed(admin_client.get(URL, {"o": "1"})) == [first.request_id, second.request_id]  # time, ascending
    assert listed(admin_client.get(URL, {"o": "-1"})) == [second.request_id, first.request_id]
    assert listed(admin_client.get(URL, {"o": "6"})) == [second.request_id, first.request_id]  # status: not indexed
    page = admin_client.get(URL).content.decode()
    assert page.count('class="sortable') == 1


# --- search ---------------------------------------------------------------------------------------------------------


def test_a_request_id_is_found_exactly_through_its_index(admin_client, config):
    wanted = log()
    log()

    with CaptureQueriesContext(connection) as captured:
        by_id = listed(admin_client.get(URL, {"q": f"  {wanted.request_id}  "}))
    page_query = log_queries(captured)[0]  # read before the next request clears the connection's log
    by_prefix = listed(admin_client.get(URL, {"q": str(wanted.request_id)[:8]}))

    assert by_id == [wanted.request_id] and by_prefix == [wanted.request_id]
    assert f"\"request_id\" = '{wanted.request_id.hex}'::uuid" in page_query
    assert "LIKE" not in page_query


def test_text_search_reads_the_newest_rows_only_unless_a_time_is_chosen(admin_client, config, monkeypatch):
    monkeypatch.setattr(logs, "TEXT_SEARCH_ROWS", 3)
    now = timezone.now()
    older = log(at=now - timedelta(minutes=5), user="alice-older")
    recent = [log(at=now - timedelta(minutes=4 - i), user=f"alice-{i}" if i == 2 else "bob") for i in range(3)]

    assert listed(admin_client.get(URL, {"q": "alice"})) == [recent[2].request_id]
    assert listed(admin_client.get(URL, {"q": "alice", "period": "1h"})) == [recent[2].request_id, older.request_id]
    monkeypatch.setattr(logs, "TEXT_SEARCH_ROWS", 100)
    assert listed(admin_client.get(URL, {"q": "alice"})) == [recent[2].request_id, older.request_id]  # fewer rows
    assert "of the newest 100,000 requests (of the last day at most)" in admin_client.get(URL).content.decode()
    log(at=now - timedelta(days=2), user="alice-two-days-ago")  # the newest row by id, with an odd timestamp
    monkeypatch.setattr(logs, "TEXT_SEARCH_ROWS", 1)  # from its time: two days, but a day at most
    assert listed(admin_client.get(URL, {"q": "alice"})) == [recent[2].request_id, older.request_id]


# --- the selections list shares it ---------------------------------------------------------------------------------


def test_the_selections_list_pages_by_key_too(admin_client, config):
    RequestLog.objects.bulk_create(
        RequestLog(
            request_id=uuid.uuid4(), created_at=timezone.now(), outcome="ok", status_code=200, context_type="math"
        )  # fmt: skip
        for _ in range(101)
    )
    response = admin_client.get(reverse("admin:routing_selection_changelist"))
    assert len(listed(response)) == 100 and link(response, "Older ›") is not None
    assert "Try a prompt" in response.content.decode()


# --- in a browser ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_page_of_rows_fits_a_1366_pixel_screen(browser, live_server, config):
    from django.contrib.auth import get_user_model

    from tests.browser import sign_in

    get_user_model().objects.create_superuser(username="operator", email="op@example.com", password="pw-4-operator")
    for index, outcome in enumerate(Outcome.values * 3):
        log(
            api_key=config["keys"][index % 2],
            requested_model="auto",
            served_model="vault-fast-and-long-named-model",
            instance_id="inst-vault-fast-and-long-named-model-0",
            outcome=outcome,
            status_code=502,
            stream=index % 2 == 0,
            latency_ms=12345.6,
            prompt_tokens=123456,
            completion_tokens=65432,
            cost_usd=Decimal("12.345678"),
        )
    browser.set_window_size(1366, 768)
    sign_in(browser, live_server.url, "operator", "pw-4-operator")

    browser.get(f"{live_server.url}{URL}")

    widths = browser.execute_script(
        "const page = document.documentElement, table = document.querySelector('#changelist-form .results');"
        "return [page.scrollWidth, page.clientWidth, table.scrollWidth, table.clientWidth]"
    )
    browser.save_screenshot("/tmp/chatvault-request-log-1366.png")
    assert widths[0] <= widths[1] and widths[2] <= widths[3], widths  # neither the page nor the table scrolls
    assert len(browser.find_elements("css selector", "#result_list tbody tr")) == len(Outcome.values) * 3
