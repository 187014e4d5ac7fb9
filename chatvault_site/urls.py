"""URL routes: the OpenAI-compatible API under /v1/, operator endpoints under /v1/admin/, health, and Django admin."""

from django.contrib import admin
from django.urls import include, path

from routing import admin_api, api

urlpatterns = [
    path("v1/chat/completions", api.ChatCompletionsView.as_view(), name="chat-completions"),
    path("v1/models", api.ModelsView.as_view(), name="models"),
    path("v1/models/recommend", api.RecommendView.as_view(), name="models-recommend"),
    path("v1/models/<path:model>", api.ModelDetailView.as_view(), name="model-detail"),
    path("v1/admin/load-balancer/stats", admin_api.LoadBalancerStatsView.as_view(), name="admin-load-balancer-stats"),
    path(
        "v1/admin/model-selector/stats", admin_api.ModelSelectorStatsView.as_view(), name="admin-model-selector-stats"
    ),
    path("", include("experiments.urls")),
    path("healthz", api.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]

handler400 = api.bad_request
handler404 = api.not_found
handler500 = api.server_error
