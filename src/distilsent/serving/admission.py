"""What a request must pass before the app sees it (:class:`Limits`): an allowed ``Host``, and for the routes
that read a body, a JSON body within the size limit, received in time, and a free slot among the requests
being served. The answers are the service's JSON errors: 400, 415, 413, 408, 429, and 503 for a request cut
off by the shutdown deadline.
"""

from __future__ import annotations

import asyncio

from .metrics import Metrics, error_response
from .settings import ServiceSettings

BODY_ROUTES = ("/", "/predict", "/explain")  # the POST routes that read a body; others answer 404/405 unread


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class Limits:
    """What a request must pass before the app sees it.

    Every request: its ``Host`` must be allowed (DNS rebinding). A POST to a route that reads a body
    (:data:`BODY_ROUTES`): its body must be JSON (415; a page on another site can post forms and text to a
    local server without asking, but not JSON), at most ``max_body_bytes`` (413 from ``Content-Length`` at
    once, else while reading), and fully received within ``body_timeout`` (408). Only then is it counted
    against ``max_concurrent_requests`` (429): clients trickling their bodies hold no slot. A request cut
    off by the server's shutdown deadline gets a JSON 503 instead of uvicorn's bare 500.
    """

    def __init__(self, app, settings: ServiceSettings, metrics: Metrics):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.active = 0

    def reject(self, status: int, error_type: str, message: str, close: bool = False):
        return error_response(self.metrics, status, error_type, message, close)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        s = self.settings
        host = (_header(scope, b"host") or b"").decode("latin-1")
        if not s.host_allowed(host):
            message = f"Host {host!r} is not served here; allow it with --allowed-hosts"
            return await self.reject(400, "bad_host", message, close=True)(scope, receive, send)
        if scope["method"] != "POST" or scope["path"] not in BODY_ROUTES:
            # No body to hold (probes must answer even when requests pile up), or a route that takes none:
            # the router's 404/405 (with Allow), not a 415 about a body nobody reads.
            return await self.app(scope, receive, send)
        content_type = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/json" and not content_type.endswith(b"+json"):
            message = "the body must be JSON sent as Content-Type: application/json"
            return await self.reject(415, "unsupported_media_type", message, close=True)(scope, receive, send)
        too_large = f"request body over the limit of {s.max_body_bytes} bytes"
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > s.max_body_bytes:
            return await self.reject(413, "too_large", too_large, close=True)(scope, receive, send)

        body = bytearray()

        async def read() -> bool:
            """The whole body into ``body``; False if the client hung up or sent too much."""
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return False
                body.extend(message.get("body", b""))
                if len(body) > s.max_body_bytes:
                    return False
                if not message.get("more_body", False):
                    return True

        try:
            complete = await asyncio.wait_for(read(), s.body_timeout)
        except asyncio.TimeoutError:
            message = f"request body not received within {s.body_timeout:g} s"
            return await self.reject(408, "timeout", message, close=True)(scope, receive, send)
        if not complete:
            if len(body) > s.max_body_bytes:
                return await self.reject(413, "too_large", too_large, close=True)(scope, receive, send)
            return  # the client hung up: nobody to answer (the access log records 499)
        if self.active >= s.max_concurrent_requests:
            message = f"too many concurrent requests (limit {s.max_concurrent_requests}); retry later"
            return await self.reject(429, "overloaded", message)(scope, receive, send)

        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body only a disconnect can come
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        started = False

        async def send_started(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.active += 1
        try:
            await self.app(scope, replay, send_started)
        except asyncio.CancelledError:
            # uvicorn cancels requests that outlast the shutdown timeout; answer them properly.
            if started:
                raise
            message = "the server is shutting down; retry on another instance or later"
            await self.reject(503, "unhealthy", message, close=True)(scope, receive, send)
        finally:
            self.active -= 1
