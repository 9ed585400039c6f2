"""What a request passes before the app (serving/admission.py): its Host, its media type, its body's size and
time (a body over the limit gets its 413 whether or not its client is still sending), and the concurrency limit."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")

from distilsent.serving.app import ServiceSettings, create_app  # noqa: E402

from .kit import JSON_HEADERS, assert_error, call_raw, counter, raw_scope, run, running, uvicorn_server  # noqa: E402

LIMIT = 64 << 10


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


def test_a_slow_body_holds_no_slot_and_gets_408(clf):
    async def main():
        async with running(lambda: clf, max_concurrent_requests=1, body_timeout=0.5) as client:
            async def trickle():
                await asyncio.Event().wait()  # the rest of the body never comes

            slow = asyncio.create_task(call_raw(client.app, trickle))
            assert (await client.post("/", json={"inputs": "fun"})).status_code == 200  # not 429
            status, headers, body = await asyncio.wait_for(slow, 30)
            assert status == 408 and json.loads(body)["error_type"] == "timeout" and headers["connection"] == "close"

    run(main())


def test_a_declared_body_over_the_limit_is_413_before_reading_it(clf):
    async def main():
        async with running(lambda: clf) as client:
            async def nothing():
                await asyncio.Event().wait()

            headers = {**JSON_HEADERS, "content-length": str(10 << 30)}
            status, _, body = await asyncio.wait_for(call_raw(client.app, nothing, headers=headers), 30)
            assert status == 413 and json.loads(body)["error_type"] == "too_large"

    run(main())


def test_a_client_hanging_up_mid_body_is_499_not_500(clf):
    async def main():
        async with running(lambda: clf) as client:
            messages = [{"type": "http.disconnect"},
                        {"type": "http.request", "body": b'{"inputs": "fu', "more_body": True}]

            async def receive():
                return messages.pop()

            sent = []

            async def send(message):
                sent.append(message)

            await client.app(raw_scope("POST", "/", JSON_HEADERS), receive, send)
            assert sent == []
            metrics = (await client.get("/metrics")).text
            assert counter(metrics, 499) == 1 and counter(metrics, 500) == 0

    run(main())


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""]
)
def test_bodies_not_sent_as_json_are_415(clf, content_type):
    async def main():
        async with running(lambda: clf) as client:
            headers = {"content-type": content_type} if content_type else {}
            response = await client.post("/", content=b'{"inputs": "fun"}', headers=headers)
            assert_error(response, 415, "unsupported_media_type")
            headers = {"content-type": "application/json; charset=utf-8"}
            response = await client.post("/", content=b'{"inputs": "fun"}', headers=headers)
            assert response.status_code == 200

    run(main())


def test_host_header_must_be_allowed(clf):
    async def main():
        async with running(lambda: clf, allowed_hosts=("api.example.com",)) as client:
            for host in ("attacker.example", "localhost.attacker.example", "127.0.0.1.nip.io"):
                for method, path in (("GET", "/info/"), ("GET", "/health"), ("POST", "/")):
                    response = await client.request(method, path, json={"inputs": "x"}, headers={"host": host})
                    assert_error(response, 400, "bad_host")
                    assert "location" not in response.headers
            for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "10.1.2.3", "API.example.com"):
                assert (await client.get("/health", headers={"host": host})).status_code == 200, host

    run(main())

