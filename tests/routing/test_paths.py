"""Every public route with and without `/v1` (chatvault_site/urls.py), as LiteLLM serves them: the official `openai`
SDK configured with a base URL without `/v1` gets the same answers, auth, log rows and errors; unknown paths that
look like API calls answer in OpenAI's shape, others keep Django's page."""

import json

import openai
import pytest

from routing.models import RequestLog
from tests.factories import make_key, make_model, wait_for_model
from tests.gateway import wait_until
from tests.helpers import MESSAGES, wait_rows

pytestmark = pytest.mark.django_db(transaction=True)

FAKE_TEXT = "".join(f"fake{i} " for i in range(20))


@pytest.fixture
def served(gateway, fake):
    """Return (root client, /v1 client, raw key) for a model `paths-test` served by the fake."""
    make_model("paths-test", [fake])
    raw = make_key()
    wait_for_model(gateway, raw, "paths-test")
    root = openai.OpenAI(base_url=gateway.root_url, api_key=raw, max_retries=0)
    v1 = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    return root, v1, raw


def test_a_client_without_v1_in_its_base_url_gets_chat_completions(served, fake):
    root, _, _ = served
    raw_resp = root.chat.completions.with_raw_response.create(model="paths-test", messages=MESSAGES)
    assert raw_resp.parse().choices[0].message.content == FAKE_TEXT
    assert raw_resp.http_request.url.path == "/chat/completions"
    assert raw_resp.headers["x-chatvault-model"] == "paths-test"
    streamed = root.chat.completions.create(model="paths-test", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == FAKE_TEXT

    first, second = wait_rows(2)
    assert str(first.request_id) == raw_resp.headers["x-request-id"]
    assert (first.served_model, first.stream, second.stream) == ("paths-test", False, True)


def test_a_client_without_v1_gets_legacy_completions(served):
    root, _, _ = served
    raw_resp = root.completions.with_raw_response.create(model="paths-test", prompt="hi")
    assert raw_resp.parse().choices[0].text == FAKE_TEXT
    assert raw_resp.http_request.url.path == "/completions"
    wait_until(lambda: RequestLog.objects.filter(endpoint="completions").count() == 1, message="completion row")


def test_models_answer_the_same_with_and_without_v1(served):
    root, v1, _ = served
    assert root.models.list().model_dump() == v1.models.list().model_dump()
    assert root.models.retrieve("paths-test") == v1.models.retrieve("paths-test")
    with pytest.raises(openai.NotFoundError) as exc:
        root.models.retrieve("no-such-model")
    assert exc.value.body["code"] == "model_not_found"


def test_recommend_and_feedback_answer_without_v1(served, gateway):
    root, _, raw = served
    headers = {"Authorization": f"Bearer {raw}", "Content-Type": "application/json"}
    body = json.dumps({"messages": MESSAGES}).encode()
    statuses = {
        path: gateway.request("POST", path, body, headers)[0] for path in ("/models/recommend", "/v1/models/recommend")
    }
    assert statuses == {"/models/recommend": 200, "/v1/models/recommend": 200}

    served_id = root.chat.completions.with_raw_response.create(model="paths-test", messages=MESSAGES).headers[
        "x-request-id"
    ]
    wait_rows(1)
    rating = json.dumps({"request_id": served_id, "score": 1}).encode()
    status, _, answer = gateway.request("POST", "/feedback", rating, headers)
    assert status == 200 and json.loads(answer)["request_id"] == served_id


def test_errors_without_v1_are_the_same_as_with_it(served, gateway):
    root, _, _ = served
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.root_url, api_key="cv-wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as exc:
        root.chat.completions.create(model="paths-test", messages=[])
    assert exc.value.body["param"] == "messages"
    status, _, answer = gateway.request("GET", "/chat/completions")
    assert status == 405 and json.loads(answer)["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "method, path, headers",
    [
        ("POST", "/audio/speech", {}),  # an OpenAI route the gateway does not serve
        ("GET", "/images/generations", {}),
        ("GET", "/anything", {"Authorization": "Bearer cv-x"}),  # browsers send no bearer key
        ("POST", "/anything", {"Content-Type": "application/json"}),
    ],
)
def test_an_unknown_path_that_looks_like_an_api_call_is_a_404_in_openai_shape(gateway, method, path, headers):
    status, answer_headers, answer = gateway.request(method, path, b"{}" if method == "POST" else None, headers)
    assert status == 404 and answer_headers["content-type"] == "application/json"
    assert json.loads(answer)["error"]["code"] == "not_found"


def test_an_sdk_call_to_a_route_the_gateway_lacks_is_a_not_found_error(served):
    root, _, _ = served
    with pytest.raises(openai.NotFoundError) as exc:
        root.images.generate(model="paths-test", prompt="a cat")
    assert exc.value.body["code"] == "not_found"


def test_other_unknown_paths_keep_djangos_page(gateway):
    status, headers, _ = gateway.request("GET", "/favicon.ico")
    assert status == 404 and headers["content-type"].startswith("text/html")
