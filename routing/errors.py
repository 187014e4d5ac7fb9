"""Errors the gateway returns, all in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

import logging

from django.http import JsonResponse
from rest_framework import exceptions as drf_exceptions

from routing.models import Outcome

logger = logging.getLogger(__name__)


class GatewayError(drf_exceptions.APIException):
    """Base of every error the gateway answers with; carries the OpenAI error fields and the log outcome."""

    status_code = 500
    default_detail = "The gateway failed to handle the request."
    default_code = None
    error_type = "api_error"
    outcome = Outcome.INTERNAL_ERROR

    def __init__(self, message=None, *, param=None, code=None, headers=None):
        self.message = message or self.default_detail
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}
        super().__init__(self.message, self.code)

    def body(self):
        """Return the OpenAI-shaped error body."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def response(self):
        """Return the error as a JSON response with its headers."""
        resp = JsonResponse(self.body(), status=self.status_code)
        for name, value in self.headers.items():
            resp[name] = value
        return resp


class InvalidRequest(GatewayError):
    """The request body is malformed or asks for something the gateway refuses."""

    status_code = 400
    default_detail = "Invalid request."
    error_type = "invalid_request_error"
    outcome = Outcome.CLIENT_ERROR


class AuthenticationFailed(GatewayError):
    """No usable API key was presented."""

    status_code = 401
    default_detail = "Missing or invalid API key."
    default_code = "invalid_api_key"
    error_type = "authentication_error"
    outcome = Outcome.CLIENT_ERROR


class PermissionDenied(GatewayError):
    """The key is valid but may not do this."""

    status_code = 403
    default_detail = "This API key may not use this resource."
    default_code = "permission_denied"
    error_type = "permission_error"
    outcome = Outcome.CLIENT_ERROR


class ModelNotFound(GatewayError):
    """The requested model does not exist or is disabled."""

    status_code = 404
    default_code = "model_not_found"
    error_type = "invalid_request_error"
    outcome = Outcome.CLIENT_ERROR


class NotFound(GatewayError):
    """The URL does not exist."""

    status_code = 404
    default_detail = "Not found."
    default_code = "not_found"
    error_type = "invalid_request_error"
    outcome = Outcome.CLIENT_ERROR


class MethodNotAllowed(GatewayError):
    """The URL exists but not for this HTTP method."""

    status_code = 405
    default_code = "method_not_allowed"
    error_type = "invalid_request_error"
    outcome = Outcome.CLIENT_ERROR


class PayloadTooLarge(GatewayError):
    """The request body exceeds CHATVAULT_MAX_BODY_BYTES."""

    status_code = 413
    default_detail = "Request body too large."
    default_code = "request_too_large"
    error_type = "invalid_request_error"
    outcome = Outcome.CLIENT_ERROR


class UpstreamRateLimited(GatewayError):
    """Every instance that could serve is rate limited upstream."""

    status_code = 429
    default_detail = "The upstream provider is rate limiting requests; retry later."
    default_code = "upstream_rate_limited"
    error_type = "rate_limit_error"
    outcome = Outcome.RATE_LIMITED


class UpstreamError(GatewayError):
    """The upstream failed (5xx, connection error, unusable answer, or rejected the gateway's credentials)."""

    status_code = 502
    default_detail = "The upstream provider failed."
    default_code = "upstream_error"
    error_type = "api_error"
    outcome = Outcome.UPSTREAM_ERROR


class NoCapacity(GatewayError):
    """No enabled instance can serve the model right now."""

    status_code = 503
    default_detail = "No instance is available to serve this model."
    default_code = "no_capacity"
    error_type = "api_error"
    outcome = Outcome.NO_CAPACITY


class ServerShutdown(GatewayError):
    """The gateway is shutting down and stopped this request before it was done."""

    status_code = 503
    default_detail = "The gateway is shutting down; retry the request."
    default_code = "server_shutdown"
    error_type = "api_error"
    outcome = Outcome.SERVER_SHUTDOWN


class UpstreamTimeout(GatewayError):
    """The upstream did not answer in time."""

    status_code = 504
    default_detail = "The upstream provider timed out."
    default_code = "upstream_timeout"
    error_type = "api_error"
    outcome = Outcome.UPSTREAM_TIMEOUT


_DRF_TO_GATEWAY = {
    drf_exceptions.NotFound: NotFound,
    drf_exceptions.MethodNotAllowed: MethodNotAllowed,
    drf_exceptions.ParseError: InvalidRequest,
    drf_exceptions.NotAuthenticated: AuthenticationFailed,
    drf_exceptions.AuthenticationFailed: AuthenticationFailed,
    drf_exceptions.PermissionDenied: PermissionDenied,
}


def as_gateway_error(exc):
    """Return exc as a GatewayError, hiding the details of anything unexpected."""
    if isinstance(exc, GatewayError):
        return exc
    for drf_class, gateway_class in _DRF_TO_GATEWAY.items():
        if isinstance(exc, drf_class):
            return gateway_class(str(exc.detail))
    logger.exception("unhandled error", exc_info=exc)
    return GatewayError()


def exception_handler(exc, context):
    """DRF exception handler: answer every error in OpenAI's shape, never with a traceback."""
    return as_gateway_error(exc).response()
