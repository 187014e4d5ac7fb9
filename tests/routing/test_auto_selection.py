"""Automatic model selection end to end: `model: "auto"` through a live gateway and live fake providers.

Each test configures its own models (capability tags, feature overrides, prices) and a key whose selection pool is
exactly those models, so models made by other tests never compete.
"""

import json
import time
from decimal import Decimal

import openai
import pytest

from routing.models import ApiKey, Model, RequestLog, RoutingSettings
from tests.factories import make_key, make_model, set_instance, tune, wait_for_model, wait_for_reload
from tests.gateway import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

CODE_PROMPT = "Write a Python function that parses an ISO 8601 date string and returns a datetime."
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def pool(gateway, *models, **key_fields):
    """Return (openai client, raw key) for a key that selects among exactly these models."""
    raw = make_key(name="auto", **key_fields)
    key = ApiKey.objects.get(name="auto", prefix=raw[:11])
    key.auto_models.set(Model.objects.filter(name__in=[m.name for m in models]))
    key.save()  # what admin does: a save bumps the configuration revision
    wait_for_reload(gateway)
    wait_for_model(gateway, raw, models[0].name)
    return openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0), raw


def row(request_id):
    """Wait for and return the RequestLog row of a request."""
    return wait_until(lambda: RequestLog.objects.filter(request_id=request_id).first(), message="the request's row")


def test_auto_serves_the_model_tagged_for_the_request_and_says_why(gateway, fake, fake_b):
    coder = make_model("sel-coder", [fake], capabilities=["code_generation"], input_cost_per_mtok=Decimal("5"),
                       output_cost_per_mtok=Decimal("15"))  # fmt: skip
    chat = make_model("sel-chat", [fake_b], capabilities=["general_chat"], input_cost_per_mtok=Decimal("0.1"),
                      output_cost_per_mtok=Decimal("0.4"))  # fmt: skip
    client, _ = pool(gateway, coder, chat)

    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": CODE_PROMPT}]
    )
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-chatvault-model"] == "sel-coder"
    assert raw.headers["x-chatvault-context-type"] == "code_generation"
    assert raw.headers["x-chatvault-selection-reason"].startswith("code_generation: best capability fit")

    stored = row(raw.headers["x-request-id"])
    assert (stored.requested_model, stored.served_model) == ("auto", "sel-coder")
    assert stored.context_type == "code_generation"
    selection = stored.decision["selection"]
    assert selection["winner"] == "sel-coder" and selection["analysis"]["context_type"] == "code_generation"
    assert [c["model"] for c in selection["candidates"]] == ["sel-coder", "sel-chat"]
    assert set(selection["candidates"][0]["breakdown"]) == {"capability", "performance", "cost", "quality"}
    assert selection["weights"] == {"capability": 0.6, "performance": 0.25, "cost": 0.15, "quality": 0.05}

    plain = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hey, how are you doing today?"}]
    )
    assert plain.headers["x-chatvault-model"] == "sel-chat", "plain chat goes to the general (and cheaper) model"


@pytest.mark.parametrize(
    "override, extra, message",
    [
        ({"supports_vision": False},
         {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE]}]},
         "supports image input"),
        ({"supports_function_calling": False}, {"tools": [TOOL]}, "supports function calling"),
        ({"context_window": 50}, {"max_tokens": 100}, "context window"),
    ],
)
def test_a_hard_filter_is_never_crossed(gateway, fake, fake_b, override, extra, message):
    able = make_model("sel-able", [fake], capabilities=[])
    unable = make_model("sel-unable", [fake_b], capabilities=["general_chat", "code_generation"], **override)
    client, _ = pool(gateway, able, unable)
    body = {"messages": [{"role": "user", "content": "hello"}], **extra}
    raw = client.chat.completions.with_raw_response.create(model="auto", **body)
    assert raw.headers["x-chatvault-model"] == "sel-able"
    stored = row(raw.headers["x-request-id"])
    filtered = {c["model"]: c for c in stored.decision["selection"]["candidates"]}["sel-unable"]
    assert not filtered["eligible"] and filtered["reasons"]

    Model.objects.filter(name="sel-able").update(enabled=False)
    set_instance(gateway, able.instance_ids[0])  # bump the revision and wait for the reload
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="auto", **body)
    assert message in caught.value.message


def test_only_capacity_missing_is_a_503(gateway, fake):
    model = make_model("sel-drained", [fake], capabilities=["general_chat"])
    client, _ = pool(gateway, model)
    set_instance(gateway, model.instance_ids[0], drained=True)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503


def test_a_selected_request_falls_back_to_the_next_model_when_the_first_fails(gateway, fake, fake_b):
    first = make_model("sel-first", [fake], capabilities=["general_chat"], input_cost_per_mtok=Decimal("0.1"),
                       output_cost_per_mtok=Decimal("0.1"))  # fmt: skip
    second = make_model("sel-second", [fake_b], capabilities=["general_chat"], input_cost_per_mtok=Decimal("9"),
                        output_cost_per_mtok=Decimal("9"))  # fmt: skip
    client, _ = pool(gateway, first, second)
    fake.set_config(status=503)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-chatvault-model"] == "sel-second"
    stored = row(raw.headers["x-request-id"])
    assert stored.decision["fallbacks"] == [{"from": "sel-first", "to": "sel-second"}]
    selection = stored.decision["selection"]
    assert (selection["winner"], selection["served"]) == ("sel-first", "sel-second")
    assert [a["instance"] for a in stored.decision["attempts"]] == [first.instance_ids[0], second.instance_ids[0]]
    assert stored.served_model == "sel-second" and stored.outcome == "ok"


