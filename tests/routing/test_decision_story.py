"""Tests for routing/admin/decision_story.py: a request-log row's detail page tells its routing decision as a story
(requested → chosen model and why → candidates and skips → attempts → the end), links the instances, folds the raw
JSON below, and shows every recorded value as escaped text."""

import re
import uuid

import openai
import pytest
from django.urls import reverse
from django.utils import timezone

from routing.admin import decision_story
from routing.models import Model, Outcome, Provider, ProviderInstance, RequestLog
from tests.factories import make_key, make_model, wait_for_model
from tests.helpers import MESSAGES, wait_rows

SCRIPT = "<script>alert('x')</script>"
ESCAPED = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"


def logged(decision, **fields):
    """Write a RequestLog row with this decision; return it."""
    values = {"outcome": Outcome.OK, "status_code": 200, "requested_model": "auto", "served_model": "vault-b"}
    return RequestLog.objects.create(
        request_id=uuid.uuid4(), created_at=timezone.now(), decision=decision, **{**values, **fields}
    )


def detail(client, row):
    """Return the detail page of a request-log row."""
    response = client.get(reverse("admin:routing_requestlog_change", args=[row.pk]))
    assert response.status_code == 200
    return response.content.decode()


def story_html(page):
    """Return the story part of a detail page (the raw JSON folded below it left out)."""
    match = re.search(r'<fieldset class="module aligned decision-story".*?<details class="decision-raw">', page, re.S)
    assert match, "no decision story"
    return match.group(0)


def text(html):
    """Return the words of some HTML: inline tags dropped, other tags read as spaces, spaces collapsed."""
    inline_dropped = re.sub(r"</?(a|strong|span|code)\b[^>]*>", "", html)
    return " ".join(re.sub(r"<[^>]+>", " ", inline_dropped).split())


@pytest.fixture
def instances():
    """Return the instance ids a-1 and b-1 (configured; a-2 of the decisions below is not, any more)."""
    provider = Provider.objects.create(name="openai", kind="openai")
    for model_name, pk in (("vault-a", "a-1"), ("vault-b", "b-1")):
        model = Model.objects.create(name=model_name)
        ProviderInstance.objects.create(id=pk, model=model, provider=provider, litellm_model="openai/gpt-4o")
    return ["a-1", "b-1"]


FULL = {
    "model": {"requested": "auto", "served": "vault-b", "reason": "code_generation: best capability fit"},
    "selection": {
        "analysis": {"context_type": "code_generation", "confidence": 0.9, "requirements": []},
        "weights": {"capability": 0.6, "performance": 0.25, "cost": 0.15, "quality": 0.05},
        "candidates": [
            {"model": "vault-a", "eligible": True, "score": 0.9, "breakdown": {"capability": 1.0}, "reasons": []},
            {"model": "vault-c", "eligible": False, "reasons": ["no vision"]},
        ],
        "winner": "vault-a",
        "reason": "code_generation: best capability fit, cheapest",
        "served": "vault-b",
    },
    "experiment": {"id": "exp-1", "variant": "treatment", "model": "vault-a", "overrides": ["temperature"]},
    "fallbacks": [{"from": "vault-a", "to": "vault-b"}],
    "strategy": "round-robin",
    "candidates": ["a-1"],
    "skipped": {"a-2": "open: 5 consecutive failures, last: HTTP 503"},
    "instance": "b-1",
    "attempts": [
        {"instance": "a-1", "outcome": "status", "ms": 12.5, "status": 503},
        {"instance": "b-1", "outcome": "ok", "ms": 40.25, "status": 200},
    ],
    "usage_problems": ["completion_tokens was negative (-3): left out"],
}


@pytest.mark.django_db
def test_the_decision_is_told_step_by_step(admin_client, instances):
    row = logged(FULL, latency_ms=55.0)

    story = story_html(detail(admin_client, row))
    steps = re.findall(r'<li class="step-(\w+)">', story)
    assert steps == ["requested", "model", "instances", "attempts", "result"]
    words = text(story)
    assert "Requested auto" in words
    assert "Chose model vault-b: code_generation: best capability fit." in words
    selection = "Automatic selection: code_generation, winner vault-a — code_generation: best capability fit, cheapest"
    assert selection in words
    assert "In experiment exp-1, variant treatment (model vault-a), with its overrides of temperature." in words
    assert "vault-a could not serve it: fell back to vault-b." in words
    assert "Instances (round-robin): a-1 could take it." in words
    assert "Skipped a-2: open: 5 consecutive failures, last: HTTP 503" in words
    attempts = "2 upstream attempts: # Instance Outcome Status Duration (ms) 1 a-1 status 503 12.5 2 b-1 ok 200 40.25"
    assert attempts in words
    assert "Ended OK (200) after 55.0 ms." in words
    assert "Usage: completion_tokens was negative (-3): left out" in words


