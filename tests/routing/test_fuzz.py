"""Property-based fuzzing of the API through the real server (Hypothesis).

Requests are generated from the shape of the chat request (model, messages with roles and content parts, stream,
stream_options, user, sampling fields, tools) and then mutated: fields dropped, retyped or nested, hostile strings
(NUL, lone surrogates, huge numbers), bytes flipped or cut, odd headers and query strings, other paths and methods.
Whatever arrives, the gateway must answer without a 5xx (the fake upstream is healthy, so no 5xx is a real upstream
fault), in OpenAI's error shape, with an `x-request-id`, and write exactly one RequestLog row per authenticated
request and none for the rest.
"""

import http.client
import json
import urllib.parse
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.models import RequestLog
from tests.factories import make_key, make_model, wait_for_model
from tests.gateway import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = 5000
MODEL = "vault-fuzz"
ROLES = ["system", "developer", "user", "assistant", "tool", "function"]

hostile_text = st.sampled_from(
    ["", "\x00", "\ud800", "\udfff", "a\x00b", "é", "𝄞", "\\u0000", "%00", "💥" * 50, "x" * 3000]
)
text = st.one_of(st.text(max_size=40), hostile_text)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, -1, 2**31, 2**63]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(text, children, max_size=4)),
    max_leaves=12,
)

content_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": text})}),
    json_values,
)
message = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(ROLES), json_values)},
    optional={
        "content": st.one_of(text, st.lists(content_part, max_size=3), json_values),
        "name": text,
        "tool_call_id": text,
    },
)
tool = st.fixed_dictionaries(
    {"type": st.just("function"), "function": st.fixed_dictionaries({"name": text, "parameters": json_values})}
)
chat_body = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just(MODEL), st.just(MODEL), st.just("auto"), text, json_values),
        "messages": st.one_of(st.lists(message, min_size=1, max_size=3), st.lists(message, max_size=3), json_values),
        "stream": st.one_of(st.booleans(), json_values),
        "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), json_values),
        "user": st.one_of(text, json_values),
        "temperature": st.one_of(numbers, json_values),
        "max_tokens": st.one_of(st.integers(min_value=-5, max_value=50), numbers, json_values),
        "tools": st.one_of(st.lists(tool, max_size=2), json_values),
        "response_format": st.one_of(st.just({"type": "json_object"}), json_values),
        "api_key": text,
        "metadata": json_values,
        "limit": st.one_of(st.integers(min_value=-3, max_value=200), json_values),
    },
)


@st.composite
def body_bytes(draw):
    """Return a request body: a generated chat body, serialised and maybe mutated at the byte level."""
    body = draw(chat_body)
    if draw(st.booleans()):  # a valid request, so the served paths are fuzzed too
        body.setdefault("model", MODEL)
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
    raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    mutation = draw(st.sampled_from(["none", "none", "none", "flip", "cut", "junk", "nest", "other"]))
    if mutation == "flip" and raw:
        index = draw(st.integers(0, len(raw) - 1))
        raw = raw[:index] + bytes([draw(st.integers(0, 255))]) + raw[index + 1 :]
    elif mutation == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif mutation == "junk":
        raw = draw(st.binary(max_size=64))
    elif mutation == "nest":
        depth = draw(st.integers(100, 5000))
        raw = b'{"model": "vault-fuzz", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    elif mutation == "other":
        raw = json.dumps(draw(json_values)).encode("utf-8", "surrogatepass")
    return raw


