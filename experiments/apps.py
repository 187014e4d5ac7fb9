"""App config for experiments."""

from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    """A/B experiments: variants, assignment, feedback, results and exports."""

    name = "experiments"
    verbose_name = "Experiments"

    def ready(self):
        """Keep the routing snapshot in step with experiment changes."""
        from experiments import signals

        signals.connect()
