"""Read-only admin for what the gateway records: active-probe results and the request log."""

import uuid

from django.contrib import admin

from routing.admin import decision_story
from routing.models import (
    InstanceProbe,
    RequestLog,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Admin for rows only the gateway writes: view, never add, change or delete."""

    def has_add_permission(self, request):
        """Refuse: rows are written by the gateway only."""
        return False

    def has_change_permission(self, request, obj=None):
        """Refuse: the rows are a record."""
        return False

    def has_delete_permission(self, request, obj=None):
        """Refuse: the rows are a record."""
        return False


@admin.register(InstanceProbe)
class InstanceProbeAdmin(ReadOnlyAdmin):
    """Active health-check results (kept 24 h)."""

    list_display = ("checked_at", "instance", "ok", "status_code", "latency_ms", "error")
    list_filter = ("ok", "instance")
    list_select_related = ("instance",)
    date_hierarchy = "checked_at"
    show_full_result_count = False


@admin.register(RequestLog)
class RequestLogAdmin(ReadOnlyAdmin):
    """The per-request log, view-only."""

    list_display = (
        "request_id",
        "created_at",
        "api_key",
        "requested_model",
        "served_model",
        "instance",
        "stream",
        "outcome",
        "status_code",
        "latency_ms",
        "ttft_ms",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    )
    list_filter = ("outcome", "stream", "served_model", "created_at")
    list_select_related = ("api_key", "instance")
    date_hierarchy = "created_at"
    search_fields = ("request_id", "user", "requested_model")
    # The log grows without bound: skip the unfiltered COUNT(*) on every page.
    show_full_result_count = False
    fieldsets = (
        (None, {"fields": ("request_id", "created_at", "endpoint", "api_key", "user")}),
        (
            "Routing",
            {"fields": ("requested_model", "served_model", "instance", "attempts")},
        ),
        ("Outcome", {"fields": ("stream", "outcome", "status_code", "error_type", "error_message")}),
        ("Usage", {"fields": ("prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms")}),
        ("Experiment", {"fields": ("experiment", "variant", "experiment_unit")}),
    )

    def get_search_results(self, request, queryset, search_term):
        """Look a full request id up through its unique index instead of a substring scan."""
        try:
            request_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(request_id=request_id), False

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        """Add the decision, told as a story with its raw JSON folded below (`decision_story`), to the detail page."""
        if obj is not None:
            context["story"] = decision_story.story(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)
