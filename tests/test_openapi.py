"""The API's description (`routing/openapi.py`, `routing/openapi.yaml`): a valid OpenAPI 3.1 document that names every
/v1/ route and method, served at /v1/openapi.json and rendered at /docs/ from this gateway's own files; and true —
real answers of a live gateway (bodies, stream events, errors and x- headers) match what it says.
"""

import json
import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from routing.openapi import document
from tests.factories import make_experiment, make_key, make_model, wait_for_model, wait_for_reload
from tests.helpers import MESSAGES

pytestmark = pytest.mark.django_db(transaction=True)

METHODS = ("get", "post", "put", "patch", "delete")
# Headers Django's security middleware adds to pages of its full handler; not the API's own.
GENERIC_HEADERS = {"x-frame-options", "x-content-type-options"}


# --- the document --------------------------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1():
    doc = document()

    validate_spec(doc)
    assert doc["openapi"].startswith("3.1.")


def url_routes(patterns=None, prefix=""):
    """Yield (route, view) for every URL pattern, includes walked, e.g. ("v1/models/<path:model>", view)."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            yield from url_routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.callback


def view_methods(view):
    """Return the HTTP methods a view serves: a class-based view's handlers; GET for a function view."""
    view_class = getattr(view, "view_class", None)
    if view_class is None:
        return {"get"}
    return {method for method in METHODS if hasattr(view_class, method)}


def v1_routes():
    """Return {OpenAPI path: methods} of every /v1/ URL pattern."""
    found = {}
    for route, view in url_routes():
        if route.startswith("v1/"):
            path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
            found.setdefault(path, set()).update(view_methods(view))
    return found


def test_every_v1_route_and_method_is_described():
    described = {path: set(operations) & set(METHODS) for path, operations in document()["paths"].items()}
    routes = v1_routes()
    assert "/v1/chat/completions" in routes and "/v1/feedback" in routes  # the walk sees includes too

    missing = {path: methods - described.get(path, set()) for path, methods in routes.items()}

    assert {path: methods for path, methods in missing.items() if methods} == {}


def test_every_described_path_is_served():
    for path, operations in document()["paths"].items():
        match = resolve(re.sub(r"\{\w+\}", "an-id", path))
        for method in set(operations) & set(METHODS):
            assert method in view_methods(match.func), f"{method.upper()} {path} is described but not served"


# --- serving it ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/openapi.json", "/openapi.json"])
def test_the_document_is_served_as_json_without_a_key(gateway, path):
    status, headers, body = gateway.request("GET", path)

    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == document()


STATIC_REFERENCE = re.compile(r'(?:src|href)="([^"]+)"')


def test_the_docs_page_loads_only_files_this_gateway_serves(gateway):
    status, headers, body = gateway.request("GET", "/docs/")
    page = body.decode()

    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    references = STATIC_REFERENCE.findall(page)
    assert "/v1/openapi.json" in references  # the <noscript> link
    assets = [ref for ref in references if ref != "/v1/openapi.json"]
    assert any(ref.endswith("/swagger-ui-bundle.js") for ref in assets)
    assert 'data-schema-url="/v1/openapi.json"' in page
    for ref in assets:
        assert ref.startswith("/static/"), f"{ref} is not one of this gateway's files"
        asset_status, _, asset = gateway.request("GET", ref)
        assert asset_status == 200 and asset, ref


def test_the_docs_page_renders_every_operation_in_a_browser_without_another_host(browser, gateway):
    from selenium.webdriver.common.by import By

    browser.get(f"{gateway.root_url}/docs/")
    browser.find_element(By.CSS_SELECTOR, '.opblock[id$="createChatCompletion"]')
    shown = {element.get_attribute("data-path") for element in browser.find_elements(By.CSS_SELECTOR, "[data-path]")}
    browser.save_screenshot("/tmp/chatvault-api-docs.png")
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")

    assert shown == set(document()["paths"])
    assert fetched and all(url.startswith(gateway.root_url + "/") for url in fetched), fetched


# --- what it says is true: real answers against the schemas -------------------------------------------------------


