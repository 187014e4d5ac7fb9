"""ChatVault project package: settings, URLs, the ASGI entry point and the Celery app."""

from chatvault_site.celery import app as celery_app

__all__ = ["celery_app"]
