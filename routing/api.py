"""The OpenAI-compatible HTTP API: `/v1/chat/completions`, legacy `/v1/completions`, `/v1/embeddings`, `/v1/models`,
and `/healthz` (each public route also without `/v1`, see chatvault_site/urls.py).

Views only adapt HTTP: authenticate against the snapshot, parse, hand the request to `services.ChatRequest` (or
`completions.CompletionRequest`, `embeddings.EmbeddingRequest`), and shape the answer. Nothing here touches the
database.
"""

import inspect
import json
import logging
from datetime import UTC, datetime

from adrf.views import APIView
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views import defaults
from rest_framework.renderers import JSONRenderer

from experiments import feedback
from routing import auth, loop_monitor, request_log, runtime, snapshot
from routing.completions import CompletionRequest
from routing.embeddings import EmbeddingRequest
from routing.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NoCapacity,
    NotFound,
    PayloadTooLarge,
    ServerShutdown,
    as_gateway_error,
)
from routing.models import Outcome
from routing.services import ChatRequest

logger = logging.getLogger(__name__)


async def current_snapshot():
    """Return the snapshot in force, starting the worker first if no lifespan event did."""
    snap = snapshot.current()
    if snap is None:
        await runtime.startup()
        snap = snapshot.current()
        if snap is None:
            raise NoCapacity("The gateway is starting.")
    return snap


def authenticate_request(request, snap):
    """Return the request's KeyConfig, counting (not storing) failures."""
    try:
        return auth.authenticate(request.headers.get("Authorization"), snap, datetime.now(UTC))
    except GatewayError:
        request_log.Counters.unauthenticated += 1
        raise


