"""`manage.py rotate_upstream_secrets`: re-encrypt every stored upstream key under the first encryption key.

Rotation: put the new key first in CHATVAULT_ENCRYPTION_KEYS (keep the old ones after it), restart, run this,
then drop the old keys.
"""

from django.core.management.base import BaseCommand
from django.db import transaction

from routing import secrets
from routing.models import Provider, ProviderInstance


class Command(BaseCommand):
    """Re-encrypt upstream API keys with the current primary key."""

    help = "Re-encrypt every stored upstream API key under the first key of CHATVAULT_ENCRYPTION_KEYS."

    def handle(self, *args, **options):
        """Rotate every ciphertext in one transaction."""
        count = 0
        with transaction.atomic():
            for model in (Provider, ProviderInstance):
                for obj in model.objects.select_for_update().exclude(api_key_ciphertext=""):
                    obj.api_key_ciphertext = secrets.rotate(obj.api_key_ciphertext)
                    obj.save(update_fields=["api_key_ciphertext"])
                    count += 1
        self.stdout.write(f"Re-encrypted {count} upstream key(s).")
