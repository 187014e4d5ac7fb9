"""`manage.py create_api_key NAME [--models a,b] [--expires-days N] [--admin]`: make a client key, print it last."""

from django.core.management.base import BaseCommand, CommandError

from routing.auth import api_key_create
from routing.models import Model


class Command(BaseCommand):
    """Create an API key and print the secret (shown this once) as the last line."""

    help = "Create a ChatVault API key. The key is printed once, as the last line of output."

    def add_arguments(self, parser):
        """Declare the command's arguments."""
        parser.add_argument("name", help="A label for the key (who or what uses it).")
        parser.add_argument("--models", default="", help="Comma-separated model names the key may use (default: all).")
        parser.add_argument("--expires-days", type=int, default=None, help="Expire the key after N days.")
        parser.add_argument("--admin", action="store_true", help="Also allow the /v1/admin/ endpoints.")

    def handle(self, *args, name, models, expires_days, admin, **options):
        """Create the key."""
        names = [n.strip() for n in models.split(",") if n.strip()]
        found = list(Model.objects.filter(name__in=names))
        missing = sorted(set(names) - {m.name for m in found})
        if missing:
            raise CommandError(f"unknown model(s): {', '.join(missing)}")
        if expires_days is not None and expires_days <= 0:
            raise CommandError("--expires-days must be a positive number of days")
        key, raw = api_key_create(name=name, models=found, expires_days=expires_days, is_admin=admin)
        scope = ", ".join(sorted(names)) if names else "all models"
        self.stdout.write(
            f"Created API key '{key.name}' ({key.prefix}…) for {scope}. Store it now: it is not shown again."
        )
        self.stdout.write(raw)