def test_a_key_may_turn_automatic_selection_off(gateway, fake):
    model = make_model("sel-off", [fake], capabilities=["general_chat"])
    client, _ = pool(gateway, model)
    ApiKey.objects.filter(name="auto").update(auto_select=False)
    RoutingSettings.load().save()  # bump the revision
    wait_for_reload(gateway)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "auto_select_disabled"


def test_recommend_ranks_without_calling_an_upstream_and_logs_a_row(gateway, fake, fake_b):
    coder = make_model("sel-rec-coder", [fake], capabilities=["code_generation"])
    blind = make_model("sel-rec-blind", [fake_b], capabilities=["code_generation"], supports_vision=False)
    _, raw = pool(gateway, coder, blind)
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": CODE_PROMPT}, IMAGE]}], "limit": 5}
    status, headers, answer = gateway.request(
        "POST", "/v1/models/recommend", json.dumps(body).encode(), {"Authorization": f"Bearer {raw}"}
    )
    assert status == 200, answer
    result = json.loads(answer)
    assert result["analysis"]["context_type"] == "code_generation" and "vision" in result["analysis"]["requirements"]
    first, second = result["recommendations"]
    assert (first["model"], first["rank"], first["eligible"]) == ("sel-rec-coder", 1, True)
    assert set(first["breakdown"]) == {"capability", "performance", "cost", "quality"} and first["score"] > 0
    assert (second["model"], second["eligible"], second["rank"]) == ("sel-rec-blind", False, None)
    assert second["reasons"] == ["does not support image input"]
    assert fake.requests() == [] and fake_b.requests() == []
    stored = row(headers["x-request-id"])
    assert stored.endpoint == "models.recommend" and stored.context_type == "code_generation"

    status, _, answer = gateway.request("POST", "/v1/models/recommend", b'{"limit": 0, "messages": []}',
                                        {"Authorization": f"Bearer {raw}"})  # fmt: skip
    assert status == 400 and json.loads(answer)["error"]["param"] == "limit"
    status, _, _ = gateway.request("POST", "/v1/models/recommend", json.dumps(body).encode())
    assert status == 401


def test_traffic_moves_away_from_a_failing_model_and_back_once_it_recovers(gateway, fake, fake_b):
    """The cheaper model serves while healthy; failing, it loses its traffic to its peer; recovered, it wins it back
    once its failures have aged out of the window (3 s here, a minute by default)."""
    cheap = make_model("sel-cheap", [fake], capabilities=["general_chat"], input_cost_per_mtok=Decimal("0.1"),
                       output_cost_per_mtok=Decimal("0.1"))  # fmt: skip
    dear = make_model("sel-dear", [fake_b], capabilities=["general_chat"], input_cost_per_mtok=Decimal("9"),
                      output_cost_per_mtok=Decimal("9"))  # fmt: skip
    client, _ = pool(gateway, cheap, dear)
    tune(gateway, breaker_window_seconds=3, breaker_cooldown_seconds=0.5, breaker_max_cooldown_seconds=1)

    def served():
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi there"}]
        )
        return raw.headers["x-chatvault-model"]

    assert [served() for _ in range(3)] == ["sel-cheap"] * 3
    fake.clear_requests()
    fake.set_config(status=503)
    moved = [served() for _ in range(12)]
    assert set(moved) == {"sel-dear"}, "every request is served: falling back, then selected away"
    assert fake.stats()["count"] == 5, "tried until its breaker opens (5 failures in a row), then no more"
    fake.reset_config()
    began = time.monotonic()
    wait_until(lambda: served() == "sel-cheap", timeout=15, interval=0.2, message="traffic back on the cheap model")
    assert time.monotonic() - began < 10
    assert [served() for _ in range(3)] == ["sel-cheap"] * 3


def test_a_named_model_falls_back_to_its_configured_fallback(gateway, fake, fake_b):
    backup = make_model("sel-backup", [fake_b])
    primary = make_model("sel-primary", [fake], fallbacks=["sel-backup"])
    raw = make_key(name="fallbacks")
    wait_for_model(gateway, raw, "sel-backup")
    client = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    fake.set_config(status=503)
    answer = client.chat.completions.with_raw_response.create(
        model="sel-primary", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.headers["x-chatvault-model"] == "sel-backup"
    assert "x-chatvault-context-type" not in answer.headers, "a named model is not selected"
    stored = row(answer.headers["x-request-id"])
    assert (stored.requested_model, stored.served_model) == ("sel-primary", "sel-backup")
    assert stored.decision["fallbacks"] == [{"from": "sel-primary", "to": "sel-backup"}]
    assert [a["instance"] for a in stored.decision["attempts"]] == [primary.instance_ids[0], backup.instance_ids[0]]
