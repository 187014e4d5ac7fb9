"""Tests for the admin's Selections view (recent auto-selected requests and why) and its try-it form."""

import html
import re
import time
import types
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from routing import snapshot, state
from routing.admin import ANY_KEY, TRY_TOOL
from routing.auth import api_key_create
from routing.models import Outcome, RequestLog
from routing.services import ChatRequest
from tests.factories import make_model

pytestmark = pytest.mark.django_db

CODE_PROMPT = "Write a Python function that parses an ISO 8601 date string and returns a datetime."
# The try-it form calls no upstream: the instances only need an address.
UNUSED_UPSTREAM = types.SimpleNamespace(url="http://127.0.0.1:9/v1")


def url(name, *args):
    """Return the admin URL of a selection view."""
    return reverse(f"admin:routing_selection_{name}", args=args)


def decision(winner="coder", served="generalist"):
    """Return a decision record as a selected request that fell back from winner to served writes it."""
    reason = "code_generation: best capability fit, 2nd cheapest, healthiest"
    return {
        "model": {"requested": "auto", "served": served, "reason": reason},
        "selection": {
            "analysis": {
                "context_type": "code_generation",
                "detected_type": "code_generation",
                "confidence": 0.874,
                "low_confidence": False,
                "requirements": ["streaming"],
                "prompt_tokens": 42,
                "needed_context_window": 298,
                "signals": ["function", "python"],
            },
            "weights": {"capability": 0.6, "performance": 0.25, "cost": 0.15},
            "candidates": [
                {
                    "model": winner,
                    "eligible": True,
                    "score": 0.9318,
                    "breakdown": {"capability": 1.0, "performance": 1.0, "cost": 0.5455},
                    "estimated_cost_usd": "0.000554",
                    "reasons": ["tagged code_generation"],
                },
                {
                    "model": served,
                    "eligible": True,
                    "score": 0.7,
                    "breakdown": {"capability": 0.5, "performance": 1.0, "cost": 1.0},
                    "estimated_cost_usd": "0.000302",
                    "reasons": ["general-purpose model", "context window unknown"],
                },
                {
                    "model": "tiny",
                    "eligible": False,
                    "score": None,
                    "breakdown": {},
                    "estimated_cost_usd": None,
                    "reasons": ["needs a 298-token window, has 128"],
                },
            ],
            "winner": winner,
            "reason": reason,
        },
        "fallbacks": [{"from": winner, "to": served}],
        "strategy": "round-robin",
        "candidates": ["generalist-0"],
        "instance": "generalist-0",
        "attempts": [
            {"instance": "coder-0", "outcome": "status", "ms": 12.5, "status": 502},
            {"instance": "generalist-0", "outcome": "ok", "ms": 80.25, "status": 200},
        ],
    }


def log(context_type="code_generation", served="generalist", outcome=Outcome.OK, age=0, **fields):
    """Create and return a RequestLog row, a selected one unless context_type is empty."""
    return RequestLog.objects.create(
        request_id=uuid.uuid4(),
        created_at=timezone.now() - timedelta(seconds=age),
        requested_model="auto",
        served_model=served,
        outcome=outcome,
        status_code=200 if outcome == Outcome.OK else 502,
        latency_ms=91.5,
        cost_usd=Decimal("0.000302"),
        attempts=2,
        decision=decision(served=served) if context_type else {"model": {"requested": "auto", "served": served}},
        context_type=context_type,
        **fields,
    )


def listed(response):
    """Return the rows the changelist shows."""
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def ids(rows):
    """Return the request ids of rows."""
    return [row.request_id for row in rows]


@pytest.fixture
def models():
    """Return a model tagged for code that cannot read images, and a general one that can."""
    prices = {"input_cost_per_mtok": Decimal("1"), "output_cost_per_mtok": Decimal("4")}
    coder = make_model("try-coder", [UNUSED_UPSTREAM], capabilities=["code_generation"], supports_vision=False,
                       **prices)  # fmt: skip
    general = make_model("try-general", [UNUSED_UPSTREAM], capabilities=["general_chat"], supports_vision=True,
                         input_cost_per_mtok=Decimal("0.1"), output_cost_per_mtok=Decimal("0.4"))  # fmt: skip
    return coder, general


def try_it(client, **fields):
    """Post the try-it form and return the response."""
    return client.post(url("try"), {"prompt": CODE_PROMPT, "system": "", "api_key": "", "max_tokens": "", **fields})


def candidate_row(page, model):
    """Return the text of the candidate table row of a model."""
    match = re.search(rf"<tr class=\"[^\"]*\">\s*<td>[^<]*</td>\s*<td>(?:<strong>)?{model}(?:</strong>)?</td>.*?</tr>",
                      page, re.S)  # fmt: skip
    assert match, f"no candidate row for {model}"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match.group(0)))


# --- The list -----------------------------------------------------------------------------------------------------


def test_the_list_shows_only_selected_requests_newest_first(admin_client):
    older = log(age=60)
    newer = log(age=5)
    log(context_type="")  # a request for a named model
    log(endpoint="models.recommend", served="")  # a recommend call ranks models but serves none

    response = admin_client.get(url("changelist"))

    assert ids(listed(response)) == [newer.request_id, older.request_id]
    page = response.content.decode()
    assert str(newer.request_id)[:8] in page
    assert "auto → generalist" in page
    assert "0.87" in page  # the analysis' confidence


def test_the_list_links_to_the_try_it_form(admin_client):
    assert url("try") in admin_client.get(url("changelist")).content.decode()


