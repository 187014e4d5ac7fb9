"""Bump the configuration revision whenever a routing table changes, so every worker reloads its snapshot.

Writes that bypass signals (queryset `.update()`, `bulk_create`) must call `ConfigRevision.bump()` themselves.
"""

from django.db.models.signals import m2m_changed, post_delete, post_save

from routing.models import ApiKey, ConfigRevision, Model, Provider, ProviderInstance, RoutingSettings

WATCHED = (Provider, Model, ProviderInstance, ApiKey, RoutingSettings)


def _bump(sender, **kwargs):
    """Record a configuration change."""
    if kwargs.get("raw"):  # loaddata: the revision is bumped once the fixture is in, by whoever loads it
        return
    ConfigRevision.bump()


def connect():
    """Connect the bump handler to every routing table."""
    for model in WATCHED:
        post_save.connect(_bump, sender=model, dispatch_uid=f"routing-bump-save-{model.__name__}")
        post_delete.connect(_bump, sender=model, dispatch_uid=f"routing-bump-delete-{model.__name__}")
    m2m_changed.connect(_bump, sender=ApiKey.allowed_models.through, dispatch_uid="routing-bump-key-models")
