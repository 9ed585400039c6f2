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
# A body over the limit is still read, into nothing, up to this many bytes (within --body-timeout), before its
# 413 is sent: closing a connection whose client is still sending resets it, and the client never reads why.
# A body declared larger than this is answered at once (its client may then see a reset instead).
DRAIN_BYTES = 16 << 20


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class Limits:
    """What a request must pass before the app sees it.

    Every request: its ``Host`` must be allowed (DNS rebinding). A POST to a route that reads a body
    (:data:`BODY_ROUTES`): its body must be JSON (415; a page on another site can post forms and text to a
    local server without asking, but not JSON), at most ``max_body_bytes`` (413, once the client has sent
    it all, up to :data:`DRAIN_BYTES`; at once when ``Content-Length`` says it will be over that, or when the
    client waits for ``100 Continue``), and fully received within ``body_timeout`` (408). Only then is it counted
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
        size = int(declared) if declared is not None and declared.isdigit() else 0
        waits = (_header(scope, b"expect") or b"").lower() == b"100-continue"  # reading would ask for the body
        if size > s.max_body_bytes and (size > DRAIN_BYTES or waits):
            return await self.reject(413, "too_large", too_large, close=True)(scope, receive, send)
        outcome, body = await self._read(receive)
        if outcome == "late":
            message = f"request body not received within {s.body_timeout:g} s"
            return await self.reject(408, "timeout", message, close=True)(scope, receive, send)
        if outcome == "too_large":
            return await self.reject(413, "too_large", too_large, close=True)(scope, receive, send)
        if outcome == "gone":
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
            return {"type": "http.request", "body": body, "more_body": False}

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

    async def _read(self, receive) -> tuple[str, bytes]:
        """The body, within ``body_timeout``: ``("complete", body)``; ``("too_large", b"")`` once it is over
        ``max_body_bytes`` and has ended, or reached :data:`DRAIN_BYTES` or the deadline (what arrives past
        the limit is counted, not kept); ``("late", b"")`` past the deadline; ``("gone", b"")`` if the client
        hung up."""
        s = self.settings
        body = bytearray()
        received = 0

        async def read() -> bool:
            """False if the client hung up."""
            nonlocal received
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return False
                chunk = message.get("body", b"")
                received += len(chunk)
                if received <= s.max_body_bytes:
                    body.extend(chunk)
                elif body:
                    body.clear()
                if not message.get("more_body", False) or received > DRAIN_BYTES:
                    return True

        try:
            ended = await asyncio.wait_for(read(), s.body_timeout)
        except asyncio.TimeoutError:
            return ("too_large" if received > s.max_body_bytes else "late"), b""
        if not ended:
            return "gone", b""
        return ("too_large", b"") if received > s.max_body_bytes else ("complete", bytes(body))
