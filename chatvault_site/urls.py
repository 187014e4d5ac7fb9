"""URL routes: the OpenAI-compatible API under /v1/, health, and Django admin."""

from django.contrib import admin
from django.urls import path

from routing import api

urlpatterns = [
    path("v1/chat/completions", api.ChatCompletionsView.as_view(), name="chat-completions"),
    path("v1/models", api.ModelsView.as_view(), name="models"),
    path("v1/models/<path:model>", api.ModelDetailView.as_view(), name="model-detail"),
    path("healthz", api.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]

handler400 = api.bad_request
handler404 = api.not_found
handler500 = api.server_error
