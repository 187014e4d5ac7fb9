"""Embeddings (`routing.embeddings`, `POST /v1/embeddings`): the body's checks, the fake provider's deterministic
vectors, and the official `openai` SDK's `client.embeddings.create` through a live gateway and live fake providers,
once per adapter (pass-through and litellm), which makes this file the adapters' embeddings conformance suite."""

import base64
import json
import struct
import time
from decimal import Decimal

import openai
import pytest

from routing.errors import InvalidRequest
from routing.fake_provider import embedding_vector
from routing.models import Outcome, RequestLog
from routing.validation import MAX_EMBEDDING_INPUTS, validate_embeddings_body
from tests.factories import UPSTREAM_KEY, instance_stats, make_key, make_model, wait_for_model
from tests.gateway import wait_until
from tests.helpers import MESSAGES

EMBEDDING_MODEL = "openai/text-embedding-3-small"
EMBEDDING_PRICE = Decimal("2e-08")  # litellm's price map, per input token
DIMENSIONS = 16  # the fake provider's default
OK = {"model": "m", "input": "hello"}


# --- the body ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [{}, {"input": ["a", "b"]}, {"input": [1, 2, 3]}, {"input": [[1, 2], [3]]}, {"encoding_format": "base64"},
     {"encoding_format": "float", "dimensions": 8, "user": "u"}, {"stream": False}, {"truncate_prompt_tokens": 9}],
)  # fmt: skip
def test_a_good_body_passes(extra):
    validate_embeddings_body({**OK, **extra})