@pytest.mark.django_db
def test_configured_instances_are_linked_and_gone_ones_are_named(admin_client, instances):
    story = story_html(detail(admin_client, logged(FULL)))
    for pk in instances:
        assert f'<a href="{reverse("admin:routing_providerinstance_change", args=[pk])}">{pk}</a>' in story
    assert "Skipped a-2:" in text(story) and "/providerinstance/a-2/" not in story


@pytest.mark.django_db
def test_the_raw_json_is_folded_below_the_story(admin_client, instances):
    page = detail(admin_client, logged(FULL))
    folded = r'<details class="decision-raw">\s*<summary>Raw decision JSON</summary>\s*<pre>(.*?)</pre>'
    raw = re.search(folded, page, re.S)
    assert raw and raw.group(1).startswith("{\n  &quot;attempts&quot;: [")  # indented, keys sorted, escaped
    assert page.index('id="decision-story"') < page.index("field-request_id")  # the story first, then the fields


@pytest.mark.django_db
def test_every_recorded_value_is_shown_as_text(admin_client, instances):
    hostile = {
        "model": {"requested": SCRIPT, "served": SCRIPT, "reason": SCRIPT},
        "selection": {
            "analysis": {"context_type": SCRIPT, "signals": [SCRIPT]},
            "candidates": [{"model": SCRIPT, "eligible": False, "reasons": [SCRIPT]}],
            "winner": SCRIPT,
            "reason": SCRIPT,
        },
        "experiment": {"id": SCRIPT, "variant": SCRIPT, "model": SCRIPT, "overrides": [SCRIPT], "fell_back": SCRIPT},
        "fallbacks": [{"from": SCRIPT, "to": SCRIPT}],
        "strategy": SCRIPT,
        "candidates": [SCRIPT],
        "skipped": {SCRIPT: SCRIPT},
        "instance": SCRIPT,
        "attempts": [{"instance": SCRIPT, "outcome": SCRIPT, "status": SCRIPT, "ms": SCRIPT}],
        "usage_problems": [SCRIPT],
    }
    row = logged(hostile, error_message=f"HTTP 502: {SCRIPT}", outcome=Outcome.UPSTREAM_ERROR, status_code=502)

    page = detail(admin_client, row)

    assert "<script>alert" not in page
    story = story_html(page)
    assert story.count(ESCAPED) >= 20
    assert f"HTTP 502: {ESCAPED}" in story
    assert '<td class="num">—</td>' in story  # a status or duration that is not a number is not shown


@pytest.mark.parametrize(
    "decision",
    [
        {},
        {"attempts": "three", "skipped": ["a-1"], "candidates": "a-1", "model": "vault-a", "selection": [1]},
        {"attempts": [None, 3, {"instance": None}], "fallbacks": [{"to": None}], "usage_problems": "bad"},
        ["not", "a", "dict"],
    ],
)
@pytest.mark.django_db
def test_old_and_partial_decisions_still_render(admin_client, decision):
    row = logged(decision, requested_model="vault-a", served_model="vault-a")
    words = text(story_html(detail(admin_client, row)))
    assert "Requested vault-a" in words and "Chose model vault-a." in words


def test_the_instances_a_decision_names_are_read_once_each():
    assert decision_story.instance_ids(FULL) == ["a-1", "a-2", "b-1"]
    assert decision_story.instance_ids({"skipped": {"x": "drained"}, "attempts": [{"instance": "x"}]}) == ["x"]
    assert decision_story.instance_ids(None) == []


@pytest.mark.django_db(transaction=True)
def test_a_real_failover_reads_as_a_story(admin_client, gateway, fake, fake_b):
    model = make_model("vault-story", [fake, fake_b], strategy="round-robin")
    sick, healthy = model.instance_ids
    raw = make_key()
    wait_for_model(gateway, raw, "vault-story")
    fake.set_config(status=503)
    sdk = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    for _ in range(2):  # round-robin: one of the two starts on the sick instance and fails over
        sdk.chat.completions.create(model="vault-story", messages=MESSAGES)

    (row,) = [r for r in wait_rows(2) if r.attempts == 2]
    words = text(story_html(detail(admin_client, row)))

    assert "Requested vault-story" in words
    assert "Chose model vault-story: requested by the client." in words
    assert f"Instances (round-robin): {sick}, {healthy} could take it" in words
    assert re.search(rf"1 {sick} status 503 [\d.]+ 2 {healthy} ok 200 [\d.]+", words), words
    assert "Ended OK (200)" in words
