"""Management command that runs the fake OpenAI-compatible provider."""

from django.core.management.base import BaseCommand

from routing import fake_provider


class Command(BaseCommand):
    """Run the fake provider in the foreground until interrupted."""

    help = "Run a fake OpenAI-compatible chat provider on 127.0.0.1 (see routing/fake_provider.py)."
    requires_system_checks = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        """Add the options shared with ``python -m routing.fake_provider``."""
        fake_provider.add_arguments(parser)

    def handle(self, *args, **options):
        """Start the fake provider with the given options."""
        fake_provider.run(fake_provider.config_from_options(options))
