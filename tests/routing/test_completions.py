"""Legacy text completions (`routing.completions`, `POST /v1/completions`): the body's checks, which instances serve
it, and the official `openai` SDK's `client.completions.create` through a live gateway and live fake providers."""

import json
import time
from decimal import Decimal

import openai
import pytest

from routing.completions import passthrough_only
from routing.errors import InvalidRequest
from routing.models import Outcome, ProviderInstance, RequestLog
from routing.snapshot import InstanceConfig, ModelConfig
from routing.validation import validate_completion_body
from tests.factories import UPSTREAM_KEY, make_key, make_model, make_provider, wait_for_model, wait_for_reload
from tests.gateway import wait_until

FAKE_TEXT = "".join(f"fake{i} " for i in range(20))
GPT_4O_MINI_IN = Decimal("1.5e-07")  # litellm's price map, per token
GPT_4O_MINI_OUT = Decimal("6e-07")
OK = {"model": "m", "prompt": "Say this is a test"}


# --- the body ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt", ["", "one prompt", ["a", "b"], [1, 2, 3], [[1, 2], [3]]], ids=["empty", "str", "strs", "ids", "id-lists"]
)
def test_a_prompt_is_a_string_or_an_array_of_strings_or_of_token_ids(prompt):
    validate_completion_body({**OK, "prompt": prompt, "max_tokens": 5, "stream": True, "stop": ["\n"], "n": 1})


