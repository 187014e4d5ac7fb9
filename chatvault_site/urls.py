"""URL routes: the OpenAI-compatible API under /v1/ and at the root, operator endpoints under /v1/admin/, health, the
API's description (/v1/openapi.json, rendered at /docs/) and Django admin.

LiteLLM serves every OpenAI route with and without the `/v1` prefix, and many clients are configured with a base URL
without it, so each public route is served at both (same view, same handler, same log rows). The operator endpoints
stay under `/v1/admin/` only: `/admin/` is Django's admin.
"""

from django.contrib import admin
from django.urls import include, path

from experiments.api import FeedbackView
from routing import admin_api, api, metrics
from routing.openapi import docs, openapi_json


def public(route, view, name):
    """Return the route at /v1/<route> (named) and at /<route> (named with a `-root` suffix)."""
    return [path(f"v1/{route}", view, name=name), path(route, view, name=f"{name}-root")]


urlpatterns = [
    *public("chat/completions", api.ChatCompletionsView.as_view(), "chat-completions"),
    *public("completions", api.CompletionsView.as_view(), "completions"),
    *public("embeddings", api.EmbeddingsView.as_view(), "embeddings"),
    *public("models", api.ModelsView.as_view(), "models"),
    *public("models/recommend", api.RecommendView.as_view(), "models-recommend"),
    *public("models/<path:model>", api.ModelDetailView.as_view(), "model-detail"),
    path("feedback", FeedbackView.as_view(), name="feedback-root"),  # /v1/feedback is in experiments/urls.py
    path("v1/admin/load-balancer/stats", admin_api.LoadBalancerStatsView.as_view(), name="admin-load-balancer-stats"),
    path(
        "v1/admin/model-selector/stats", admin_api.ModelSelectorStatsView.as_view(), name="admin-model-selector-stats"
    ),
    path("", include("experiments.urls")),
    path("healthz", api.healthz, name="healthz"),
    *public("openapi.json", openapi_json, "openapi"),
    path("docs/", docs, name="docs"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
]

handler400 = api.bad_request
handler404 = api.not_found
handler500 = api.server_error
