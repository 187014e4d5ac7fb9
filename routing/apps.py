"""App config for routing: wires the signals that tell workers the routing configuration changed, and creates the
request log's day partitions after every migrate."""

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def create_log_partitions(sender, **kwargs):
    """Create the request log's missing day partitions (after migrate; dropping is left to the beat task)."""
    from routing import partitions

    partitions.ensure_partitions()


class RoutingConfig(AppConfig):
    """The routing app."""

    name = "routing"
    verbose_name = "Routing"

    def ready(self):
        """Connect configuration-change signals and the partitions' post-migrate step."""
        from routing import signals

        signals.connect()
        post_migrate.connect(create_log_partitions, sender=self, dispatch_uid="routing-log-partitions")
