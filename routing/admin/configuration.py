"""Admin for the routing configuration: providers, models (metadata, fallbacks), instances (live state, bulk
actions) and the gateway-wide routing settings.

Actions that write with queryset `.update()` skip the model signals, so they bump `ConfigRevision` themselves. The
instance pages show each instance's breaker state and in-flight count as the process serving the page sees them
(shared across workers through Redis when it is configured; without it, only this process's own view). The model
and instance lists show the dashboard's figures of their rows (`routing.admin.dashboard`: rollups, never the log).
"""

import time

from django.contrib import admin, messages
from django.db.models import Count, Prefetch
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from routing import metadata, state
from routing.admin import dashboard
from routing.admin.forms import ProviderForm, ProviderInstanceForm, ProviderInstanceInlineForm, PublicModelForm
from routing.admin_api import latest_probes
from routing.models import (
    ConfigRevision,
    Model,
    Provider,
    ProviderInstance,
    RoutingSettings,
)

# --- Actions --------------------------------------------------------------------------------------------------------


def _update(modeladmin, request, queryset, done, **fields):
    """Set fields on the selected rows, tell the workers (queryset updates fire no signals), and report."""
    count = queryset.update(**fields)
    if count:
        ConfigRevision.bump()
    modeladmin.message_user(request, f"{done} {count} {modeladmin.opts.verbose_name_plural}.", messages.SUCCESS)


@admin.action(description="Enable selected %(verbose_name_plural)s")
def enable_selected(modeladmin, request, queryset):
    """Enable the selected rows."""
    _update(modeladmin, request, queryset, "Enabled", enabled=True)


@admin.action(description="Disable selected %(verbose_name_plural)s")
def disable_selected(modeladmin, request, queryset):
    """Disable the selected rows."""
    _update(modeladmin, request, queryset, "Disabled", enabled=False)


@admin.action(description="Reset circuit breaker of selected %(verbose_name_plural)s")
def reset_breaker(modeladmin, request, queryset):
    """Close the breakers of the selected instances on every worker (each applies it on its next reload)."""
    _update(modeladmin, request, queryset, "Reset the circuit breaker of", breaker_reset_at=timezone.now())


@admin.action(description="Drain selected %(verbose_name_plural)s (no new requests)")
def drain_selected(modeladmin, request, queryset):
    """Stop sending new requests to the selected instances."""
    _update(modeladmin, request, queryset, "Drained", drained=True)


@admin.action(description="Undrain selected %(verbose_name_plural)s")
def undrain_selected(modeladmin, request, queryset):
    """Send requests to the selected instances again."""
    _update(modeladmin, request, queryset, "Undrained", drained=False)


# --- Providers, models and instances --------------------------------------------------------------------------------


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    """Upstream providers; the key is write-only."""

    form = ProviderForm
    list_display = ("name", "kind", "api_base", "openai_compatible", "key")
    list_filter = ("kind", "openai_compatible")
    search_fields = ("name", "kind")
    fields = ("name", "kind", "api_base", "openai_compatible", "key", "api_key", "clear_api_key")
    readonly_fields = ("key",)

    @admin.display(description="API key")
    def key(self, obj):
        """Return the safe description of the stored key."""
        return obj.api_key_display()


class LiveStateMixin:
    """Read-only columns with an instance's live routing state, from this process's `routing.state`."""

    @admin.display(description="State")
    def breaker_state(self, obj):
        """Return "disabled", "drained", "no key", or the breaker state (closed, open, half open), in its colour."""
        if obj._state.adding:
            return "—"
        return dashboard.state_badge(dashboard.instance_state(obj, state.get(), time.time())[0])

    @admin.display(description="State")
    def live_state(self, obj):
        """Return the state in its colour, with why the instance is not routed to below it (the list's column)."""
        current, reason = dashboard.instance_state(obj, state.get(), time.time())
        badge = dashboard.state_badge(current)
        return format_html("{}<br>{}", badge, reason) if reason else badge

    @admin.display(description="Reason")
    def breaker_reason(self, obj):
        """Return why the instance is not routed to: no API key, or why its breaker is not closed."""
        if obj._state.adding:
            return "—"
        return dashboard.instance_state(obj, state.get(), time.time())[1] or "—"

    @admin.display(description="In flight")
    def in_flight(self, obj):
        """Return the requests in flight to the instance across workers."""
        return 0 if obj._state.adding else state.get().total_in_flight(obj.pk)


