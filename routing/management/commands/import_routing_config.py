"""Management command that imports the routing configuration from a LiteLLM proxy `config.yaml`."""

from django.core.management.base import BaseCommand, CommandError

from routing.config_io import ConfigError, load_config_file, routing_config_import


class Command(BaseCommand):
    """Make the routing tables match a LiteLLM-style config file."""

    help = (
        "Import providers, models, instances and routing settings from a LiteLLM proxy config.yaml. The file is the "
        "desired state: models and instances it no longer lists are disabled, never deleted."
    )

    def add_arguments(self, parser):
        """Add the file argument and --dry-run."""
        parser.add_argument("file", help="Path to the YAML config file.")
        parser.add_argument("--dry-run", action="store_true", help="Report what would change without saving it.")

    def handle(self, *args, **options):
        """Validate and import the file, then print its warnings and a summary."""
        try:
            data = load_config_file(options["file"])
            report = routing_config_import(data=data, dry_run=options["dry_run"])
        except ConfigError as exc:
            # The warnings too, so a user fixes the whole file in one pass.
            lines = [*exc.errors, *(f"warning: {' '.join(w.split())}" for w in exc.warnings)]
            raise CommandError(f"invalid routing config {options['file']}:\n  " + "\n  ".join(lines)) from None
        for warning in report.warnings:
            # One line per warning, so the output greps and diffs cleanly.
            self.stdout.write(f"warning: {' '.join(warning.split())}")
        if options["verbosity"] >= 2:
            for change in report.changes:
                self.stdout.write(change)
        style = self.style.SUCCESS if report.changed and not report.dry_run else (lambda text: text)
        self.stdout.write(style(report.summary()))
