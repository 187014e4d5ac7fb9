"""ASGI entry point: `chatvault_site.asgi:application`.

Reads each request's body first, bounded by CHATVAULT_MAX_BODY_BYTES, whatever the path; routes the API paths to
`APIHandler` (no thread hops, see chatvault_site/handlers.py) and everything else (admin) to Django's own handler;
and adds the lifespan protocol Django lacks, so each worker loads its routing snapshot before serving and flushes
its request log on graceful shutdown.
"""

import logging
import os
import uuid

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatvault_site.settings")

django_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (importable only once Django is set up)

from chatvault_site.handlers import APIHandler, StaticFilesHandler, is_api_path, read_limited_body  # noqa: E402
from routing import metrics, runtime  # noqa: E402

api_application = APIHandler()

if settings.CHATVAULT_SERVE_STATIC:
    django_application = StaticFilesHandler(django_application)


class WithoutQueryString(logging.Filter):
    """Log request paths without their query strings: a client may put its key there (`?api_key=…`)."""

    def filter(self, record):
        """Cut the query string off the path argument of uvicorn's access log line."""
        args = record.args
        if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


# uvicorn has configured its loggers by the time it imports this module.
logging.getLogger("uvicorn.access").addFilter(WithoutQueryString())


async def application(scope, receive, send):
    """Serve lifespan events ourselves, the API through APIHandler, and the rest through Django."""
    if scope["type"] == "lifespan":
        async with metrics.worker() as worker_metrics:

            async def send_when_metrics_stopped(message):
                # The server may end the process once the shutdown is complete: the live gauges go first.
                if message["type"] == "lifespan.shutdown.complete":
                    await worker_metrics.stop()
                await send(message)

            await runtime.lifespan(receive, send_when_metrics_stopped)
        return
    if scope["type"] == "http":
        receive = await read_limited_body(scope, receive, send)
        if receive is None:
            return  # answered already (413), or the client left
        if is_api_path(scope["path"]):
            await api_application(scope, receive, send)
            return
    await django_application(scope, receive, _with_request_id(send))


def _with_request_id(send):
    """Wrap send so that responses made outside the middleware (static files) carry an x-request-id too."""

    async def sender(message):
        if message["type"] == "http.response.start":
            headers = message.get("headers") or []
            if not any(name.lower() == b"x-request-id" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"x-request-id", str(uuid.uuid4()).encode())]}
        await send(message)

    return sender
