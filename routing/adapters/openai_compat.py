"""Pass-through adapter for upstreams that speak the OpenAI API: pooled aiohttp, body forwarded as-is.

The client's JSON body is forwarded with only `model` replaced (and stream usage requested), the answer's bytes
are relayed without re-modelling, and stream chunks are relayed as they arrive; usage is tapped from the one chunk
that carries it. Legacy text completions (`POST {api_base}/completions`, `legacy_complete` / `legacy_stream`) go
the same way: only the path differs, and their answers and chunks have the same `choices`, `finish_reason` and
`usage` the relay reads. So do embeddings (`POST {api_base}/embeddings`), whose answer is relayed as it came.
"""

import asyncio
import json
import logging

import aiohttp

from routing.adapters import (
    OPENAI_COMPATIBLE_KINDS,
    Completion,
    StreamChunk,
    UpstreamFailure,
    _masked,
    embeddings_data,
    retry_after_seconds,
)

logger = logging.getLogger(__name__)

_DONE = b"[DONE]"
CHAT_PATH = "chat/completions"
LEGACY_PATH = "completions"
EMBEDDINGS_PATH = "embeddings"


def _error_message(status, raw):
    """Return the upstream's error message from an error body, or a generic one."""
    if 300 <= status < 400:
        return f"upstream redirected (HTTP {status}); redirects are not followed"
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
    except (ValueError, AttributeError):
        pass
    return f"upstream answered HTTP {status}"