class TrafficColumnsMixin:
    """List columns with the rolled-up traffic of each row over the last hour and 24 hours, as on the dashboard.

    The figures of a page's rows are read once, when its changelist is made (one query per window, however many
    rows), and kept on the rows; `figures_of` says which of the dashboard's tables a row is in.
    """

    def get_changelist_instance(self, request):
        """Return the changelist, with the figures of its page's rows read and put on them."""
        changelist = super().get_changelist_instance(request)
        rows = list(changelist.result_list)  # evaluated here, so the page renders these very objects
        if rows:
            self.attach_figures(rows)
        return changelist

    def attach_figures(self, rows):
        """Put each row's Figures of both windows on it as `_figures` ({window name: Figures})."""
        for name, tables in self.list_figures(rows).items():
            for row in rows:
                row.__dict__.setdefault("_figures", {})[name] = self.figures_of(row, tables)

    @staticmethod
    def _figures(obj, window):
        """Return a row's Figures of a window, or None when the page did not read them (a detail page)."""
        return getattr(obj, "_figures", {}).get(window)

    @admin.display(description="1 h: req · errors")
    def last_hour(self, obj):
        """Return requests and error rate over the last hour."""
        return self._traffic(self._figures(obj, "1h"))

    @admin.display(description="24 h: req · errors")
    def last_day(self, obj):
        """Return requests and error rate over 24 hours, with the sparkline of each hour."""
        figures = self._figures(obj, "24h")
        return format_html("{}<br>{}", self._traffic(figures), figures.sparkline) if figures else "—"

    @admin.display(description="p50 / p95 ms, 24 h")
    def latency_day(self, obj):
        """Return the latency and time-to-first-token percentiles over 24 hours, one above the other."""
        figures = self._figures(obj, "24h")
        if figures is None or not sum(figures.latency):
            return "—"
        return format_html("{}<br>TTFT {}", figures.latency_text, figures.ttft_text)

    @admin.display(description="Cost 24 h")
    def cost_day(self, obj):
        """Return the cost over 24 hours."""
        figures = self._figures(obj, "24h")
        return figures.cost_text if figures else "—"

    @staticmethod
    def _traffic(figures):
        """Return "requests · error rate" of Figures, or "—"."""
        if figures is None:
            return "—"
        return f"{figures.requests} · {figures.error_rate_text}" if figures.requests else "0"


class ProviderInstanceInline(LiveStateMixin, admin.TabularInline):
    """Instances of a model, edited on the model page (keys are set on each instance's own page)."""

    model = ProviderInstance
    form = ProviderInstanceInlineForm
    fields = (
        "id",
        "provider",
        "litellm_model",
        "api_base",
        "weight",
        "timeout",
        "stream_timeout",
        "enabled",
        "breaker_state",
        "breaker_reason",
    )
    readonly_fields = ("breaker_state", "breaker_reason")
    extra = 0
    show_change_link = True


SOURCE_LABELS = {metadata.OVERRIDE: "override", metadata.LITELLM: "litellm map", None: "unknown"}
METADATA_LABELS = {
    "context_window": "Context window (max input tokens)",
    "supports_function_calling": "Function calling",
    "supports_vision": "Vision (image input)",
    "supports_response_schema": "Response schema / JSON mode",
    "input_cost_per_token": "Input price (USD per million tokens)",
    "output_cost_per_token": "Output price (USD per million tokens)",
    "capabilities": "Capability tags",
}


def model_metadata(obj):
    """Return a model's effective metadata, from the same resolver the routing snapshot uses (cached on the row).

    The row comes from `PublicModelAdmin.get_queryset`, which prefetches its enabled instances.
    """
    if not hasattr(obj, "_effective_metadata"):
        upstream = [] if obj._state.adding else [inst.litellm_model for inst in obj.enabled_instances]
        obj._effective_metadata = metadata.for_model(obj, upstream)
    return obj._effective_metadata