@pytest.mark.parametrize(
    "body, param",
    [
        ([], None),
        ({"prompt": "x"}, "model"),
        ({**OK, "model": 3}, "model"),
        ({"model": "m"}, "prompt"),
        ({**OK, "prompt": []}, "prompt"),
        ({**OK, "prompt": [1, "a"]}, "prompt"),
        ({**OK, "prompt": [[1], []]}, "prompt"),
        ({**OK, "prompt": [-1]}, "prompt"),
        ({**OK, "prompt": [True]}, "prompt"),
        ({**OK, "prompt": {"text": "x"}}, "prompt"),
        ({**OK, "max_tokens": "16"}, "max_tokens"),
        ({**OK, "max_tokens": -1}, "max_tokens"),
        ({**OK, "max_tokens": 1.5}, "max_tokens"),
        ({**OK, "n": 0}, "n"),
        ({**OK, "temperature": "hot"}, "temperature"),
        ({**OK, "top_p": True}, "top_p"),
        ({**OK, "stream": "yes"}, "stream"),
        ({**OK, "stream_options": []}, "stream_options"),
        ({**OK, "echo": 1}, "echo"),
        ({**OK, "stop": [1]}, "stop"),
        ({**OK, "logprobs": True}, "logprobs"),
        ({**OK, "user": 7}, "user"),
        ({**OK, "api_base": "http://evil"}, "api_base"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_parameter(body, param):
    with pytest.raises(InvalidRequest) as exc:
        validate_completion_body(body)
    assert exc.value.param == param and exc.value.status_code == 400


# --- which instances serve it --------------------------------------------------------------------------------------


def _instance(id, passthrough):
    return InstanceConfig(id=id, model="m", provider_kind="openai", litellm_model="gpt-4o-mini", api_base=None,
                          api_key=None, openai_compatible=passthrough, weight=1, rpm=None, tpm=None, timeout=30,
                          stream_timeout=30, input_cost_per_token=None, output_cost_per_token=None)  # fmt: skip


def _model(*instances):
    return ModelConfig(name="m", description="", strategy="round-robin", capabilities=(), context_window=None,
                       created=0, instances=instances)  # fmt: skip


def test_only_pass_through_instances_serve_legacy_completions():
    both = _model(_instance("a", True), _instance("b", False))
    assert [i.id for i in passthrough_only(both).instances] == ["a"]
    assert passthrough_only(_model(_instance("b", False))) is None
    same = _model(_instance("a", True))
    assert passthrough_only(same) is same


# --- through the gateway -------------------------------------------------------------------------------------------

live = pytest.mark.django_db(transaction=True)


def rows():
    """Return the legacy completion rows, oldest first."""
    return list(RequestLog.objects.filter(endpoint="completions").order_by("created_at"))


def wait_rows(count):
    """Wait until exactly count legacy completion rows are written; return them."""
    wait_until(lambda: len(rows()) >= count, message=f"{count} completion rows")
    time.sleep(0.15)  # a straggler would show up within a flush interval
    found = rows()
    assert len(found) == count
    return found


@pytest.fixture
def client(gateway, fake):
    """Return an SDK client whose key may use `legacy-test`, served by the fake through pass-through."""
    model = make_model("legacy-test", [fake])
    raw = make_key()
    wait_for_model(gateway, raw, "legacy-test")
    sdk = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    sdk.instance_id, sdk.raw_key = model.instance_ids[0], raw
    return sdk


@live
def test_it_serves_a_completion_and_records_it(client, fake):
    raw_resp = client.completions.with_raw_response.create(model="legacy-test", prompt="Say this is a test", user="u")
    completion = raw_resp.parse()

    assert completion.object == "text_completion" and completion.choices[0].text == FAKE_TEXT
    assert completion.usage.prompt_tokens == 5 and completion.usage.completion_tokens == 20
    assert raw_resp.headers["x-chatvault-model"] == "legacy-test"
    assert raw_resp.headers["x-chatvault-instance"] == client.instance_id
    sent = fake.requests()[-1]
    assert sent["path"] == "/v1/completions"
    assert sent["body"]["model"] == "gpt-4o-mini" and sent["body"]["prompt"] == "Say this is a test"
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"

    (row,) = wait_rows(1)
    assert str(row.request_id) == raw_resp.headers["x-request-id"]
    assert (row.outcome, row.status_code, row.stream, row.user) == (Outcome.OK, 200, False, "u")
    assert (row.requested_model, row.served_model) == ("legacy-test", "legacy-test")
    assert row.instance_id == client.instance_id
    assert (row.prompt_tokens, row.completion_tokens) == (5, 20)
    assert row.cost_usd == 5 * GPT_4O_MINI_IN + 20 * GPT_4O_MINI_OUT


@live
def test_a_list_of_prompts_gets_one_choice_each(client):
    completion = client.completions.create(model="legacy-test", prompt=["one", "two words"], max_tokens=3)
    assert [c.text for c in completion.choices] == ["fake0 fake1 fake2 "] * 2
    assert completion.choices[0].finish_reason == "length"


@live
def test_it_streams_chunks_as_they_arrive_and_records_usage(client, fake):
    fake.set_config(chunks=5, chunk_delay_ms=150)
    began = time.monotonic()
    stream = client.completions.create(model="legacy-test", prompt="hi", stream=True)
    arrivals, texts = [], []
    for chunk in stream:
        arrivals.append(time.monotonic() - began)
        texts.append(chunk.choices[0].text if chunk.choices else None)
        assert chunk.usage is None, "the client did not ask for usage"
    assert "".join(t for t in texts if t) == "fake0 fake1 fake2 fake3 fake4 "
    assert arrivals[0] < 0.4 < arrivals[-1], "the first chunk came with the last: the stream was buffered"
    assert fake.requests()[-1]["body"]["stream_options"] == {"include_usage": True}

    (row,) = wait_rows(1)
    assert (row.outcome, row.stream, row.prompt_tokens, row.completion_tokens) == (Outcome.OK, True, 1, 5)
    assert row.ttft_ms is not None and row.cost_usd > 0


@live
def test_a_stream_ends_in_done_and_carries_usage_when_asked(client, gateway):
    body = {"model": "legacy-test", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}
    status, headers, payload = gateway.request(
        "POST", "/v1/completions", json.dumps(body).encode(), {"Authorization": f"Bearer {client.raw_key}"}
    )
    events = [e.removeprefix("data: ") for e in payload.decode().split("\n\n") if e]
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 20


@live
def test_a_failed_instance_fails_over_to_another(gateway, fake, fake_b):
    model = make_model("legacy-pair", [fake, fake_b])
    raw = make_key()
    wait_for_model(gateway, raw, "legacy-pair")
    fake.set_config(status=500)
    sdk = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    for _ in range(2):  # round-robin starts one of them on the failing fake
        assert sdk.completions.create(model="legacy-pair", prompt="hi").choices[0].text == FAKE_TEXT

    failed_over = [r for r in wait_rows(2) if r.attempts == 2]
    assert len(failed_over) == 1
    row = failed_over[0]
    assert row.instance_id == model.instance_ids[1] and row.outcome == Outcome.OK
    assert [a["outcome"] for a in row.decision["attempts"]] == ["status", "ok"]
    assert fake.requests()[-1]["path"] == "/v1/completions"


@live
@pytest.mark.parametrize(
    "upstream_status, sdk_error, status",
    [(400, openai.BadRequestError, 400), (429, openai.RateLimitError, 429), (503, openai.InternalServerError, 502)],
)
def test_upstream_errors_map_like_chat(client, fake, upstream_status, sdk_error, status):
    fake.set_config(status=upstream_status)
    with pytest.raises(sdk_error) as exc:
        client.completions.create(model="legacy-test", prompt="hi")
    assert exc.value.status_code == status
    (row,) = wait_rows(1)
    assert row.status_code == status and row.outcome != Outcome.OK


@live
def test_a_model_served_through_litellm_is_a_400_saying_to_use_chat(gateway, fake):
    make_model("legacy-litellm", [fake], adapter="litellm")
    raw = make_key()
    wait_for_model(gateway, raw, "legacy-litellm")
    sdk = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.completions.create(model="legacy-litellm", prompt="hi")

    error = exc.value.body
    assert "/v1/chat/completions" in error["message"]
    assert (error["param"], error["code"]) == ("model", "completions_unsupported")
    assert error["type"] == "invalid_request_error"
    assert fake.requests() == []
    (row,) = wait_rows(1)
    assert (row.status_code, row.error_type, row.requested_model) == (400, "completions_unsupported", "legacy-litellm")


@live
def test_a_model_with_both_kinds_is_served_by_its_pass_through_instances_only(gateway, fake, fake_b):
    model = make_model("legacy-mixed", [fake])
    other = ProviderInstance(id=f"{model.instance_ids[0]}-litellm", model=model, provider=make_provider("litellm"),
                             litellm_model="openai/gpt-4o-mini", api_base=fake_b.url)  # fmt: skip
    other.set_api_key(UPSTREAM_KEY)
    other.save()
    raw = make_key()
    wait_for_model(gateway, raw, "legacy-mixed")
    wait_for_reload(gateway)
    sdk = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    for _ in range(4):
        sdk.completions.create(model="legacy-mixed", prompt="hi")

    assert fake_b.requests() == [] and len(fake.requests()) == 4
    row = wait_rows(4)[0]
    assert row.decision["model"]["not_passthrough"] == [other.id]
    assert row.decision["candidates"] == [model.instance_ids[0]]


@live
@pytest.mark.parametrize(
    "body, param",
    [({"model": "legacy-test"}, "prompt"), ({"model": "legacy-test", "prompt": "x", "max_tokens": "9"}, "max_tokens"),
     ({"model": "auto", "prompt": "x"}, "model"), ({"model": "nope", "prompt": "x"}, "model")],
)  # fmt: skip
def test_bad_requests_are_answered_in_openai_shape_and_logged(client, gateway, fake, body, param):
    status, _, answer = gateway.request(
        "POST", "/v1/completions", json.dumps(body).encode(), {"Authorization": f"Bearer {client.raw_key}"}
    )
    error = json.loads(answer)["error"]
    assert status in (400, 404) and error["param"] == param
    assert fake.requests() == []
    (row,) = wait_rows(1)
    assert row.status_code == status


@live
def test_without_a_key_it_is_a_401(gateway):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.url, api_key="cv-wrong", max_retries=0).completions.create(
            model="legacy-test", prompt="hi"
        )