def _read_json(request):
    """Return the parsed JSON body; raise PayloadTooLarge or InvalidRequest."""
    length = request.META.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > settings.CHATVAULT_MAX_BODY_BYTES:
        raise PayloadTooLarge(f"Request body exceeds {settings.CHATVAULT_MAX_BODY_BYTES} bytes.")
    try:
        raw = request.body
    except RequestDataTooBig:
        raise PayloadTooLarge(f"Request body exceeds {settings.CHATVAULT_MAX_BODY_BYTES} bytes.") from None
    if len(raw) > settings.CHATVAULT_MAX_BODY_BYTES:
        raise PayloadTooLarge(f"Request body exceeds {settings.CHATVAULT_MAX_BODY_BYTES} bytes.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("The request body is not valid JSON.") from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None


def _served_headers(response, chat):
    """Add the headers that say which model and instance served the request (and why, when it was selected)."""
    response["x-chatvault-model"] = chat.model.name
    response["x-chatvault-instance"] = chat.instance.id
    if chat.context_type:
        response["x-chatvault-context-type"] = chat.context_type
        response["x-chatvault-selection-reason"] = chat.selection_reason
    return _experiment_headers(response, chat)


def _experiment_headers(response, chat):
    """Add the experiment and variant a request was enrolled in (on errors too: a failure counts for its variant)."""
    if chat.assignment:
        response["x-chatvault-experiment"] = chat.assignment.experiment.id
        response["x-chatvault-variant"] = chat.assignment.variant.name
    return response


class GatewayView(APIView):
    """Base for the API views: async, no DRF authentication, errors in OpenAI's shape, always JSON (or SSE)."""

    renderer_classes = [JSONRenderer]
    parser_classes = []
    authentication_classes = []
    permission_classes = []
    throttle_classes = []

    def perform_content_negotiation(self, request, force=False):
        """Answer JSON whatever `Accept` or `?format=` asks for, as OpenAI does: the shape of the API is fixed."""
        return self.renderer_classes[0](), "application/json"

    def options(self, request, *args, **kwargs):
        """Answer OPTIONS with the allowed methods only: no description of the view to unauthenticated callers."""
        response = HttpResponse(status=204)
        response["Allow"] = ", ".join(self.allowed_methods)
        return response

    async def async_dispatch(self, request, *args, **kwargs):
        """Dispatch like adrf, but run DRF's `initial` inline instead of on the shared sync thread.

        With no authenticators, permissions or throttles configured, `initial` is pure CPU work; adrf's
        `sync_to_async` hop would serialise every request through one thread.
        """
        self.args, self.kwargs = args, kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            self.initial(request, *args, **kwargs)
            handler = getattr(self, request.method.lower(), None)
            if request.method.lower() not in self.http_method_names or handler is None:
                raise MethodNotAllowed(f"Method {request.method} is not allowed here.")
            response = handler(request, *args, **kwargs)
            if inspect.isawaitable(response):
                response = await response  # our handlers; DRF's own (OPTIONS) are plain CPU work
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response


class ChatCompletionsView(GatewayView):
    """POST /v1/chat/completions — OpenAI chat completions, streaming or not."""

    service = ChatRequest

    async def post(self, request):
        """Serve one chat completion."""
        snap = await current_snapshot()
        key = authenticate_request(request, snap)
        chat = self.service(
            request_id=request.request_id, key=key, snapshot=snap, session=request.headers.get("x-chatvault-session")
        )
        try:
            chat.resolve_model(_read_json(request))
            if chat.stream:
                relay = await chat.open_stream()
                response = StreamingHttpResponse(relay, content_type="text/event-stream")
                response["Cache-Control"] = "no-cache"
                response["X-Accel-Buffering"] = "no"  # stop nginx from buffering the stream
                return _served_headers(response, chat)
            completion = await chat.complete()
        except BaseException as exc:
            if isinstance(exc, Exception):
                error = as_gateway_error(exc)
                chat.record_error(error)
                return _experiment_headers(error.response(), chat)
            if runtime.stopping():
                # Cancelled by the server: its graceful shutdown ran out before the upstream answered.
                error = ServerShutdown()
                chat.record_error(error)
                return _experiment_headers(error.response(), chat)
            # Cancelled: the client went away (Django cancels the view on disconnect).
            chat.record(Outcome.CLIENT_DISCONNECTED, 499)
            raise
        chat.record(Outcome.OK, 200)
        return _served_headers(HttpResponse(completion.body, content_type="application/json"), chat)


class CompletionsView(ChatCompletionsView):
    """POST /v1/completions — OpenAI's legacy text completions, streaming or not, for pass-through models."""

    service = CompletionRequest


class EmbeddingsView(ChatCompletionsView):
    """POST /v1/embeddings — OpenAI embeddings of a string or a batch of inputs, for embedding models."""

    service = EmbeddingRequest


def _model_entry(model):
    """Return a model in OpenAI's list shape."""
    return {"id": model.name, "object": "model", "created": model.created, "owned_by": "chatvault"}


class ModelsView(GatewayView):
    """GET /v1/models — the enabled models this key may use."""

    async def get(self, request):
        """List models."""
        snap = await current_snapshot()
        key = authenticate_request(request, snap)
        chat = ChatRequest(request_id=request.request_id, key=key, snapshot=snap, endpoint="models")
        data = [_model_entry(m) for name, m in sorted(snap.models.items()) if key.may_use(name)]
        chat.record(Outcome.OK, 200)
        return JsonResponse({"object": "list", "data": data})


class RecommendView(GatewayView):
    """POST /v1/models/recommend — the models automatic selection would choose from for a chat request, and why."""

    async def post(self, request):
        """Rank the models for the request's body; no upstream is called."""
        snap = await current_snapshot()
        key = authenticate_request(request, snap)
        chat = ChatRequest(request_id=request.request_id, key=key, snapshot=snap, endpoint="models.recommend")
        try:
            result = chat.recommend(_read_json(request))
        except Exception as exc:
            error = as_gateway_error(exc)
            chat.record_error(error)
            return error.response()
        chat.record(Outcome.OK, 200)
        return JsonResponse(result)


class ModelDetailView(GatewayView):
    """GET /v1/models/{model} — one model, if this key may use it."""

    async def get(self, request, model):
        """Retrieve one model."""
        snap = await current_snapshot()
        key = authenticate_request(request, snap)
        chat = ChatRequest(request_id=request.request_id, key=key, snapshot=snap, endpoint="models")
        found = snap.models.get(model)
        if found is None or not key.may_use(model):
            error = ModelNotFound(f"The model '{model}' does not exist.", param="model")
            chat.record_error(error)
            return error.response()
        chat.record(Outcome.OK, 200)
        return JsonResponse(_model_entry(found))


async def healthz(request):
    """Answer 200 once this worker has loaded its routing snapshot, else 503."""
    snap = snapshot.current()
    if snap is None:
        try:
            snap = await current_snapshot()
        except Exception:
            # The body stays terse (no auth here); the reason goes to the log, where operators look.
            logger.exception("worker start-up failed; /healthz answers 503")
            return JsonResponse({"status": "starting"}, status=503)
    return JsonResponse(
        {
            "status": "ok",
            "models": len(snap.models),
            "config_loaded_at": snap.loaded_at,
            "config_revision": str(snap.token) if snap.token else None,
            "request_log": request_log.stats(),
            "feedback": feedback.stats(),
            "event_loop": loop_monitor.monitor.stats(),
        }
    )


# The first path segments of OpenAI's routes: clients configured with a base URL without /v1 call them at the root.
OPENAI_ROOTS = frozenset(
    {"chat", "completions", "models", "feedback", "embeddings", "responses", "audio", "images", "files", "batches",
     "moderations", "assistants", "threads", "vector_stores", "fine_tuning", "uploads"}
)  # fmt: skip


def looks_like_api_call(request):
    """Return whether a request is an API client's: under /v1/, at an OpenAI route's root, or with a bearer key or a
    JSON body (which browsers do not send), so that its errors are answered in OpenAI's shape."""
    path = request.path
    if path.startswith("/v1/") or path.split("/", 2)[1] in OPENAI_ROOTS:
        return True
    bearer = request.headers.get("Authorization", "")[:7].lower() == "bearer "
    return bearer or request.content_type == "application/json"


def not_found(request, exception=None):
    """Answer unknown API URLs in OpenAI's error shape, and others with Django's page."""
    if looks_like_api_call(request):
        return NotFound(f"No route for {request.method} {request.path}.").response()
    return defaults.page_not_found(request, exception)


def bad_request(request, exception=None):
    """Answer requests Django rejects before routing (e.g. a disallowed Host) in OpenAI's shape for the API."""
    if looks_like_api_call(request):
        return InvalidRequest("Bad request.").response()
    return defaults.bad_request(request, exception)


def server_error(request):
    """Answer unexpected errors in OpenAI's error shape, never with a traceback."""
    return GatewayError().response()