def test_the_list_filters_by_context_type_chosen_model_and_outcome(admin_client, models):
    code = log(served="try-coder")
    maths = log(context_type="math", served="try-general")
    failed = log(served="try-general", outcome=Outcome.UPSTREAM_ERROR)

    assert ids(listed(admin_client.get(url("changelist"), {"context_type": "math"}))) == [maths.request_id]
    by_model = listed(admin_client.get(url("changelist"), {"served_model": "try-coder"}))
    assert ids(by_model) == [code.request_id]
    by_outcome = listed(admin_client.get(url("changelist"), {"outcome__exact": "upstream_error"}))
    assert ids(by_outcome) == [failed.request_id]


def test_filter_choices_come_from_the_configuration_not_the_log(admin_client, models):
    log(served="try-coder")

    page = admin_client.get(url("changelist")).content.decode()

    assert "?context_type=translation" in page  # no translation was logged
    assert "?served_model=try-general" in page  # the general model served nothing yet
    assert "?outcome__exact=no_capacity" in page  # outcomes are a fixed list too


# --- The detail page ----------------------------------------------------------------------------------------------


def test_the_detail_page_shows_the_decision_readably(admin_client):
    row = log()

    page = admin_client.get(url("change", row.pk)).content.decode()

    assert "code_generation: best capability fit, 2nd cheapest, healthiest" in page
    coder = candidate_row(page, "coder")
    assert "1 coder yes 0.9318 1.00 1.00 0.55 — 0.000554 tagged code_generation" in coder  # logged before quality
    assert "general-purpose model; context window unknown" in candidate_row(page, "generalist")
    tiny = candidate_row(page, "tiny")
    assert " no " in tiny and "needs a 298-token window, has 128" in tiny
    assert "capability 0.6 · performance 0.25 · cost 0.15" in re.sub(r"\s+", " ", page)
    assert "0.87" in page and "streaming" in page and "298" in page
    assert "coder → generalist" in page
    assert "coder-0" in page and "502" in page


def test_the_detail_page_folds_the_raw_decision_json(admin_client):
    row = log()

    page = admin_client.get(url("change", row.pk)).content.decode()

    folded = re.search(r"<details[^>]*>\s*<summary>Raw decision JSON</summary>\s*<pre>(.*?)</pre>", page, re.S)
    assert folded
    assert '"winner": "coder"' in html.unescape(folded.group(1))


def test_selections_are_read_only(admin_client):
    row = log()

    assert admin_client.get(url("add")).status_code == 403
    assert admin_client.get(url("delete", row.pk)).status_code == 403
    assert admin_client.post(url("change", row.pk), {"status_code": "500"}).status_code == 403
    assert 'name="_save"' not in admin_client.get(url("change", row.pk)).content.decode()


# --- The try-it form ----------------------------------------------------------------------------------------------


def test_try_it_ranks_a_code_prompt_to_the_code_model(admin_client, models):
    response = try_it(admin_client)

    assert response.status_code == 200
    result = response.context["result"]
    assert result["analysis"]["context_type"] == "code_generation"
    assert result["winner"] == "try-coder"
    assert [c["model"] for c in result["candidates"]] == ["try-coder", "try-general"]
    page = response.content.decode()
    assert "Would serve: <strong>try-coder</strong>" in page
    assert "tagged code_generation" in candidate_row(page, "try-coder")


def test_try_it_shows_a_filtered_model_and_why(admin_client, models):
    response = try_it(admin_client, has_image="on")

    assert response.context["result"]["winner"] == "try-general"
    assert response.context["result"]["analysis"]["requirements"] == ["vision"]
    assert "does not support image input" in candidate_row(response.content.decode(), "try-coder")


def test_try_it_reads_the_live_health_of_the_models(admin_client, models):
    coder, _ = models
    routing_state = state.get()
    for _ in range(10):  # failures enough to open the breaker of the code model's only instance
        routing_state.observe(coder.instance_ids[0], ok=False, now=time.time(), detail="HTTP 500")

    response = try_it(admin_client)

    assert response.context["result"]["winner"] == "try-general"
    assert "no instance can take a request now" in candidate_row(response.content.decode(), "try-coder")


def test_try_it_ranks_only_the_models_the_key_may_select(admin_client, models):
    coder, _ = models
    key, _ = api_key_create(name="coders", models=[coder])

    response = try_it(admin_client, api_key=key.pk)

    assert [c["model"] for c in response.context["result"]["candidates"]] == ["try-coder"]


def test_try_it_gives_what_the_recommend_service_gives(admin_client, models):
    response = try_it(admin_client, system="You are terse.", needs_tools="on", json_mode="on", max_tokens="500")
    body = {
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": CODE_PROMPT}],
        "tools": [TRY_TOOL],
        "response_format": {"type": "json_object"},
        "max_tokens": 500,
        "limit": 100,
    }
    service = ChatRequest(request_id=uuid.uuid4(), key=ANY_KEY, snapshot=snapshot.build())

    expected = service.recommend(body)

    result = response.context["result"]
    assert result["analysis"]["requirements"] == ["tools", "json"]
    assert result["analysis"] == expected["analysis"]
    assert result["candidates"] == [
        {key: value for key, value in r.items() if key != "rank"} for r in expected["recommendations"]
    ]


def test_try_it_asks_for_a_prompt(admin_client, models):
    response = try_it(admin_client, prompt="")

    assert response.status_code == 200
    assert response.context["result"] is None
    assert "This field is required." in response.content.decode()


def test_try_it_needs_a_csrf_token(admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)

    assert try_it(client).status_code == 403


def test_non_staff_users_are_sent_to_login(client, django_user_model):
    client.force_login(django_user_model.objects.create_user(username="bob", password="pw-for-bob-123"))

    for response in (client.get(url("changelist")), client.get(url("try")), try_it(client)):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
