"""Django admin for the routing configuration, client API keys and the read-only request log.

Upstream keys are write-only here: a form field sets or clears them and pages show only `api_key_display()`. Client
keys are generated on add and shown once, on the page that answers the add form (never in a message, which the
session would keep); only their hash is stored. Actions that write with queryset `.update()` skip the model signals,
so they bump `ConfigRevision` themselves.

The instance pages show each instance's breaker state and in-flight count as the process serving the page sees them
(shared across workers through Redis when it is configured; without it, only this process's own view).

*Selections* shows the log's auto-selected requests and why each model was chosen; its try-it page ranks the models
for a pasted prompt with the recommend endpoint's code (`selection.rank_models`).
"""

import json
import time
import uuid

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Prefetch
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from routing import analysis, metadata, scoring, secrets, selection, snapshot, state
from routing.auth import assign_new_secret
from routing.health import CLOSED
from routing.models import (
    ApiKey,
    ConfigRevision,
    InstanceProbe,
    Model,
    Provider,
    ProviderInstance,
    RequestLog,
    RoutingSettings,
    Selection,
)

admin.site.site_header = "ChatVault administration"
admin.site.site_title = "ChatVault admin"
admin.site.index_title = "Gateway configuration"


def login_lockout_response(request, original_response=None, credentials=None):
    """Return the page a locked-out admin sign-in gets (django-axes' AXES_LOCKOUT_CALLABLE)."""
    context = {
        **admin.site.each_context(request),
        "title": "Sign-in locked",
        "lockout_minutes": settings.CHATVAULT_LOGIN_LOCKOUT_MINUTES,
    }
    return render(request, "admin/login_locked.html", context, status=429)


API_KEY_HELP = (
    "Leave blank to keep the current key. Use os.environ/NAME to read it from the gateway's environment. "
    "Shown only as its last 4 characters."
)


# --- Forms ----------------------------------------------------------------------------------------------------------


class UpstreamSecretForm(forms.ModelForm):
    """A form whose upstream key is write-only: type one to replace it, leave blank to keep it, tick to clear it."""

    api_key = forms.CharField(
        label="New API key",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=API_KEY_HELP,
    )
    clear_api_key = forms.BooleanField(label="Clear API key", required=False, help_text="Remove the stored key.")

    def clean_api_key(self):
        """Reject an `os.environ/` reference without a usable variable name."""
        value = self.cleaned_data["api_key"]
        if value.startswith(secrets.ENV_PREFIX):
            name = secrets.env_reference_name(value)
            max_length = self._meta.model._meta.get_field("api_key_env").max_length
            if not name:
                raise ValidationError("Name the environment variable: os.environ/NAME.")
            if len(name) > max_length:
                raise ValidationError(f"The environment variable name is longer than {max_length} characters.")
        return value

    def clean(self):
        """Refuse a new key and 'clear' at the same time."""
        cleaned = super().clean()
        if cleaned.get("api_key") and cleaned.get("clear_api_key"):
            raise ValidationError("Either type a new API key or tick 'Clear API key', not both.")
        return cleaned

    def save(self, commit=True):
        """Apply a typed or cleared key to the instance, then save as usual."""
        if self.cleaned_data.get("api_key"):
            self.instance.set_api_key(self.cleaned_data["api_key"])
        elif self.cleaned_data.get("clear_api_key"):
            self.instance.set_api_key("")
        return super().save(commit)


class ProviderForm(UpstreamSecretForm):
    """Provider form with a write-only key."""

    class Meta:
        model = Provider
        fields = ("name", "kind", "api_base", "openai_compatible")


class ProviderInstanceForm(UpstreamSecretForm):
    """Instance form with a write-only key of its own (without one the provider's key is used)."""

    clear_api_key = forms.BooleanField(
        label="Clear API key", required=False, help_text="Remove this instance's key so it uses its provider's."
    )

    class Meta:
        model = ProviderInstance
        fields = (
            "id",
            "model",
            "provider",
            "litellm_model",
            "api_base",
            "weight",
            "rpm",
            "tpm",
            "timeout",
            "stream_timeout",
            "enabled",
            "drained",
        )


class CommaSeparatedListField(forms.CharField):
    """A text input for a list of strings, written comma-separated."""

    def prepare_value(self, value):
        """Render a list as 'a, b, c'."""
        if isinstance(value, (list, tuple)):
            return ", ".join(str(item) for item in value)
        return value

    def to_python(self, value):
        """Return the non-empty, de-duplicated items in the order typed."""
        if isinstance(value, (list, tuple)):
            return list(value)
        text = super().to_python(value) or ""
        return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


class OverrideSelect(forms.NullBooleanSelect):
    """A yes / no / "from the litellm map" choice for a tri-state metadata override."""

    def __init__(self, attrs=None):
        super().__init__(attrs)
        self.choices = (("unknown", "From the litellm map"), ("true", "Yes"), ("false", "No"))


