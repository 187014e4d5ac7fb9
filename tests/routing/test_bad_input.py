"""Client input never causes a 5xx: each case below gave a 500 once. Every answer is in OpenAI's error shape (or a
success), carries an x-request-id, and an authenticated request still gets exactly one row."""

import json
import uuid

import pytest

from routing.models import RequestLog
from tests.factories import make_key, make_model, wait_for_model
from tests.gateway import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def auth(gateway, fake):
    """Return headers with a key that may use `vault-bad`, served by the fake."""
    make_model("vault-bad", [fake])
    raw = make_key(name="bad-input")
    wait_for_model(gateway, raw, "vault-bad")
    return {"Authorization": f"Bearer {raw}", "Content-Type": "application/json"}


def _body(model="vault-bad", **fields):
    return json.dumps({"model": model, "messages": HELLO, **fields}).encode()


CASES = {
    "json nested 990 deep": ("POST", "/v1/chat/completions", b"[" * 990 + b"]" * 990, {}),
    "json nested 100000 deep": ("POST", "/v1/chat/completions", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {}),
    "deep inside a valid body": ("POST", "/v1/chat/completions", _body(metadata=json.loads("[" * 200 + "]" * 200)), {}),
    "role is a list": ("POST", "/v1/chat/completions",
                       json.dumps({"model": "vault-bad", "messages": [{"role": ["user"], "content": "x"}]}).encode(),
                       {}),
    "role is an object": ("POST", "/v1/chat/completions",
                          json.dumps({"model": "vault-bad", "messages": [{"role": {}, "content": "x"}]}).encode(), {}),
    "accept event-stream": ("POST", "/v1/chat/completions", _body(), {"Accept": "text/event-stream"}),
    "accept html": ("POST", "/v1/chat/completions", _body(), {"Accept": "text/html"}),
    "accept nonsense": ("POST", "/v1/chat/completions", _body(), {"Accept": "application/x-nothing;q=2"}),
    "format=api": ("POST", "/v1/chat/completions?format=api", _body(), {}),
    "format=json models": ("GET", "/v1/models?format=yaml", None, {}),
    "5000 query parameters": ("POST", "/v1/chat/completions?" + "&".join(f"p{i}=1" for i in range(5000)), _body(), {}),
    "5000 query parameters on models": ("GET", "/v1/models?" + "&".join(f"p{i}=1" for i in range(5000)), None, {}),
    "model is a number": ("POST", "/v1/chat/completions", _body(model=5), {}),
    "messages is a string": ("POST", "/v1/chat/completions", json.dumps({"model": "x", "messages": "hi"}).encode(), {}),
    "not utf-8": ("POST", "/v1/chat/completions", b'{"model": "\xff\xfe"}', {}),
    "body is a number": ("POST", "/v1/chat/completions", b"12", {}),
    "empty body": ("POST", "/v1/chat/completions", b"", {}),
    "stream_options a list": ("POST", "/v1/chat/completions", _body(stream=True, stream_options=[1]), {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_it_answers_bad_input_with_a_4xx_in_openai_shape_and_one_row(gateway, auth, name):
    method, path, body, headers = CASES[name]
    status, answer_headers, answer = gateway.request(method, path, body, {**auth, **headers})
    assert status < 500, answer
    assert uuid.UUID(answer_headers["x-request-id"])
    data = json.loads(answer)
    if status >= 400:
        assert set(data["error"]) == {"message", "type", "param", "code"}
    request_id = uuid.UUID(answer_headers["x-request-id"])
    wait_until(lambda: RequestLog.objects.filter(request_id=request_id).exists(), message="the request's row")
