"""App config for experiments."""

from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    """The experiments app (A/B experiments land in a later issue; the app reserves its place in the layout)."""

    name = "experiments"
    verbose_name = "Experiments"
