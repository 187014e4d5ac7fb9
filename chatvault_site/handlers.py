"""An ASGI handler for the API paths that never leaves the event loop's thread.

Under Django's `ASGIHandler`, every request runs sync code through `sync_to_async`: each `MiddlewareMixin`
middleware (session, auth, CSRF, messages, …) hops to a thread for `process_request` and `process_response`, and so
do the `request_started` receivers and `response.close()`. Inside the per-request `ThreadSensitiveContext`, that
means a new thread per request; profiling showed the thread churn and GIL hand-offs dominating the gateway's CPU.

The API views are async, authenticate from the snapshot and never touch the database, so they need none of that:
`APIHandler` gives them a middleware chain of their own (request id only), skips the database housekeeping signal,
and closes the response inline (its `request_finished` receivers find no connection on the loop's thread). The admin
keeps Django's handler and full middleware stack, and so do the operator endpoints under `/v1/admin/`: they accept a
staff session, which needs the session and authentication middleware, and they are not on the hot path.
"""

import asyncio

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix

from routing import runtime
from routing.middleware import request_id_middleware

# Paths served by async views that never use the database.
API_PREFIXES = ("/v1/", "/healthz")
# Under /v1/ but served by Django's handler (session authentication, a database query).
ADMIN_API_PREFIX = "/v1/admin/"


def is_api_path(path):
    """Return whether the API handler serves this path."""
    return path.startswith(API_PREFIXES) and not path.startswith(ADMIN_API_PREFIX)


class APIHandler(ASGIHandler):
    """Serve the API paths on the event loop only."""

    def load_middleware(self, is_async=False):
        """Build this handler's own chain: request id middleware only, instead of settings.MIDDLEWARE."""
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler = convert_exception_to_response(self._get_response_async)
        self._middleware_chain = convert_exception_to_response(request_id_middleware(handler))

    async def handle(self, scope, receive, send):
        """Serve one request like Django does, minus the thread hops; count it in flight for the shutdown."""
        runtime.request_started()
        try:
            await self._serve(scope, receive, send)
        finally:
            runtime.request_finished()

    async def _serve(self, scope, receive, send):
        """Run the view, cancelling it if the client leaves or the server's graceful shutdown runs out."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        async def process_request():
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected while the response was being sent
            return response

        # As in Django: watch for a disconnect while the view runs, and cancel the view if it comes first.
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        processor = asyncio.create_task(process_request())
        try:
            await asyncio.wait((listener, processor), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Only the server cancels this handler (a client leaving is seen by the listener), and only when its
            # graceful shutdown has run out: cancel the view too, so that it answers and records that, instead
            # of running on unseen while the worker stops.
            runtime.stop_serving()
            asyncio.current_task().uncancel()
        for task in (listener, processor):
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if not processor.cancelled():
            processor.result().close()
        body_file.close()