class PublicModelForm(forms.ModelForm):
    """Model form with capabilities edited as comma-separated text and tri-state metadata overrides."""

    capabilities = CommaSeparatedListField(
        required=False,
        help_text="Comma-separated capability tags, e.g. code_generation, code_review, math, analysis, "
        "creative_writing, summarization, translation, question_answering, general_chat.",
    )
    fallbacks = CommaSeparatedListField(
        required=False, help_text="Comma-separated model names tried in this order when this model cannot serve."
    )
    context_window_fallbacks = CommaSeparatedListField(
        required=False,
        help_text="Comma-separated model names used instead, in this order, for a request too long for this model.",
    )

    class Meta:
        model = Model
        fields = (
            "name",
            "description",
            "enabled",
            "strategy",
            "capabilities",
            "fallbacks",
            "context_window_fallbacks",
            "context_window",
            "supports_function_calling",
            "supports_vision",
            "supports_response_schema",
            "input_cost_per_mtok",
            "output_cost_per_mtok",
        )
        widgets = {field: OverrideSelect for field in metadata.FEATURES}

    def clean(self):
        """Refuse fallbacks that name no model, or the model itself."""
        cleaned = super().clean()
        for field in ("fallbacks", "context_window_fallbacks"):
            names = cleaned.get(field) or []
            known = set(Model.objects.filter(name__in=names).values_list("name", flat=True))
            unknown = [name for name in names if name not in known]
            if unknown:
                self.add_error(field, f"No such model: {', '.join(unknown)}.")
            elif cleaned.get("name") in names:
                self.add_error(field, "A model cannot be its own fallback.")
        return cleaned


