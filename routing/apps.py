"""App config for routing: wires the signals that tell workers the routing configuration changed."""

from django.apps import AppConfig


class RoutingConfig(AppConfig):
    """The routing app."""

    name = "routing"
    verbose_name = "Routing"

    def ready(self):
        """Connect configuration-change signals."""
        from routing import signals

        signals.connect()