def resolved(value):
    """Return value, or what its top-level `$ref` ("#/components/...") points to in the document."""
    while "$ref" in value:
        target = document()
        for part in value["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        value = target
    return value


def validate(instance, schema):
    """Raise unless instance matches schema (which may refer to the document's components)."""
    OAS31Validator({**schema, "components": document()["components"]}).validate(instance)


def component(name):
    """Return a schema of the document's components, as a reference to it."""
    return {"$ref": f"#/components/schemas/{name}"}


def check_request(path, method, body):
    """Raise unless body matches the operation's request body schema: the schema must allow what the gateway takes."""
    operation = document()["paths"][path][method]
    validate(body, operation["requestBody"]["content"]["application/json"]["schema"])


def check_answer(path, method, answer, *, sent=None):
    """Check a (status, headers, body) answer against the operation: its status and content type are described,
    a JSON body matches the schema, required headers are there, and every x- header sent is described. Return the
    parsed JSON body (or the body for other content types)."""
    status, headers, body = answer
    operation = document()["paths"][path][method]
    if sent is not None:
        check_request(path, method, sent)
    assert str(status) in operation["responses"], f"{method.upper()} {path} answered an undescribed {status}: {body}"
    response = resolved(operation["responses"][str(status)])
    described = {name.lower(): resolved(header) for name, header in response.get("headers", {}).items()}
    for name, header in described.items():
        if header.get("required"):
            assert headers.get(name), f"{name} missing from {method.upper()} {path} {status}"
    sent_x = {name.lower() for name in headers if name.lower().startswith("x-")} - GENERIC_HEADERS
    assert sent_x <= set(described), f"undescribed headers on {method.upper()} {path} {status}: {sent_x}"
    content_type = headers["Content-Type"].split(";")[0]
    assert content_type in response["content"], f"{method.upper()} {path} {status} answered {content_type}"
    if content_type != "application/json":
        return body
    parsed = json.loads(body)
    validate(parsed, response["content"][content_type]["schema"])
    return parsed


def sse_events(body):
    """Return the JSON data of each SSE event of a stream (the closing [DONE] left out)."""
    events = [e.removeprefix("data: ") for e in body.decode().split("\n\n") if e.strip()]
    return [json.loads(event) for event in events if event != "[DONE]"]


def call(gateway, method, path, key=None, body=None):
    """Return (status, headers, body) of one request, JSON body sent as such."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    return gateway.request(method.upper(), path, body=data, headers=headers)


@pytest.fixture
def served(gateway, fake):
    """Return (gateway, key, model name): a chat model on the fake provider, ready to serve."""
    make_model("doc-chat", [fake])
    key = make_key("docs", is_admin=True)
    wait_for_model(gateway, key, "doc-chat")
    return gateway, key, "doc-chat"


def test_chat_answers_match_the_description(served):
    gateway, key, model = served
    path = "/v1/chat/completions"
    plain = {"model": model, "messages": MESSAGES}
    streamed = {**plain, "stream": True, "stream_options": {"include_usage": True}}

    completion = check_answer(path, "post", call(gateway, "post", path, key, plain), sent=plain)
    stream = check_answer(path, "post", call(gateway, "post", path, key, streamed), sent=streamed)

    assert completion["choices"][0]["message"]["content"]
    assert stream.endswith(b"data: [DONE]\n\n")
    chunks = sse_events(stream)
    for chunk in chunks:
        validate(chunk, component("ChatCompletionChunk"))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_a_stream_that_fails_after_it_started_ends_with_the_described_error_event(served, fake):
    gateway, key, model = served
    fake.set_config(fault="midstream_error")
    path = "/v1/chat/completions"
    body = {"model": model, "messages": MESSAGES, "stream": True}

    stream = check_answer(path, "post", call(gateway, "post", path, key, body), sent=body)

    *chunks, last = sse_events(stream)
    assert chunks and "error" in last
    for chunk in chunks:
        validate(chunk, component("ChatCompletionChunk"))
    validate(last, component("StreamError"))


def test_the_selection_and_experiment_headers_are_described(served, fake):
    gateway, key, model = served
    other = make_model("doc-chat-b", [fake])
    make_experiment("exp-docs", [other, make_model("doc-chat-c", [fake])])
    wait_for_reload(gateway)
    path = "/v1/chat/completions"
    selected = {"model": "auto", "messages": [{"role": "user", "content": "Write a Python function that sorts."}]}
    enrolled = {"model": "doc-chat-b", "messages": MESSAGES, "user": "someone"}

    _, selected_headers, _ = answer = call(gateway, "post", path, key, selected)
    check_answer(path, "post", answer, sent=selected)
    _, enrolled_headers, _ = answer = call(gateway, "post", path, key, enrolled)
    check_answer(path, "post", answer, sent=enrolled)

    assert selected_headers["x-chatvault-context-type"] and selected_headers["x-chatvault-selection-reason"]
    assert enrolled_headers["x-chatvault-experiment"] == "exp-docs" and enrolled_headers["x-chatvault-variant"]


@pytest.mark.parametrize(
    "key_kind, body, status",
    [
        (None, {"model": "doc-chat", "messages": MESSAGES}, 401),
        ("valid", {"model": "doc-nope", "messages": MESSAGES}, 404),
        ("valid", {"model": "doc-chat", "messages": []}, 400),
        ("valid", {"model": "doc-chat", "messages": MESSAGES, "api_base": "http://127.0.0.1:1"}, 400),
        ("valid", {"model": "doc-chat", "messages": MESSAGES, "upstream_status": 500}, 502),
    ],
    ids=["no-key", "unknown-model", "no-messages", "forbidden-parameter", "upstream-failure"],
)
def test_errors_match_the_description(served, fake, key_kind, body, status):
    gateway, key, _ = served
    path = "/v1/chat/completions"
    if "upstream_status" in body:
        fake.set_config(status=body.pop("upstream_status"))

    answer = call(gateway, "post", path, key if key_kind else None, body)
    error = check_answer(path, "post", answer)

    assert answer[0] == status
    assert error["error"]["message"]


def test_legacy_completions_match_the_description(served):
    gateway, key, model = served
    path = "/v1/completions"
    plain = {"model": model, "prompt": "Say hello", "max_tokens": 8}
    streamed = {**plain, "stream": True}

    completion = check_answer(path, "post", call(gateway, "post", path, key, plain), sent=plain)
    stream = check_answer(path, "post", call(gateway, "post", path, key, streamed), sent=streamed)

    assert completion["object"] == "text_completion"
    for chunk in sse_events(stream):
        validate(chunk, component("Completion"))


def test_embeddings_match_the_description(gateway, fake):
    make_model("doc-embed", [fake], litellm_model="openai/text-embedding-3-small", mode="embedding")
    key = make_key("docs")
    wait_for_model(gateway, key, "doc-embed")
    path = "/v1/embeddings"
    batch = {"model": "doc-embed", "input": ["one", "two"], "dimensions": 8}
    packed = {"model": "doc-embed", "input": [[1, 2, 3]], "encoding_format": "base64"}

    floats = check_answer(path, "post", call(gateway, "post", path, key, batch), sent=batch)
    base64 = check_answer(path, "post", call(gateway, "post", path, key, packed), sent=packed)

    assert [len(item["embedding"]) for item in floats["data"]] == [8, 8]
    assert isinstance(base64["data"][0]["embedding"], str)


def test_models_recommend_and_feedback_match_the_description(served):
    gateway, key, model = served
    recommend = {"messages": [{"role": "user", "content": "Summarise this article."}], "limit": 3}

    listed = check_answer("/v1/models", "get", call(gateway, "get", "/v1/models", key))
    one = check_answer("/v1/models/{model}", "get", call(gateway, "get", f"/v1/models/{model}", key))
    ranked = check_answer(
        "/v1/models/recommend", "post", call(gateway, "post", "/v1/models/recommend", key, recommend), sent=recommend
    )
    _, headers, _ = call(gateway, "post", "/v1/chat/completions", key, {"model": model, "messages": MESSAGES})
    rating = {"request_id": headers["x-request-id"], "score": 1, "comment": "good"}
    given = check_answer("/v1/feedback", "post", call(gateway, "post", "/v1/feedback", key, rating), sent=rating)

    assert model in {m["id"] for m in listed["data"]} and one["id"] == model
    assert ranked["recommendations"][0]["model"] == model
    assert given["request_id"] == headers["x-request-id"] and given["score"] == 1


def test_operator_endpoints_match_the_description(served, fake):
    gateway, key, model = served
    make_experiment("exp-ops", [make_model("doc-ops-a", [fake]), make_model("doc-ops-b", [fake])])
    wait_for_reload(gateway)
    call(gateway, "post", "/v1/chat/completions", key, {"model": model, "messages": MESSAGES})

    balancer = check_answer(
        "/v1/admin/load-balancer/stats", "get", call(gateway, "get", "/v1/admin/load-balancer/stats", key)
    )
    selector = check_answer(
        "/v1/admin/model-selector/stats", "get", call(gateway, "get", "/v1/admin/model-selector/stats?window=1h", key)
    )
    results_path = "/v1/admin/experiments/{experiment_id}/results"
    results = check_answer(results_path, "get", call(gateway, "get", "/v1/admin/experiments/exp-ops/results", key))
    export = check_answer(
        "/v1/admin/experiments/{experiment_id}/requests",
        "get",
        call(gateway, "get", "/v1/admin/experiments/exp-ops/requests?format=jsonl", key),
    )
    missing = check_answer(results_path, "get", call(gateway, "get", "/v1/admin/experiments/nope/results", key))

    assert model in {m["model"] for m in balancer["models"]}
    assert selector["window"]["name"] == "1h" and selector["experiments"][0]["id"] == "exp-ops"
    assert [v["model"] for v in results["variants"]] == ["doc-ops-a", "doc-ops-b"]
    assert export == b""
    assert missing["error"]["code"] == "experiment_not_found"


def test_health_matches_the_description(gateway):
    health = check_answer("/healthz", "get", gateway.request("GET", "/healthz"))

    assert health["status"] == "ok"
