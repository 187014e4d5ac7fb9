"""Middleware of the API handler's own chain: an `x-request-id` on every response (the id its RequestLog row
carries), and the Host check Django's CommonMiddleware does for the admin."""

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


def allowed_host_middleware(get_response):
    """Refuse a request whose Host is not in ALLOWED_HOSTS: `get_host()` raises DisallowedHost, answered with 400."""

    async def middleware(request):
        request.get_host()
        return await get_response(request)

    return middleware


allowed_host_middleware.sync_capable = False
allowed_host_middleware.async_capable = True
