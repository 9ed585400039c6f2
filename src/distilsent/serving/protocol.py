"""The HTTP/1.1 protocol the server speaks (:class:`GuardedHttp`): uvicorn's, with a deadline and a size limit
on a request's headers, and its own errors answered as JSON like every other error of the service.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from . import missing_extra

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as e:
    raise missing_extra(e) from None

from .metrics import NO_STORE, NOSNIFF


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with the two guards it lacks: a request's headers must arrive within
    ``header_timeout`` seconds of the connection opening (or of the previous response) and be at most
    ``h11_max_incomplete_event_size`` bytes. A silent socket or one trickling headers is closed; too
    large headers get 431, and a malformed request a JSON 400. (The body has its own deadline, in
    :class:`Limits`.)"""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_head()

    def _await_head(self) -> None:
        self._head_bytes = 0
        self._head_started = False  # past the blank lines that may come before a request line
        self._head_tail = b""  # the head's last bytes so far: its blank line may straddle two reads
        self._head_deadline = self.loop.call_later(self.config.header_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if getattr(self, "_head_deadline", None) is not None:
            # Counted before parsing, up to the blank line: a head that ends within this read counts too,
            # however large (70,000 bytes in one read would otherwise pass a 64 KiB limit).
            self._head_bytes += self._head_in(data)
            if self._head_bytes > self.config.h11_max_incomplete_event_size:
                self._head_deadline.cancel()
                self._head_deadline = None
                self._send_error(431, "request headers over the size limit", "headers_too_large")
                return
        super().data_received(data)

    def _head_in(self, data: bytes) -> int:
        """How many bytes of ``data`` belong to the head being read: up to and including the blank line that
        ends it (CRLF, or the bare LF the parser also takes), else all. Blank lines before the request line,
        which the parser skips, do not end it."""
        seen = self._head_tail + data
        start = 0
        if not self._head_started:
            start = len(seen) - len(seen.lstrip(b"\r\n"))
            self._head_started = start < len(seen)
        ends = [at + len(blank) for blank in (b"\r\n\r\n", b"\n\n") if (at := seen.find(blank, start)) >= 0]
        head = (min(ends) if ends else len(seen)) - len(self._head_tail)
        self._head_tail = seen[: len(self._head_tail) + head][-3:]
        return head

    def send_400_response(self, msg: str) -> None:
        self._send_error(400, msg, "bad_request")  # uvicorn's own is text/plain

    def _send_error(self, status: int, message: str, error_type: str) -> None:
        """An error answered by the protocol itself, JSON as every other, and the connection closed."""
        body = json.dumps({"error": message, "error_type": error_type}).encode()
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [f"{name}: {value}".encode() for name, value in (NOSNIFF, NO_STORE)]
        head += [b"content-type: application/json", b"connection: close", b"content-length: %d" % len(body)]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()

    def on_headers_complete(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._head_deadline is None:
            self._await_head()

    def connection_lost(self, exc) -> None:
        if getattr(self, "_head_deadline", None) is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)
