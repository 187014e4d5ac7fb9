"""ASGI entry point: `chatvault_site.asgi:application`.

Adds the lifespan protocol to Django's ASGI app (Django has none), so each worker loads its routing snapshot before
serving and flushes its request log on graceful shutdown.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatvault_site.settings")

django_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (settings are configured by get_asgi_application)

from routing import runtime  # noqa: E402

if settings.CHATVAULT_SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_application = ASGIStaticFilesHandler(django_application)


async def application(scope, receive, send):
    """Serve lifespan events ourselves and everything else through Django."""
    if scope["type"] == "lifespan":
        await runtime.lifespan(receive, send)
        return
    await django_application(scope, receive, send)
