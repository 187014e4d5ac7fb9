"""The API's description: `GET /v1/openapi.json` (OpenAPI 3.1, written by hand in routing/openapi.yaml) and the
page that renders it for people, `GET /docs/` (Swagger UI, served from drf-spectacular-sidecar's copy with the
other static files: no CDN, works offline).

The document is read and encoded once per process, on the first call; neither route is on the model traffic's path.
"""

import functools
import json
from pathlib import Path

import yaml
from django.http import HttpResponse
from django.template.loader import render_to_string
from django.urls import reverse

SOURCE = Path(__file__).with_name("openapi.yaml")


@functools.cache
def document():
    """Return the OpenAPI document as plain values (read once)."""
    with SOURCE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@functools.cache
def _document_json():
    """Return the OpenAPI document as JSON bytes (encoded once)."""
    return json.dumps(document(), ensure_ascii=False).encode()


async def openapi_json(request):
    """Answer the OpenAPI document; no authentication, like the page that shows it."""
    return HttpResponse(_document_json(), content_type="application/json")


async def docs(request):
    """Answer the API reference page, which renders the OpenAPI document in the browser."""
    context = {"title": document()["info"]["title"], "schema_url": reverse("openapi")}
    return HttpResponse(render_to_string("openapi/docs.html", context))