def _per_mtok_text(per_token):
    """Return a per-token price as plain text in USD per million tokens."""
    return f"{(per_token * metadata.PER_MILLION).normalize():f}"


def _metadata_text(key, value):
    """Return one effective metadata value as text."""
    if key == "capabilities":
        return ", ".join(value) if value else "none"
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in metadata.PRICES:
        return _per_mtok_text(value)
    return f"{value:,}"


class MissingMetadataFilter(admin.SimpleListFilter):
    """Filter models that selection cannot price or size: no price or no context window from any source."""

    title = "metadata"
    parameter_name = "metadata"

    def lookups(self, request, model_admin):
        """Return the filter choices."""
        return (("price", "Missing price"), ("window", "Missing window"), ("complete", "Price and window known"))

    def queryset(self, request, queryset):
        """Return the models missing the chosen value (computed, since the litellm map is not in the database)."""
        if self.value() in ("price", "window"):
            return queryset.filter(pk__in=[m.pk for m in queryset if self.value() in model_metadata(m).missing()])
        if self.value() == "complete":
            return queryset.filter(pk__in=[m.pk for m in queryset if not model_metadata(m).missing()])
        return queryset


@admin.register(Model)
class PublicModelAdmin(TrafficColumnsMixin, admin.ModelAdmin):
    """Public model names, their metadata, the instances that serve them, and how they are doing."""

    form = PublicModelForm
    list_display = (
        "name",
        "health",
        "routing_strategy",
        "instance_count",
        "capability_list",
        "effective_window",
        "effective_prices",
        "missing_metadata",
        "last_hour",
        "last_day",
        "latency_day",
        "cost_day",
    )
    list_filter = ("enabled", "mode", "strategy", MissingMetadataFilter)
    search_fields = ("name",)
    fieldsets = (
        (None, {"fields": ("name", "description", "enabled", "mode", "strategy", "capabilities")}),
        ("Fallbacks", {"fields": ("fallbacks", "context_window_fallbacks")}),
        (
            "Metadata overrides",
            {
                "description": "An empty override uses litellm's model map for the upstream models "
                "of the enabled instances; where they differ, the most conservative value (smallest window, "
                "no over yes, highest price).",
                "fields": (
                    "context_window",
                    "supports_function_calling",
                    "supports_vision",
                    "supports_response_schema",
                    "input_cost_per_mtok",
                    "output_cost_per_mtok",
                ),
            },
        ),
        ("Effective metadata", {"fields": ("effective_metadata",)}),
    )
    readonly_fields = ("effective_metadata",)
    inlines = (ProviderInstanceInline,)
    actions = (enable_selected, disable_selected)

    def get_queryset(self, request):
        """Annotate each model with its number of instances and fetch the enabled ones' upstream models."""
        enabled = ProviderInstance.objects.filter(enabled=True).only("id", "model_id", "litellm_model")
        return (
            super()
            .get_queryset(request)
            .annotate(instance_count=Count("instances"))
            .prefetch_related(Prefetch("instances", queryset=enabled, to_attr="enabled_instances"))
        )

    def list_figures(self, rows):
        """Return the dashboard's figures of these models; note each one's instance states on it (2 queries)."""
        routing_state, now = state.get(), time.time()
        states = {}
        instances = ProviderInstance.objects.filter(model__in=rows).select_related("provider")
        for inst in instances:
            states.setdefault(inst.model_id, []).append(dashboard.instance_state(inst, routing_state, now)[0])
        for row in rows:
            row._health = dashboard.model_health(row.enabled, states.get(row.pk, []))
        return dashboard.list_figures(models=[row.name for row in rows])

    @staticmethod
    def figures_of(row, tables):
        """Return a model's Figures from the dashboard's (by model, by instance) tables."""
        return tables[0].get(row.name) or dashboard.Figures()

    @admin.display(description="State", ordering="enabled")
    def health(self, obj):
        """Return how many of the model's instances serve, in the colour of the model's health."""
        if not hasattr(obj, "_health"):
            return "—"
        return dashboard.state_badge(*obj._health)

    @admin.display(description="Strategy", ordering="strategy")
    def routing_strategy(self, obj):
        """Return the model's strategy, or say that it follows the gateway default."""
        return obj.get_strategy_display() or "gateway default"

    @admin.display(description="Instances", ordering="instance_count")
    def instance_count(self, obj):
        """Return the number of instances."""
        return obj.instance_count

    @admin.display(description="Capabilities")
    def capability_list(self, obj):
        """Return the capability tags, comma-separated."""
        return ", ".join(str(tag) for tag in obj.capabilities or [])

    @admin.display(description="Context window")
    def effective_window(self, obj):
        """Return the effective context window, or "unknown"."""
        return _metadata_text("context_window", model_metadata(obj).context_window)

    @admin.display(description="Price in / out (USD per M tokens)")
    def effective_prices(self, obj):
        """Return the effective input and output prices per million tokens."""
        meta = model_metadata(obj)
        return " / ".join(
            _metadata_text(key, getattr(meta, key)) for key in ("input_cost_per_token", "output_cost_per_token")
        )

    @admin.display(description="Missing")
    def missing_metadata(self, obj):
        """Return what selection cannot know about the model ("missing price", "missing window"), or "—"."""
        return ", ".join(f"missing {gap}" for gap in model_metadata(obj).missing()) or "—"

    @admin.display(description="Effective values")
    def effective_metadata(self, obj):
        """Return a table of each effective value and where it came from (override, litellm map or unknown)."""
        meta = model_metadata(obj)
        rows = (
            (
                METADATA_LABELS[key],
                _metadata_text(key, getattr(meta, key)),
                SOURCE_LABELS[meta.sources[key]],
            )
            for key in (*metadata.FIELDS, "capabilities")
        )
        return format_html(
            '<table class="effective-metadata"><thead><tr><th>Value</th><th>Effective</th><th>From</th></tr></thead>'
            "<tbody>{}</tbody></table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )


@admin.register(ProviderInstance)
class ProviderInstanceAdmin(LiveStateMixin, TrafficColumnsMixin, admin.ModelAdmin):
    """Deployments of models on providers; each may carry its own write-only key."""

    form = ProviderInstanceForm
    list_display = (
        "id",
        "model",
        "live_state",
        "in_flight",
        "last_hour",
        "last_day",
        "latency_day",
        "cost_day",
        "last_probe",
        "key",
    )
    list_filter = ("provider", "model", "enabled", "drained")
    list_select_related = ("model", "provider")
    search_fields = ("id", "litellm_model", "model__name")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "model",
                    "provider",
                    "litellm_model",
                    "api_base",
                    "api_base_env",
                    "weight",
                    "enabled",
                    "drained",
                )
            },
        ),
        ("Live state", {"fields": ("breaker_state", "breaker_reason", "in_flight", "breaker_reset_at")}),
        ("Limits", {"fields": ("rpm", "tpm", "timeout", "stream_timeout")}),
        (
            "API key",
            {
                "fields": ("key", "api_key", "clear_api_key"),
                "description": "Without a key of its own, the instance uses its provider's.",
            },
        ),
        (
            "Provider parameters",
            {
                "fields": ("params", "credentials", "credential_params"),
                "description": "litellm_params passed to litellm on every call (config import/export keeps them). "
                "An instance with any goes through litellm, never the OpenAI pass-through.",
            },
        ),
    )
    readonly_fields = ("key", "credentials", "breaker_state", "breaker_reason", "in_flight", "breaker_reset_at")
    actions = (enable_selected, disable_selected, reset_breaker, drain_selected, undrain_selected)

    def get_readonly_fields(self, request, obj=None):
        """Make the id read-only once the instance exists."""
        readonly = super().get_readonly_fields(request, obj)
        return ("id", *readonly) if obj is not None else readonly

    def get_fieldsets(self, request, obj=None):
        """Leave out the live state of an instance that does not exist yet."""
        fieldsets = super().get_fieldsets(request, obj)
        return fieldsets if obj is not None else [fs for fs in fieldsets if fs[0] != "Live state"]

    def list_figures(self, rows):
        """Return the dashboard's figures of these instances; note each one's latest probe on it (2 queries)."""
        probes = latest_probes([row.pk for row in rows])
        for row in rows:
            row._probe = dashboard.probe_summary(probes.get(row.pk))
        return dashboard.list_figures(instance_ids=[row.pk for row in rows])

    @staticmethod
    def figures_of(row, tables):
        """Return an instance's Figures from the dashboard's (by model, by instance) tables."""
        return tables[1].get(row.pk) or dashboard.Figures()

    @admin.display(description="Last probe")
    def last_probe(self, obj):
        """Return the latest probe: ok or failed, latency or error, and how long ago."""
        probe = getattr(obj, "_probe", None)
        if probe is None:
            return "—"
        detail = f"{probe['latency_ms']:.0f} ms" if probe["latency_ms"] is not None else ""
        if probe["error"]:
            detail = probe["error"][:80]
        return format_html(
            '<span style="color: {}">{}</span>{}<br>{} ago',
            dashboard.STATE_COLOURS["closed" if probe["ok"] else "open"],
            "ok" if probe["ok"] else "failed",
            f" · {detail}" if detail else "",
            timesince(probe["at"]),
        )

    @admin.display(description="API base")
    def endpoint(self, obj):
        """Return the endpoint the instance calls (its own, else its provider's)."""
        return obj.effective_api_base() or "—"

    @admin.display(description="Stored credential parameters")
    def credentials(self, obj):
        """Return the names of the encrypted credential parameters (their values are never shown)."""
        return ", ".join(sorted(obj.secret_params)) or "—"

    @admin.display(description="API key")
    def key(self, obj):
        """Return the safe description of the key in use, noting when it is the provider's."""
        if obj.has_api_key():
            return obj.api_key_display()
        if obj.provider_id and obj.provider.has_api_key():
            return f"provider's ({obj.provider.api_key_display()})"
        return "—"


