"""Which handler serves which path (`chatvault_site.handlers.is_api_path`): only the listed lean routes skip Django's
per-request housekeeping; everything else, a new endpoint included, runs on Django's handler."""

import json
import re

import pytest
from django.urls import URLPattern, get_resolver, resolve

from chatvault_site.handlers import LEAN_PATHS, is_api_path
from experiments.api import FeedbackView
from routing import api

LEAN = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/vault-test",
    "/v1/models/openai/gpt-4o-mini",
    "/v1/models/recommend",
    "/v1/feedback",
    "/healthz",
]
# Each public route is served without /v1 too, on the same lean handler.
LEAN += [path.removeprefix("/v1") for path in LEAN if path.startswith("/v1/")]
NOT_LEAN = [
    "/v1/admin/load-balancer/stats",
    "/v1/admin/anything-new",
    "/v1/new-endpoint",
    "/v1/chat/completions/",
    "/chat/completions/",
    "/v1/completions/",
    "/v1/modelsx",
    "/modelsx",
    "/images/generations",
    "/feedback/",
    "/v1/",
    "/healthz/",
    "/admin/",
    "/static/admin/css/base.css",
]
# The views made lean on purpose: async, authenticated from the snapshot, no database on the event loop's thread
# (feedback reads on threads of its own). Add one only after checking that.
LEAN_VIEWS = {
    api.ChatCompletionsView,
    api.CompletionsView,
    api.EmbeddingsView,
    api.ModelsView,
    api.ModelDetailView,
    api.RecommendView,
    FeedbackView,
}


@pytest.mark.parametrize("path", LEAN)
def test_each_lean_route_is_served_by_the_lean_handler(path):
    assert is_api_path(path)


@pytest.mark.parametrize("path", NOT_LEAN)
def test_other_paths_are_served_by_django(path):
    assert not is_api_path(path)


@pytest.mark.parametrize("path", sorted(LEAN_PATHS) + ["/v1/models/vault-test", "/models/vault-test"])
def test_the_lean_routes_are_the_views_that_never_use_the_database(path):
    match = resolve(path)
    assert getattr(match.func, "view_class", None) in LEAN_VIEWS or match.func is api.healthz


def test_every_route_the_lean_handler_serves_is_a_lean_view():
    """A route added under a lean pattern (`/v1/models/<model>`) would be lean by accident: it must be declared."""
    for pattern in get_resolver().url_patterns:
        if not isinstance(pattern, URLPattern):
            continue  # the admin's include: never lean
        path = "/" + re.sub(r"<(?:\w+:)?\w+>", "x", str(pattern.pattern))
        if is_api_path(path):
            view = getattr(pattern.callback, "view_class", pattern.callback)
            assert view in LEAN_VIEWS or view is api.healthz, f"{path} is served lean by {view.__name__}"


# Django's full middleware stack marks every answer with X-Frame-Options; the lean handler's own chain does not.
DJANGO_MARK = "X-Frame-Options"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/v1/chat/completions"),
        ("POST", "/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/embeddings"),
        ("GET", "/v1/models"),
        ("GET", "/models"),
        ("GET", "/v1/models/vault-test"),
        ("GET", "/models/vault-test"),
        ("POST", "/models/recommend"),
        ("POST", "/v1/feedback"),
        ("POST", "/feedback"),
        ("GET", "/healthz"),
    ],
)
def test_the_lean_routes_answer_without_djangos_middleware(gateway, method, path):
    status, headers, _ = gateway.request(method, path, body=b"{}" if method == "POST" else None)
    assert status in (200, 401) and headers["x-request-id"]
    assert DJANGO_MARK not in headers


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path, lean",
    [
        ("/v1/new-endpoint", False),
        ("/v1/admin/nothing-here", False),
        ("/v1/models/", True),
        ("/models/", True),
        ("/images/generations", False),
    ],
)
def test_unknown_api_paths_answer_404_in_openai_shape_on_either_handler(gateway, path, lean):
    status, headers, body = gateway.request("GET", path)
    assert status == 404 and headers["x-request-id"]
    assert json.loads(body)["error"]["code"] == "not_found"
    assert (DJANGO_MARK not in headers) == lean


@pytest.mark.django_db(transaction=True)
def test_the_operator_endpoints_run_on_djangos_handler(gateway):
    status, headers, body = gateway.request("GET", "/v1/admin/load-balancer/stats")
    assert status == 401 and json.loads(body)["error"]
    assert DJANGO_MARK in headers