@pytest.mark.parametrize(
    "body, param",
    [
        ([], None),
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({**OK, "input": ""}, "input"),
        ({**OK, "input": []}, "input"),
        ({**OK, "input": ["a", ""]}, "input"),
        ({**OK, "input": ["a", 1]}, "input"),
        ({**OK, "input": [[1], []]}, "input"),
        ({**OK, "input": [-1]}, "input"),
        ({**OK, "input": [True]}, "input"),
        ({**OK, "input": {"text": "x"}}, "input"),
        ({**OK, "input": ["x"] * (MAX_EMBEDDING_INPUTS + 1)}, "input"),
        ({**OK, "encoding_format": "int8"}, "encoding_format"),
        ({**OK, "dimensions": 0}, "dimensions"),
        ({**OK, "dimensions": "8"}, "dimensions"),
        ({**OK, "user": 7}, "user"),
        ({**OK, "stream": True}, "stream"),
        ({**OK, "api_key": "sk-mine"}, "api_key"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_parameter(body, param):
    with pytest.raises(InvalidRequest) as exc:
        validate_embeddings_body(body)
    assert exc.value.param == param and exc.value.status_code == 400


# --- the fake provider's vectors -----------------------------------------------------------------------------------


def test_the_fake_embedding_is_a_unit_vector_that_depends_only_on_the_input():
    vector = embedding_vector("hello world", 32)
    assert len(vector) == 32
    assert sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-5)
    assert embedding_vector("hello world", 32) == vector
    assert embedding_vector("hello worlds", 32) != vector
    assert embedding_vector([1, 2], 32) != embedding_vector("[1, 2]", 32)
    packed = struct.pack("<32f", *vector)
    assert list(struct.unpack("<32f", packed)) == vector, "already float32: both encodings carry the same numbers"


# --- through the gateway -------------------------------------------------------------------------------------------

live = pytest.mark.django_db(transaction=True)


def rows():
    """Return the embeddings rows, oldest first."""
    return list(RequestLog.objects.filter(endpoint="embeddings").order_by("created_at"))


def wait_rows(count):
    """Wait until exactly count embeddings rows are written; return them."""
    wait_until(lambda: len(rows()) >= count, message=f"{count} embeddings rows")
    time.sleep(0.15)  # a straggler would show up within a flush interval
    found = rows()
    assert len(found) == count
    return found


def decoded(item):
    """Return an embedding of the SDK's or the raw API's answer as floats."""
    if isinstance(item, str):
        raw = base64.b64decode(item)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return item


@pytest.fixture(params=["passthrough", "litellm"])
def adapter(request):
    """Return the adapter under test."""
    return request.param


@pytest.fixture
def client(gateway, fake, adapter):
    """Return an SDK client whose key may use `emb-test`, an embedding model served by the fake through adapter."""
    model = make_model("emb-test", [fake], adapter=adapter, litellm_model=EMBEDDING_MODEL, mode="embedding")
    raw = make_key()
    wait_for_model(gateway, raw, "emb-test")
    sdk = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    sdk.instance_id, sdk.raw_key = model.instance_ids[0], raw
    return sdk


@live
def test_a_batch_gets_one_embedding_per_input_in_order_and_is_recorded(client, fake):
    inputs = ["the quick brown fox", "jumps", "over the lazy dog"]
    raw_resp = client.embeddings.with_raw_response.create(model="emb-test", input=inputs, user="u")
    answer = raw_resp.parse()  # the SDK asks for base64 and decodes it

    assert [item.index for item in answer.data] == [0, 1, 2]
    for item, text in zip(answer.data, inputs, strict=True):
        assert item.embedding == pytest.approx(embedding_vector(text, DIMENSIONS), abs=1e-6)
    assert answer.usage.prompt_tokens == 9 and answer.usage.total_tokens == 9
    assert raw_resp.headers["x-chatvault-model"] == "emb-test"
    assert raw_resp.headers["x-chatvault-instance"] == client.instance_id
    sent = fake.requests()[-1]
    assert sent["path"] == "/v1/embeddings" and sent["body"]["input"] == inputs
    assert sent["body"]["model"] == "text-embedding-3-small"
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"

    (row,) = wait_rows(1)
    assert str(row.request_id) == raw_resp.headers["x-request-id"]
    assert (row.outcome, row.status_code, row.stream, row.user) == (Outcome.OK, 200, False, "u")
    assert (row.requested_model, row.served_model, row.instance_id) == ("emb-test", "emb-test", client.instance_id)
    assert (row.prompt_tokens, row.completion_tokens) == (9, None)
    assert row.cost_usd == 9 * EMBEDDING_PRICE
    assert row.decision["attempts"][0]["outcome"] == "ok"


@live
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_the_encoding_the_client_asks_for_is_the_one_it_gets(client, gateway, encoding):
    body = {"model": "emb-test", "input": "one two", "encoding_format": encoding, "dimensions": 8}
    status, _, payload = gateway.request(
        "POST", "/v1/embeddings", json.dumps(body).encode(), {"Authorization": f"Bearer {client.raw_key}"}
    )
    answer = json.loads(payload)
    assert status == 200 and answer["object"] == "list"
    (item,) = answer["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    assert isinstance(item["embedding"], str if encoding == "base64" else list)
    assert decoded(item["embedding"]) == pytest.approx(embedding_vector("one two", 8), abs=1e-6)


@live
def test_token_id_inputs_are_embedded(client):
    answer = client.embeddings.create(model="emb-test", input=[[1, 2, 3], [4]], encoding_format="float")
    assert [len(item.embedding) for item in answer.data] == [DIMENSIONS, DIMENSIONS]
    assert answer.data[1].embedding == pytest.approx(embedding_vector([4], DIMENSIONS), abs=1e-6)
    assert answer.usage.prompt_tokens == 4


@live
def test_a_client_without_v1_in_its_base_url_gets_embeddings(client, gateway):
    root = openai.OpenAI(base_url=gateway.root_url, api_key=client.raw_key, max_retries=0)
    raw_resp = root.embeddings.with_raw_response.create(model="emb-test", input="hi")
    assert raw_resp.http_request.url.path == "/embeddings"
    assert len(raw_resp.parse().data[0].embedding) == DIMENSIONS


@live
def test_models_lists_embedding_models_beside_chat_models(client, gateway, fake):
    make_model("emb-chat", [fake])
    wait_for_model(gateway, client.raw_key, "emb-chat")
    assert {"emb-test", "emb-chat"} <= {m.id for m in client.models.list()}


@live
def test_a_failed_instance_fails_over_to_another_and_is_blamed(gateway, fake, fake_b, adapter):
    model = make_model("emb-pair", [fake, fake_b], adapter=adapter, litellm_model=EMBEDDING_MODEL, mode="embedding")
    raw = make_key()
    wait_for_model(gateway, raw, "emb-pair")
    fake.set_config(status=503)
    sdk = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    for _ in range(2):  # round-robin starts one of them on the failing fake
        assert len(sdk.embeddings.create(model="emb-pair", input="hi").data) == 1

    failed_over = [r for r in wait_rows(2) if r.attempts == 2]
    assert len(failed_over) == 1
    row = failed_over[0]
    assert row.instance_id == model.instance_ids[1] and row.outcome == Outcome.OK
    assert [a["outcome"] for a in row.decision["attempts"]] == ["status", "ok"]


@live
def test_a_misconfigured_instance_is_caught_and_its_breaker_says_why(gateway, fake, fake_b, adapter):
    model = make_model("emb-miscfg", [fake, fake_b], adapter=adapter, litellm_model=EMBEDDING_MODEL, mode="embedding")
    raw = make_key()
    wait_for_model(gateway, raw, "emb-miscfg")
    fake.set_config(reject="invalid_model")
    sdk = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    for _ in range(12):
        assert len(sdk.embeddings.create(model="emb-miscfg", input="hi").data) == 1, "every request is served"

    instances = instance_stats(gateway)
    bad = instances[model.instance_ids[0]]
    assert bad["state"] == "open" and "Invalid model name" in bad["reason"]
    assert instances[model.instance_ids[1]]["state"] == "closed"


@live
@pytest.mark.parametrize(
    "upstream_status, sdk_error, status",
    [(400, openai.BadRequestError, 400), (429, openai.RateLimitError, 429), (500, openai.InternalServerError, 502)],
)
def test_upstream_errors_map_like_chat(client, fake, upstream_status, sdk_error, status):
    fake.set_config(status=upstream_status)
    with pytest.raises(sdk_error) as exc:
        client.embeddings.create(model="emb-test", input="hi")
    assert exc.value.status_code == status
    (row,) = wait_rows(1)
    assert row.status_code == status and row.outcome != Outcome.OK


@live
def test_a_chat_model_is_a_400_saying_where_it_belongs_and_no_upstream_is_called(gateway, fake):
    make_model("emb-not", [fake])
    raw = make_key()
    wait_for_model(gateway, raw, "emb-not")
    sdk = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.embeddings.create(model="emb-not", input="hi")
    assert (exc.value.body["param"], exc.value.body["code"]) == ("model", "wrong_endpoint")
    assert "/v1/chat/completions" in exc.value.body["message"]
    assert fake.requests() == []
    (row,) = wait_rows(1)
    assert (row.status_code, row.error_type, row.requested_model) == (400, "wrong_endpoint", "emb-not")


@live
def test_an_embedding_model_is_never_a_chat_model(client, gateway, fake):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="emb-test", messages=MESSAGES)
    assert exc.value.body["code"] == "wrong_endpoint" and "/v1/embeddings" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="emb-test", prompt="hi")
    assert exc.value.body["code"] == "wrong_endpoint"
    # Automatic selection never picks it, even when it is the only model the key may use.
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="auto", messages=MESSAGES)
    assert exc.value.status_code in (400, 503) and "emb-test" not in json.dumps(exc.value.body.get("message"))
    assert fake.requests() == []


@live
@pytest.mark.parametrize(
    "body, param",
    [({"model": "emb-test"}, "input"), ({"model": "emb-test", "input": "x", "dimensions": -1}, "dimensions"),
     ({"model": "auto", "input": "x"}, "model"), ({"model": "nope", "input": "x"}, "model")],
)  # fmt: skip
def test_bad_requests_are_answered_in_openai_shape_and_logged(client, gateway, fake, body, param):
    status, _, payload = gateway.request(
        "POST", "/v1/embeddings", json.dumps(body).encode(), {"Authorization": f"Bearer {client.raw_key}"}
    )
    error = json.loads(payload)["error"]
    assert status in (400, 404) and error["param"] == param and error["type"] == "invalid_request_error"
    assert fake.requests() == []
    (row,) = wait_rows(1)
    assert row.status_code == status and row.outcome == Outcome.CLIENT_ERROR
