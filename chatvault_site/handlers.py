"""The gateway's ASGI handlers: one for the API paths that never leaves the event loop's thread, Django's static
files handler made safe, and the request body limit both paths share.

Under Django's `ASGIHandler`, every request runs sync code through `sync_to_async`: each `MiddlewareMixin`
middleware (session, auth, CSRF, messages, …) hops to a thread for `process_request` and `process_response`, and so
do the `request_started` receivers and `response.close()`. Inside the per-request `ThreadSensitiveContext`, that
means a new thread per request; profiling showed the thread churn and GIL hand-offs dominating the gateway's CPU.

The API views are async, authenticate from the snapshot and never touch the database on the loop's thread (feedback
reads the rated request on threads of its own, `experiments.feedback`), so they need none of that:
`APIHandler` gives them a middleware chain of their own (request id, Host check), skips the database housekeeping
signal, and closes the response inline (its `request_finished` receivers find no connection on the loop's thread).
It serves an explicit list of routes (`LEAN_PATHS`); everything else keeps Django's handler and full middleware
stack: the admin, the operator endpoints under `/v1/admin/` (they accept a staff session, which needs the session
and authentication middleware, and they are not on the hot path), and any route not made lean on purpose.

Every request's body is read first by `read_limited_body`, which refuses one larger than CHATVAULT_MAX_BODY_BYTES
before reading it, and before authentication (Django's own `read_body` would spool any size to a temporary file).
"""

import asyncio
import io
import json
import uuid

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import RequestAborted, SuspiciousOperation
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import Http404
from django.urls import set_script_prefix

from routing import request_log, runtime
from routing.errors import PayloadTooLarge
from routing.middleware import allowed_host_middleware, request_id_middleware

# The routes `APIHandler` serves: async views that never use the database on the event loop's thread. Every other
# path, a new endpoint included, runs on Django's handler with its per-request connection housekeeping. Add a route
# here only once its view is made lean on purpose (and declared so in tests/test_handlers.py); a prefix stands for one
# route's own parameter only. Each public route is served with and without /v1 (chatvault_site/urls.py).
LEAN_PATHS = frozenset(
    {
        *("/v1/chat/completions", "/chat/completions"),
        *("/v1/completions", "/completions"),
        *("/v1/embeddings", "/embeddings"),
        *("/v1/models", "/models"),
        *("/v1/feedback", "/feedback"),
        "/healthz",
    }
)
LEAN_PATH_PREFIXES = ("/v1/models/", "/models/")  # /models/<model>; a model name may hold slashes
# Takes no body: one sent to it is never read.
HEALTH_PATH = "/healthz"
# How long the rest of a refused body is read (and thrown away) so that the client gets to read the answer.
LINGER_SECONDS = 10.0


def is_api_path(path):
    """Return whether the lean API handler serves this path (one of the lean routes)."""
    return path in LEAN_PATHS or path.startswith(LEAN_PATH_PREFIXES)


def _content_length(scope):
    """Return the request's declared Content-Length, or None (chunked, absent or unreadable)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def read_limited_body(scope, receive, send):
    """Read the request body into memory; return a receive callable that replays it to the handler.

    A body larger than CHATVAULT_MAX_BODY_BYTES is answered with 413 before any more of it is read: at once when
    its Content-Length says so, else as soon as the chunks read add up to more. Return None when the request has
    been answered that way, or when the client left.
    """
    limit = settings.CHATVAULT_MAX_BODY_BYTES
    length = _content_length(scope)
    if length is not None and length > limit:
        await _refuse(receive, send, PayloadTooLarge(f"Request body exceeds {limit} bytes."))
        return None
    if scope["path"] == HEALTH_PATH:
        return _replay(b"", _body_left_unread)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            await _refuse(receive, send, PayloadTooLarge(f"Request body exceeds {limit} bytes."))
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return _replay(chunks[0] if len(chunks) == 1 else b"".join(chunks), receive)


def _replay(body, receive):
    """Return a receive callable that gives body as the whole request, then defers to receive (disconnects)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        if pending:
            return pending.pop()
        return await receive()

    return replay


async def _body_left_unread():
    """Receive nothing, ever: the next message would be the body we leave unread (the handler cancels this)."""
    await asyncio.get_running_loop().create_future()


async def _refuse(receive, send, error):
    """Answer with error before any handler ran, then let the client finish sending (its body thrown away).

    Most clients send the whole body before they read the answer: closing the connection under one that is still
    sending would reset it, and it would never see the answer. So the response is written in full at once, and
    only marked complete (letting uvicorn close the connection) once the body is in, or after LINGER_SECONDS.
    """
    request_log.Counters.refused_bodies += 1  # refused before authentication: counted, not stored
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", str(uuid.uuid4()).encode()),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": True})
    try:
        async with asyncio.timeout(LINGER_SECONDS):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    break
    except TimeoutError:
        pass
    await send({"type": "http.response.body", "body": b""})


class APIHandler(ASGIHandler):
    """Serve the API paths on the event loop only."""

    def load_middleware(self, is_async=False):
        """Build this handler's own chain (request id, Host check) instead of settings.MIDDLEWARE."""
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler = convert_exception_to_response(self._get_response_async)
        handler = convert_exception_to_response(allowed_host_middleware(handler))
        self._middleware_chain = convert_exception_to_response(request_id_middleware(handler))

    async def read_body(self, receive):
        """Return the request body as an in-memory file: `read_limited_body` has bounded it already."""
        body_file = io.BytesIO()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestAborted()
            body_file.write(message.get("body", b""))
            if not message.get("more_body", False):
                body_file.seek(0)
                return body_file

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


class StaticFilesHandler(ASGIStaticFilesHandler):
    """Django's static file handler, answering 404 to a path that points outside the static files."""

    def serve(self, request):
        """Serve the file; raise Http404 for a path Django finds suspicious (`..` and the like) instead of a 500."""
        try:
            return super().serve(request)
        except SuspiciousOperation:
            raise Http404("No such static file.") from None
