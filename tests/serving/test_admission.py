"""What a request passes before the app, on a real uvicorn: a body over the limit is answered with its 413
whether or not its client is still sending."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")

from distilsent import Classifier  # noqa: E402
from distilsent.serving.app import ServiceSettings, create_app  # noqa: E402

from .test_service import uvicorn_server  # noqa: E402

LIMIT = 64 << 10


@pytest.fixture(scope="module")
def clf(tiny_model_dir) -> Classifier:
    return Classifier.load(tiny_model_dir, threads=1)


def send_over_the_limit(url: str, size: int, pause: float, chunked: bool = False) -> str:
    """POST a body of ``size`` bytes: its first 16 KiB, ``pause`` seconds (the server may answer meanwhile), the
    rest; then read the answer. Its status and error_type, or the error the client met."""
    host, port = url.removeprefix("http://").split(":")
    body = b'{"inputs": "' + b"a" * (size - 14) + b'"}'
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
    head = b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" + framing + b"\r\n\r\n"

    def framed(part: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(part), part) if chunked else part

    try:
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(head + framed(body[: 16 << 10]))
            time.sleep(pause)
            connection.sendall(framed(body[16 << 10 :]) + (b"0\r\n\r\n" if chunked else b""))
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
    except OSError as e:
        return type(e).__name__
    head, _, content = answer.partition(b"\r\n\r\n")
    return f"{int(head.split()[1])} {json.loads(content)['error_type']}"


def test_a_body_over_the_limit_gets_its_413_while_the_client_is_still_sending(clf):
    app = create_app(ServiceSettings(max_body_bytes=LIMIT), load=lambda: clf)
    with uvicorn_server(app) as url:
        outcomes = []

        def client(chunked: bool) -> None:
            outcomes.append(send_over_the_limit(url, 32 * LIMIT, pause=0.3, chunked=chunked))

        clients = [threading.Thread(target=client, args=(i % 2 == 1,)) for i in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
        assert outcomes == ["413 too_large"] * 8


def test_a_body_declared_past_the_drain_bound_is_answered_at_once(clf):
    from distilsent.serving.admission import DRAIN_BYTES

    app = create_app(ServiceSettings(max_body_bytes=LIMIT), load=lambda: clf)
    with uvicorn_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n" % (DRAIN_BYTES + 1))
            started = time.monotonic()
            answer = connection.recv(65536)  # nothing of the body sent: the answer cannot wait for it
            assert answer.startswith(b"HTTP/1.1 413") and time.monotonic() - started < 5