# Valid HTTP only (field-vchar, obs-text): the server itself refuses anything else before the application sees it.
header_value = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=40)
query = st.lists(st.tuples(text, text), max_size=6).map(
    lambda pairs: urllib.parse.urlencode([(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass"))
                                          for k, v in pairs])  # fmt: skip
)
path = st.one_of(
    st.just("/v1/chat/completions"),
    st.just("/v1/chat/completions"),
    st.just("/v1/chat/completions"),
    st.just("/v1/models"),
    st.just("/v1/models/recommend"),
    st.builds(lambda t: "/v1/models/" + urllib.parse.quote(t.encode("utf-8", "surrogatepass"), safe=""), text),
    st.sampled_from(["/v1/", "/v1/embeddings", "/v1/chat", "/healthz", "/v1/chat/completions/", "/v1/models/"]),
)


@st.composite
def requests(draw):
    """Return (method, path with query, body, headers, authenticated)."""
    chosen = draw(path)
    if chosen.startswith("/v1/models") and chosen != "/v1/models/recommend" or chosen == "/healthz":
        method = draw(st.sampled_from(["GET"] * 5 + ["POST", "OPTIONS", "HEAD"]))
    else:
        method = draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    qs = draw(st.one_of(st.just(""), query))
    auth = draw(st.sampled_from(["valid"] * 6 + ["none", "wrong", "garbage"]))
    headers = {}
    if auth == "valid":
        headers["Authorization"] = "Bearer {key}"
    elif auth == "wrong":
        headers["Authorization"] = "Bearer cv-not-a-key"
    elif auth == "garbage":
        headers["Authorization"] = draw(header_value)
    headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "", "multipart/form-data"]))
    names = ["Accept", "Accept-Encoding", "X-Chatvault-Session", "X-Forwarded-For", "Content-Language", "User-Agent"]
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        headers[name] = draw(st.one_of(header_value, st.sampled_from(["text/event-stream", "text/html"])))
    body = draw(body_bytes()) if method in ("POST", "PUT", "PATCH") else b""
    return method, chosen + (f"?{qs}" if qs else ""), body, headers


class Client:
    """A keep-alive HTTP/1.1 connection to the gateway that reconnects when the server closes it."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def send(self, method, target, body, headers):
        """Return (status, headers, body) for one request."""
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, target, body=body or None, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            if resp.will_close:
                self.conn.close()
                self.conn = None
            return resp.status, resp.headers, data
        raise AssertionError("unreachable")


def expects_row(method, target, valid_key):
    """Return whether the gateway must log this request: the valid key on a model route, with its method."""
    route = target.split("?", 1)[0]
    if not valid_key:
        return False
    if route in ("/v1/chat/completions", "/v1/models/recommend", "/v1/embeddings"):
        return method == "POST"
    # Django's <path:…> converter does not match a newline: such an id has no route, so nothing authenticates it.
    detail = route.startswith("/v1/models/") and len(route) > 11 and "\n" not in urllib.parse.unquote(route)
    return (route == "/v1/models" or detail) and method in ("GET", "HEAD")


def test_fuzzed_requests_never_get_a_5xx_and_each_authenticated_one_gets_one_row(gateway, fake):
    make_model(MODEL, [fake])
    raw_key = make_key(name="fuzz")
    wait_for_model(gateway, raw_key, MODEL)
    client = Client(gateway.port)
    seen = {"logged": set(), "not_logged": set(), "statuses": {}, "requests": {}}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(requests())
    def check(request):
        method, target, body, headers = request
        headers = {k: v.replace("{key}", raw_key) for k, v in headers.items()}
        status, answer_headers, answer = client.send(method, target, body, headers)
        seen["statuses"][status] = seen["statuses"].get(status, 0) + 1
        request_id = uuid.UUID(answer_headers["x-request-id"])
        assert status < 500, (status, answer[:300], request)
        if status >= 400 and method != "HEAD":
            error = json.loads(answer)["error"]
            assert set(error) == {"message", "type", "param", "code"}, answer
        valid_key = headers.get("Authorization") == f"Bearer {raw_key}"
        seen["logged" if expects_row(method, target, valid_key) else "not_logged"].add(request_id)
        seen["requests"][request_id] = (status, method, target[:200], body[:200])

    check()
    sent = sum(seen["statuses"].values())
    print(f"fuzz: {sent} requests, statuses {dict(sorted(seen['statuses'].items()))}, {len(seen['logged'])} logged")
    assert sent >= EXAMPLES
    assert seen["statuses"].get(200, 0) > EXAMPLES // 20, "enough valid requests reached the upstream"
    def logged():
        return set(RequestLog.objects.filter(api_key__name="fuzz").values_list("request_id", flat=True))

    try:  # a stream's row is queued as its generator closes, just after the client has read the last byte
        wait_until(lambda: seen["logged"] <= logged(), timeout=15, message="every row")
    except AssertionError:
        pass  # reported below, with the requests
    rows = logged()
    missing = [seen["requests"][i] for i in seen["logged"] - rows]
    assert not missing, f"authenticated requests without a row: {missing[:5]}"
    assert not rows & seen["not_logged"], "a row for a request that was not authenticated"
    assert gateway.health()["request_log"]["dropped"] == 0
