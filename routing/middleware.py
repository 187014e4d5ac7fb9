"""Middleware giving every response an `x-request-id` (the id its RequestLog row carries)."""

import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction


def request_id_middleware(get_response):
    """Attach a fresh request id to the request and echo it in the response headers."""
    if iscoroutinefunction(get_response):

        async def middleware(request):
            request.request_id = uuid.uuid4()
            response = await get_response(request)
            response["x-request-id"] = str(request.request_id)
            return response

        markcoroutinefunction(middleware)
    else:

        def middleware(request):
            request.request_id = uuid.uuid4()
            response = get_response(request)
            response["x-request-id"] = str(request.request_id)
            return response

    return middleware


request_id_middleware.sync_capable = True
request_id_middleware.async_capable = True
