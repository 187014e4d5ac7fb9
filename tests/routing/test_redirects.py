"""Upstream redirects are never followed: a 3xx is an upstream failure, and the host it points to hears nothing.

Following a 307 would replay the client's request, with the gateway's upstream key, to whatever host the upstream
names. Every test runs through the pass-through and through litellm, whose OpenAI-compatible calls take two roads:
the openai SDK (`openai/…`) and litellm's own HTTP handler (`hosted_vllm/…` and most other providers).
"""

import itertools
from http.server import BaseHTTPRequestHandler

import openai
import pytest

from routing.models import Outcome
from routing.probes import instance_probe
from tests.factories import make_key, make_model, wait_for_model, wait_until_open
from tests.helpers import MESSAGES, local_http_server, wait_rows

pytestmark = pytest.mark.django_db(transaction=True)

ROADS = {
    "passthrough": ("passthrough", "openai/gpt-4o-mini"),
    "litellm-openai-sdk": ("litellm", "openai/gpt-4o-mini"),
    "litellm-http-handler": ("litellm", "hosted_vllm/fake-model"),
}


_names = itertools.count()


@pytest.fixture(params=list(ROADS))
def road(request):
    """Return the make_model arguments of the adapter (and litellm road) under test."""
    adapter, litellm_model = ROADS[request.param]
    return {"adapter": adapter, "litellm_model": litellm_model}


@pytest.fixture
def name():
    """Return a fresh model name: the long-lived gateway keeps each model's rotation and retry budget."""
    return f"vault-redirect-{next(_names)}"


def redirect_to_elsewhere(fake, fake_b):
    """Make `fake` answer chat requests with a 307 to `fake_b`, at a path only a followed redirect would reach."""
    fake.set_config(redirect_to=f"{fake_b.root_url}/chat/completions")


def followed(fake_b):
    """Return the requests `fake_b` received through a followed redirect."""
    return [r for r in fake_b.requests() if r["path"] == "/chat/completions"]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_redirect_is_an_upstream_error_and_its_target_hears_nothing(gateway, fake, fake_b, road, name, stream):
    model = make_model(name, [fake], **road)
    raw = make_key()
    wait_for_model(gateway, raw, name)
    redirect_to_elsewhere(fake, fake_b)
    client = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)

    with pytest.raises(openai.APIStatusError) as exc:
        if stream:
            list(client.chat.completions.create(model=name, messages=MESSAGES, stream=True))
        else:
            client.chat.completions.create(model=name, messages=MESSAGES)

    assert exc.value.status_code == 502
    assert set(exc.value.response.json()["error"]) == {"message", "type", "param", "code"}
    assert len(fake.requests()) == 1
    assert fake_b.requests() == [], "the redirect was not followed"
    (row,) = wait_rows(1)
    assert row.outcome == Outcome.UPSTREAM_ERROR
    assert row.decision["attempts"] == [
        {"instance": model.instance_ids[0], "outcome": "status", "status": 307, "ms": row.decision["attempts"][0]["ms"]}
    ]


def test_a_redirecting_instance_fails_over_and_its_breaker_opens_like_on_a_5xx(gateway, fake, fake_b, road, name):
    model = make_model(name, [fake, fake_b], **road)
    redirecting, healthy = model.instance_ids
    raw = make_key()
    wait_for_model(gateway, raw, name)
    redirect_to_elsewhere(fake, fake_b)
    client = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)

    served = []
    for _ in range(12):
        resp = client.chat.completions.with_raw_response.create(model=name, messages=MESSAGES)
        served.append(resp.headers["x-chatvault-instance"])

    assert set(served) == {healthy}, "every request was served, none by the redirecting instance"
    assert len(fake.requests()) == 5, "five redirects in a row opened its breaker, as five 5xx would"
    wait_until_open(gateway, redirecting)
    assert len(fake_b.requests()) == 12 and followed(fake_b) == []
    rows = wait_rows(12)
    assert {r.outcome for r in rows} == {Outcome.OK}
    failed_over = [r.decision["attempts"] for r in rows if r.attempts == 2]
    assert len(failed_over) == 5
    assert [(a["instance"], a["status"]) for a in failed_over[0]] == [(redirecting, 307), (healthy, 200)]


class _RedirectingHandler(BaseHTTPRequestHandler):
    """Answer every request under /v1 with a 307 to the same path under /elsewhere, recording every path asked."""

    def _redirect(self):
        self.server.seen.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.startswith("/v1/"):
            self.send_response(307)
            self.send_header("Location", f"/elsewhere{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"object": "list", "data": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _redirect

    def log_message(self, *args):
        pass


@pytest.fixture
def redirecting_upstream():
    """Return a local HTTP server that redirects everything under /v1; `.seen` lists the paths it was asked for."""
    with local_http_server(_RedirectingHandler, seen=[]) as server:
        yield server


def test_a_probe_does_not_follow_a_redirect(redirecting_upstream, road, name):
    (instance_id,) = make_model(name, [redirecting_upstream], **road).instance_ids

    probe = instance_probe(instance_id=instance_id)

    assert not probe.ok and probe.status_code == 307
    assert len(redirecting_upstream.seen) == 1, redirecting_upstream.seen
    assert not redirecting_upstream.seen[0].startswith("/elsewhere")
