"""Management command that exports the routing configuration as a LiteLLM proxy `config.yaml`."""

import os

import yaml
from django.core.management.base import BaseCommand, CommandError

from routing.config_io import routing_config_export


class Command(BaseCommand):
    """Write the routing configuration as YAML to a file or stdout."""

    help = (
        "Export models, instances and routing settings as a LiteLLM proxy config.yaml that import_routing_config "
        "reads back. Literal API keys are left out unless --include-secrets; os.environ/ references are kept."
    )

    def add_arguments(self, parser):
        """Add the optional file argument and --include-secrets."""
        parser.add_argument("file", nargs="?", help="Path to write; stdout when omitted.")
        parser.add_argument(
            "--include-secrets", action="store_true", help="Write literal upstream API keys in clear text."
        )

    def handle(self, *args, **options):
        """Export the configuration and write it out."""
        data = routing_config_export(include_secrets=options["include_secrets"])
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
        path = options["file"]
        if not path:
            self.stdout.write(text, ending="")
            return
        try:
            # Owner-only from the start: the file may hold decrypted keys.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
        self.stdout.write(f"wrote {len(data['model_list'])} instances to {path}")
