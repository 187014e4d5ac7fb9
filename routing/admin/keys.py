"""Admin for client API keys: generated on add and shown once, on the page that answers the add form (never in a
message, which the session would keep); only their hash is stored."""

from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from routing.auth import assign_new_secret
from routing.models import (
    ApiKey,
    ConfigRevision,
)


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