@admin.register(RoutingSettings)
class RoutingSettingsAdmin(admin.ModelAdmin):
    """The single gateway-wide settings row."""

    list_display = ("default_strategy", "auto_select", "max_attempts", "health_check_interval_seconds")
    fieldsets = (
        ("Routing", {"fields": ("default_strategy", "auto_select")}),
        (
            "Automatic model selection",
            {
                "description": "How a candidate model's score is made: capability fit for the request's context "
                "type, measured reliability and latency, the request's expected cost, and the quality apps rated "
                "its answers (feedback). Keep capability above the others together so a model tagged for the type "
                "wins whenever one is eligible.",
                "fields": (
                    "selection_weight_capability",
                    "selection_weight_performance",
                    "selection_weight_cost",
                    "selection_weight_quality",
                    "selection_type_weights",
                ),
            },
        ),
        (
            "Circuit breaker",
            {
                "description": "Per instance. Opens after N failures in a row, or when the error ratio over the "
                "window reaches the threshold with enough requests; stays open for the cooldown (doubling on "
                "repeated trips up to the maximum), then lets trial requests through.",
                "fields": (
                    "breaker_consecutive_failures",
                    "breaker_error_ratio",
                    "breaker_min_requests",
                    "breaker_window_seconds",
                    "breaker_cooldown_seconds",
                    "breaker_max_cooldown_seconds",
                    "breaker_half_open_successes",
                ),
            },
        ),
        ("Retries and failover", {"fields": ("max_attempts", "retry_budget_ratio")}),
        ("Active health checks", {"fields": ("health_check_interval_seconds", "health_check_timeout_seconds")}),
        (
            "Request log",
            {
                "description": "On Postgres the log is kept in one partition a day; an hourly task drops the days "
                "older than this (their rollups stay).",
                "fields": ("request_log_retention_days",),
            },
        ),
    )

    def has_add_permission(self, request):
        """Allow adding only while no settings row exists."""
        return super().has_add_permission(request) and not RoutingSettings.objects.exists()

    def has_delete_permission(self, request, obj=None):
        """Never delete the settings row."""
        return False

    def save_model(self, request, obj, form, change):
        """Store a new row as pk 1, the row `RoutingSettings.load()` reads."""
        if not change:
            obj.pk = 1
        super().save_model(request, obj, form, change)