class OpenAICompatAdapter:
    """Forward chat requests to an OpenAI-compatible endpoint."""

    def __init__(self):
        self._session = None
        self._loop = None

    def session(self):
        """Return this event loop's pooled client session, creating it on first use."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=True,
                read_bufsize=2**20,  # stream lines (one chunk each) up to ~1 MiB, e.g. large tool-call arguments
                skip_auto_headers=("User-Agent",),
            )
            self._loop = loop
        return self._session

    async def close(self):
        """Close the pooled connections."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _request(self, instance, body, stream, path):
        """Return (url, headers, payload bytes) for a call to this instance's path."""
        base = instance.api_base or OPENAI_COMPATIBLE_KINDS.get(instance.provider_kind)
        if not base:
            raise UpstreamFailure("connection", f"instance {instance.id} has no api_base configured")
        payload = dict(body)
        payload["model"] = instance.upstream_model
        if stream:
            # Always ask for the usage chunk so cost is recorded; it is removed for clients that did not ask.
            payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
        if instance.api_key:
            headers["Authorization"] = f"Bearer {instance.api_key}"
        return f"{base.rstrip('/')}/{path}", headers, json.dumps(payload, separators=(",", ":")).encode()

    async def _post(self, instance, body, stream, path):
        """Send the request and return the response once its status is known to be a success."""
        url, headers, payload = self._request(instance, body, stream, path)
        try:
            # Never follow a redirect: it would replay the request, upstream key included, to another host.
            resp = await self.session().post(url, data=payload, headers=headers, allow_redirects=False)
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("connection", f"cannot reach upstream: {exc.__class__.__name__}") from exc
        if resp.status >= 300:
            try:
                raw = await resp.read()
            except aiohttp.ClientError:
                raw = b""
            finally:
                resp.release()
            raise UpstreamFailure(
                "status",
                _error_message(resp.status, raw),
                status=resp.status,
                retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
            )
        return resp

    async def complete(self, instance, body, path=CHAT_PATH):
        """Return the upstream's chat.completion (or text_completion, for the legacy path)."""
        data, raw = await self._answer(instance, body, path)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamFailure("bad_response", "upstream answered without choices")
        return Completion(body=raw, data=data)

    async def embed(self, instance, body):
        """Return the upstream's embeddings list, relayed as it came (base64 when the client asked for it)."""
        data, raw = await self._answer(instance, body, EMBEDDINGS_PATH)
        if not embeddings_data(data):
            raise UpstreamFailure("bad_response", "upstream answered without embeddings")
        return Completion(body=raw, data=data)

    async def _answer(self, instance, body, path):
        """Return (parsed JSON, raw bytes) of a non-streaming call's successful answer."""
        resp = await self._post(instance, body, stream=False, path=path)
        try:
            raw = await resp.read()
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("connection", f"upstream connection failed: {exc.__class__.__name__}") from exc
        finally:
            resp.release()
        try:
            return json.loads(raw), raw
        except ValueError:
            raise UpstreamFailure("bad_response", "upstream answered with a body that is not JSON") from None

    async def stream(self, instance, body, path=CHAT_PATH):
        """Yield the upstream's chunks as they arrive."""
        resp = await self._post(instance, body, stream=True, path=path)
        finished = done = False
        try:
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    if line.strip() and not line.startswith((b":", b"event:", b"id:", b"retry:")):
                        raise UpstreamFailure("bad_response", "upstream stream holds a line that is not SSE")
                    continue
                data = line[5:].strip()
                if data == _DONE:
                    done = True
                    return
                chunk = StreamChunk(data=data)
                # Only a few chunks carry usage, finish_reason or an error; parse just those.
                if b'"usage"' in data or b'"error"' in data or b'"choices":[]' in data:
                    try:
                        parsed = json.loads(data)
                    except ValueError:
                        raise UpstreamFailure("bad_response", "upstream stream chunk is not JSON") from None
                    if parsed.get("error"):
                        err = parsed["error"]
                        message = err.get("message") if isinstance(err, dict) else str(err)
                        raise UpstreamFailure("status", f"upstream stream error: {message}", status=502)
                    chunk.usage = parsed.get("usage") or None
                    chunk.has_choices = bool(parsed.get("choices"))
                elif not data.startswith(b"{"):
                    raise UpstreamFailure("bad_response", "upstream stream chunk is not JSON")
                if b'"finish_reason":"' in data or b'"finish_reason": "' in data:
                    finished = True
                yield chunk
            if not finished:
                raise UpstreamFailure("bad_response", "upstream stream ended before it finished")
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("connection", f"upstream stream broke: {exc.__class__.__name__}") from exc
        finally:
            # A stream left early (client gone, timeout, error) must not return a half-read connection to the pool.
            if done:
                resp.release()
            else:
                resp.close()

    async def probe(self, instance):
        """Check that the instance answers `GET /models` with its key; raise UpstreamFailure otherwise."""
        base = instance.api_base or OPENAI_COMPATIBLE_KINDS.get(instance.provider_kind)
        if not base:
            raise UpstreamFailure("connection", f"instance {instance.id} has no api_base configured")
        headers = {"Accept": "application/json"}
        if instance.api_key:
            headers["Authorization"] = f"Bearer {instance.api_key}"
        # Probes run rarely and usually on a loop of their own (a Celery task's asyncio.run), so a short-lived
        # session is used instead of the pool, which is bound to the serving loop. The caller applies the timeout.
        async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as session:
            try:
                async with session.get(f"{base.rstrip('/')}/models", headers=headers, allow_redirects=False) as resp:
                    raw = await resp.read()
            except aiohttp.ClientError as exc:
                raise UpstreamFailure("connection", f"cannot reach upstream: {exc.__class__.__name__}") from exc
        if not 200 <= resp.status < 300:
            raise UpstreamFailure(
                "status",
                _error_message(resp.status, raw),
                status=resp.status,
                retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
            )


adapter = OpenAICompatAdapter()


async def legacy_complete(instance, body):
    """Return the instance's legacy text completion for body; raise UpstreamFailure (secrets masked) on failure."""
    try:
        return await adapter.complete(instance, body, LEGACY_PATH)
    except UpstreamFailure as exc:
        raise _masked(exc, instance) from None


async def legacy_stream(instance, body):
    """Yield the instance's legacy text completion chunks; raise UpstreamFailure (secrets masked) on failure."""
    chunks = adapter.stream(instance, body, LEGACY_PATH)
    try:
        async for chunk in chunks:
            yield chunk
    except UpstreamFailure as exc:
        raise _masked(exc, instance) from None
    finally:
        await chunks.aclose()