class ProviderInstanceInlineForm(forms.ModelForm):
    """Inline instance row: the id can be chosen for a new instance but not changed afterwards."""

    class Meta:
        model = ProviderInstance
        fields = ("id", "provider", "litellm_model", "api_base", "weight", "timeout", "stream_timeout", "enabled")

    def __init__(self, *args, **kwargs):
        """Lock the id of saved rows."""
        super().__init__(*args, **kwargs)
        if not self.instance._state.adding:
            # Not `disabled`: browsers omit disabled inputs, and the formset needs the posted id to find the row.
            self.fields["id"].widget.attrs["readonly"] = True

    def clean_id(self):
        """Keep a saved row's id whatever was posted (a changed primary key would copy the row)."""
        if not self.instance._state.adding:
            return self.instance.pk
        return self.cleaned_data["id"]


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
        """Return "disabled", "drained", or the breaker state (closed, open or half_open)."""
        if obj._state.adding:
            return "—"
        if not obj.enabled:
            return "disabled"
        if obj.drained:
            return "drained"
        return state.get().breaker(obj.pk).current(time.time())

    @admin.display(description="Reason")
    def breaker_reason(self, obj):
        """Return why the breaker is not closed, if it is not."""
        if obj._state.adding:
            return "—"
        breaker = state.get().breaker(obj.pk)
        return breaker.reason if breaker.current(time.time()) != CLOSED and breaker.reason else "—"

    @admin.display(description="In flight")
    def in_flight(self, obj):
        """Return the requests in flight to the instance across workers."""
        return 0 if obj._state.adding else state.get().total_in_flight(obj.pk)


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
class PublicModelAdmin(admin.ModelAdmin):
    """Public model names, their metadata, and the instances that serve them."""

    form = PublicModelForm
    list_display = (
        "name",
        "enabled",
        "routing_strategy",
        "instance_count",
        "capability_list",
        "effective_window",
        "effective_prices",
        "missing_metadata",
    )
    list_filter = ("enabled", "strategy", MissingMetadataFilter)
    search_fields = ("name",)
    fieldsets = (
        (None, {"fields": ("name", "description", "enabled", "strategy", "capabilities")}),
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
class ProviderInstanceAdmin(LiveStateMixin, admin.ModelAdmin):
    """Deployments of models on providers; each may carry its own write-only key."""

    form = ProviderInstanceForm
    list_display = (
        "id",
        "model",
        "provider",
        "litellm_model",
        "endpoint",
        "weight",
        "enabled",
        "breaker_state",
        "breaker_reason",
        "in_flight",
        "key",
    )
    list_filter = ("provider", "model", "enabled", "drained")
    list_select_related = ("model", "provider")
    search_fields = ("id", "litellm_model", "model__name")
    fieldsets = (
        (None, {"fields": ("id", "model", "provider", "litellm_model", "api_base", "weight", "enabled", "drained")}),
        ("Live state", {"fields": ("breaker_state", "breaker_reason", "in_flight", "breaker_reset_at")}),
        ("Limits", {"fields": ("rpm", "tpm", "timeout", "stream_timeout")}),
        (
            "API key",
            {
                "fields": ("key", "api_key", "clear_api_key"),
                "description": "Without a key of its own, the instance uses its provider's.",
            },
        ),
    )
    readonly_fields = ("key", "breaker_state", "breaker_reason", "in_flight", "breaker_reset_at")
    actions = (enable_selected, disable_selected, reset_breaker, drain_selected, undrain_selected)

    def get_readonly_fields(self, request, obj=None):
        """Make the id read-only once the instance exists."""
        readonly = super().get_readonly_fields(request, obj)
        return ("id", *readonly) if obj is not None else readonly

    def get_fieldsets(self, request, obj=None):
        """Leave out the live state of an instance that does not exist yet."""
        fieldsets = super().get_fieldsets(request, obj)
        return fieldsets if obj is not None else [fs for fs in fieldsets if fs[0] != "Live state"]

    @admin.display(description="API base")
    def endpoint(self, obj):
        """Return the endpoint the instance calls (its own, else its provider's)."""
        return obj.effective_api_base() or "—"

    @admin.display(description="API key")
    def key(self, obj):
        """Return the safe description of the key in use, noting when it is the provider's."""
        if obj.has_api_key():
            return obj.api_key_display()
        if obj.provider_id and obj.provider.has_api_key():
            return f"provider's ({obj.provider.api_key_display()})"
        return "—"


# --- Client API keys ------------------------------------------------------------------------------------------------


class ApiKeyStatusFilter(admin.SimpleListFilter):
    """Filter keys by active, revoked or expired."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        """Return the filter choices."""
        return (("active", "Active"), ("revoked", "Revoked"), ("expired", "Expired"))

    def queryset(self, request, queryset):
        """Return the keys in the chosen status."""
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Client keys: generated on add and shown once; afterwards only the prefix is visible."""

    list_display = (
        "name",
        "prefix",
        "is_admin",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "status",
    )
    list_filter = (ApiKeyStatusFilter, "is_admin")
    search_fields = ("name", "prefix")
    filter_horizontal = ("allowed_models", "auto_models")
    add_fieldsets = (
        (
            None,
            {
                "fields": ("name", "is_admin", "allowed_models", "auto_select", "auto_models", "expires_at"),
                "description": "The key itself is generated when you save, and shown to you once.",
            },
        ),
    )
    fields = (
        "name",
        "prefix",
        "status",
        "is_admin",
        "allowed_models",
        "auto_select",
        "auto_models",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    readonly_fields = ("prefix", "status", "created_at", "last_used_at")
    actions = ("revoke_selected",)

    def get_fieldsets(self, request, obj=None):
        """Ask only for what a new key needs; the secret is generated on save."""
        return self.add_fieldsets if obj is None else super().get_fieldsets(request, obj)

    def save_model(self, request, obj, form, change):
        """Generate the secret of a new key and store its hash; response_add shows the key once."""
        if change:
            super().save_model(request, obj, form, change)
            return
        # The admin saves the object itself (so save_related sets the allowed models); auth makes the secret.
        obj.raw_key = assign_new_secret(obj)
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        """Show the new key in this response only, so no session row or cookie ever holds it."""
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "opts": self.opts,
            "key": obj,
            "raw_key": obj.raw_key,
            "change_url": reverse("admin:routing_apikey_change", args=[obj.pk]),
            "changelist_url": reverse("admin:routing_apikey_changelist"),
            "add_url": reverse("admin:routing_apikey_add"),
        }
        return TemplateResponse(request, "admin/routing/apikey/created.html", context)

    @admin.display(description="Status")
    def status(self, obj):
        """Return active, revoked or expired."""
        if obj.revoked_at is not None:
            return "revoked"
        if obj.expires_at is not None and obj.expires_at <= timezone.now():
            return "expired"
        return "active"

    @admin.action(description="Revoke selected API keys")
    def revoke_selected(self, request, queryset):
        """Revoke the selected keys that are not revoked yet."""
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        if count:
            ConfigRevision.bump()
        self.message_user(request, f"Revoked {count} API key{'s' if count != 1 else ''}.", messages.SUCCESS)


# --- Settings and the request log -----------------------------------------------------------------------------------


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
                "type, measured reliability and latency, and the request's expected cost. Keep capability above "
                "the other two together so a model tagged for the type wins whenever one is eligible.",
                "fields": (
                    "selection_weight_capability",
                    "selection_weight_performance",
                    "selection_weight_cost",
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
            {"fields": ("requested_model", "served_model", "instance", "attempts", "decision_pretty")},
        ),
        ("Outcome", {"fields": ("stream", "outcome", "status_code", "error_type", "error_message")}),
        ("Usage", {"fields": ("prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms")}),
    )
    readonly_fields = ("decision_pretty",)

    def get_search_results(self, request, queryset, search_term):
        """Look a full request id up through its unique index instead of a substring scan."""
        try:
            request_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(request_id=request_id), False

    @admin.display(description="Decision")
    def decision_pretty(self, obj):
        """Return the routing decision as indented JSON."""
        return format_html("<pre>{}</pre>", json.dumps(obj.decision, indent=2, sort_keys=True, ensure_ascii=False))


# --- Automatic selection: recent selections and the try-it form -----------------------------------------------------


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


class ChosenModelFilter(admin.SimpleListFilter):
    """Filter selections by the model that served them, from the configured models (not a scan of the log)."""

    title = "chosen model"
    parameter_name = "served_model"

    def lookups(self, request, model_admin):
        """Return the configured model names."""
        return [(name, name) for name in Model.objects.order_by("name").values_list("name", flat=True)]

    def queryset(self, request, queryset):
        """Return the selections served by the chosen model."""
        return queryset.filter(served_model=self.value()) if self.value() else queryset


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
