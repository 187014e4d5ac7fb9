"""*Selections*: the log's auto-selected requests and why each model was chosen; its try-it page ranks the models
for a pasted prompt with the recommend endpoint's code (`selection.rank_models`)."""

import json
import time

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path

from routing import analysis, scoring, selection, snapshot, state
from routing.admin.logs import RequestLogAdmin, ServedModelFilter
from routing.models import (
    ApiKey,
    Selection,
)


class ContextTypeFilter(admin.SimpleListFilter):
    """Filter selections by context type (the fixed list the analysis knows)."""

    title = "context type"
    parameter_name = "context_type"

    def lookups(self, request, model_admin):
        """Return every context type, whether or not the log holds one."""
        return [(name, name.replace("_", " ")) for name in analysis.CONTEXT_TYPES]

    def queryset(self, request, queryset):
        """Return the selections of the chosen type."""
        return queryset.filter(context_type=self.value()) if self.value() else queryset


class ChosenModelFilter(ServedModelFilter):
    """Filter selections by the model that served them, from the configured models (not a scan of the log)."""

    title = "chosen model"


def _mapping(value):
    """Return value if it is a dict, else an empty one (old or partial decision records)."""
    return value if isinstance(value, dict) else {}


def _records(value):
    """Return the dicts in value if it is a list, else nothing."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def decision_context(decision):
    """Return a logged decision as the selection templates show it: analysis, candidates, weights, winner and
    reason, fallbacks and attempts, and the raw JSON."""
    decision = _mapping(decision)
    chosen = _mapping(decision.get("selection"))
    return {
        "analysis": _mapping(chosen.get("analysis")),
        "weights": _mapping(chosen.get("weights")),
        "candidates": [{**c, "breakdown": _mapping(c.get("breakdown"))} for c in _records(chosen.get("candidates"))],
        "winner": chosen.get("winner"),
        "reason": chosen.get("reason"),
        "fallbacks": _records(decision.get("fallbacks")),
        "attempts": _records(decision.get("attempts")),
        "raw": json.dumps(decision, indent=2, sort_keys=True, ensure_ascii=False),
    }


@admin.register(Selection)
class SelectionAdmin(RequestLogAdmin):
    """Recent auto-selected requests and why each model was chosen; view-only, with a try-it form for a prompt.

    Its templates are under templates/admin/routing/selection/ (the admin finds them by name).
    """

    list_display = (
        "created_at",
        "short_id",
        "api_key",
        "models",
        "context_type",
        "confidence",
        "outcome",
        "latency_ms",
        "cost_usd",
    )
    list_display_links = ("short_id",)
    list_filter = (ContextTypeFilter, ChosenModelFilter, "outcome")
    list_select_related = ("api_key",)
    ordering = ("-created_at",)
    date_hierarchy = None  # its year links are a DISTINCT over the whole log
    fieldsets = (
        (None, {"fields": ("request_id", "created_at", "api_key", "user")}),
        ("Routing", {"fields": ("requested_model", "served_model", "context_type", "instance", "attempts")}),
        ("Outcome", {"fields": ("stream", "outcome", "status_code", "error_type", "error_message")}),
        ("Usage", {"fields": ("prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms")}),
    )
    readonly_fields = ()

    @admin.display(description="Request", ordering="request_id")
    def short_id(self, obj):
        """Return the first block of the request id."""
        return str(obj.request_id)[:8]

    @admin.display(description="Requested → served")
    def models(self, obj):
        """Return the model the client named and the one that served."""
        return f"{obj.requested_model or '—'} → {obj.served_model or '—'}"

    @admin.display(description="Confidence")
    def confidence(self, obj):
        """Return the analysis' confidence in the context type, from the decision record."""
        analysed = _mapping(_mapping(_mapping(obj.decision).get("selection")).get("analysis"))
        value = analysed.get("confidence")
        return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        """Add the readable decision to the detail page."""
        if obj is not None:
            context["selection"] = decision_context(obj.decision)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self):
        """Add the try-it page before the detail pages' catch-all."""
        name = f"{self.opts.app_label}_{self.opts.model_name}_try"
        try_it = path("try/", self.admin_site.admin_view(self.try_view), name=name)
        return [try_it, *super().get_urls()]

    def try_view(self, request):
        """Show the form, and for a posted prompt the ranking POST /v1/models/recommend would give it."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = TryPromptForm(request.POST if request.method == "POST" else None)
        result = None
        if form.is_valid():
            result = try_ranking(form.chat_body(), form.cleaned_data["api_key"])
        context = {
            **self.admin_site.each_context(request),
            "title": "Try a prompt",
            "opts": self.opts,
            "form": form,
            "result": result,
        }
        return TemplateResponse(request, "admin/routing/selection/try.html", context)


# Ranking reads only that the request carries an image, a tool or JSON mode; nothing here is fetched or called.
TRY_IMAGE_PART = {"type": "image_url", "image_url": {"url": "https://example.com/image.png"}}
TRY_TOOL = {
    "type": "function",
    "function": {"name": "lookup", "description": "Look a record up.", "parameters": {"type": "object"}},
}
TRY_MAX_TOKENS = 10_000_000
# The models an unrestricted try may rank: every enabled model, as for a key with no allowed or auto models set.
ANY_KEY = snapshot.KeyConfig(
    pk=0, name="no key restriction", prefix="", is_admin=False, allowed_models=None, expires_at=None, revoked=False
)


class TryPromptForm(forms.Form):
    """A chat request for the try-it page: a prompt, what the request needs, and whose models to rank."""

    prompt = forms.CharField(strip=False, widget=forms.Textarea(attrs={"rows": 10, "cols": 100}))
    system = forms.CharField(
        label="System prompt", required=False, strip=False, widget=forms.Textarea(attrs={"rows": 3, "cols": 100})
    )
    api_key = forms.ModelChoiceField(
        label="API key",
        queryset=ApiKey.objects.filter(revoked_at__isnull=True).order_by("name"),
        required=False,
        empty_label="No key restriction (every enabled model)",
        help_text="Rank only the models this key's automatic selection may pick from.",
    )
    needs_tools = forms.BooleanField(label="Needs tools (function calling)", required=False)
    has_image = forms.BooleanField(label="Has an image", required=False)
    json_mode = forms.BooleanField(label="JSON mode", required=False)
    max_tokens = forms.IntegerField(label="max_tokens", required=False, min_value=1, max_value=TRY_MAX_TOKENS)

    def chat_body(self):
        """Return the chat-completions body the cleaned form describes, with model "auto"."""
        data = self.cleaned_data
        content = data["prompt"]
        if data["has_image"]:
            content = [{"type": "text", "text": content}, TRY_IMAGE_PART]
        messages = [{"role": "system", "content": data["system"]}] if data["system"].strip() else []
        body = {"model": selection.AUTO, "messages": [*messages, {"role": "user", "content": content}]}
        if data["needs_tools"]:
            body["tools"] = [TRY_TOOL]
        if data["json_mode"]:
            body["response_format"] = {"type": "json_object"}
        if data["max_tokens"]:
            body["max_tokens"] = data["max_tokens"]
        return body


def try_ranking(body, api_key):
    """Return the ranking of a chat body for an ApiKey (None: every enabled model), by the recommend endpoint's code.

    The snapshot is built afresh, not taken from the process: an admin trying a change just saved should see it
    without waiting for the workers' next reload. Health is this process's live routing state, as for a request.
    """
    snap = snapshot.build()
    key = ANY_KEY if api_key is None else snap.keys_by_hash[api_key.key_hash]
    routing_state, now = state.get(), time.time()
    analysed, need, weights, ranked = selection.rank_models(
        body=body, snapshot=snap, key=key, health=lambda model: routing_state.model_view(model, now)
    )
    eligible = [r for r in ranked if r.eligible]
    return {
        "analysis": selection.analysis_record(analysed),
        "weights": weights.as_dict(),
        "candidates": [selection.candidate_record(r) for r in ranked],
        "winner": eligible[0].name if eligible else None,
        "reason": scoring.summary(ranked, need),
        "auto_select_refused": not key.auto_select,
    }
