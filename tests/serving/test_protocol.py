"""The guarded uvicorn protocol (serving/protocol.py): silent sockets closed, headers over the limit 431."""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")

from distilsent.serving.app import ServiceSettings, create_app  # noqa: E402

from .kit import exchange, uvicorn_server  # noqa: E402


def test_uvicorn_protocol_closes_silent_sockets_and_refuses_huge_headers(clf):
    import socket as sockets

    app = create_app(ServiceSettings(), load=lambda: clf)
    with uvicorn_server(app, h11_max_incomplete_event_size=2048, header_timeout=0.5) as url:
        port = int(url.rsplit(":", 1)[1])
        with sockets.create_connection(("127.0.0.1", port), timeout=20) as silent:
            assert silent.recv(100) == b""  # closed by the server, not by our timeout
        with sockets.create_connection(("127.0.0.1", port), timeout=20) as trickle:
            trickle.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")  # and never ends its headers
            assert trickle.recv(100) == b""
        with sockets.create_connection(("127.0.0.1", port), timeout=20) as huge:
            huge.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 4096)
            assert huge.recv(100).startswith(b"HTTP/1.1 431")
        with sockets.create_connection(("127.0.0.1", port), timeout=20) as fine:
            fine.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert fine.recv(100).startswith(b"HTTP/1.1 ")


def test_headers_over_the_limit_are_431_even_when_they_arrive_whole(clf):
    def head(size: int, before: bytes = b"") -> bytes:
        start = before + b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: "
        return start + b"a" * (size - len(start) - 4 - len(before)) + b"\r\n\r\n"

    def status(answer: bytes) -> int:
        return int(answer.split(b" ", 2)[1])

    app = create_app(ServiceSettings(), load=lambda: clf)
    with uvicorn_server(app) as url:  # the default limit: 65,536 bytes
        for _ in range(500):
            if b"200 OK" in exchange(url, b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"):
                break
            threading.Event().wait(0.01)
        for request in (head(70_000), head(65_537), head(70_000, before=b"\r\n\r\n\r\n")):
            answer = exchange(url, request)  # whole: complete headers in one read
            assert status(answer) == 431, answer[:200]
            body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert body == {"error": "request headers over the size limit", "error_type": "headers_too_large"}
            assert b"x-content-type-options: nosniff" in answer.lower()
        assert status(exchange(url, head(65_536))) == 200  # at the limit
        # A small head with a large body in the same read: the body is not the head's
        body = json.dumps({"inputs": ["a great film"] * 7000}).encode()
        request = (b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nConnection: close\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body)) + body
        assert len(body) > 65_536 and status(exchange(url, request)) == 413  # too many texts, not 431
        answer = exchange(url, b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n")
        assert status(answer) == 400 and json.loads(answer.split(b"\r\n\r\n", 1)[1])["error_type"] == "bad_request"

