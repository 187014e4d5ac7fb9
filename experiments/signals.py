"""Bump the routing configuration revision when an experiment or a variant changes, so workers reload assignment."""

from django.db.models.signals import m2m_changed, post_delete, post_save

from experiments.models import Experiment, Variant
from routing.signals import _bump


def connect():
    """Connect the bump handler to the experiment tables."""
    for model in (Experiment, Variant):
        post_save.connect(_bump, sender=model, dispatch_uid=f"experiments-bump-save-{model.__name__}")
        post_delete.connect(_bump, sender=model, dispatch_uid=f"experiments-bump-delete-{model.__name__}")
    m2m_changed.connect(_bump, sender=Experiment.target_keys.through, dispatch_uid="experiments-bump-target-keys")
