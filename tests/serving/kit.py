"""What the service's tests share: a started app and its client, a gated backend, raw ASGI calls, a real uvicorn
server, and the assertions on answers and errors."""

from __future__ import annotations

import asyncio
import re
import threading
from contextlib import asynccontextmanager, contextmanager

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")
import httpx  # noqa: E402

from distilsent import Classifier  # noqa: E402
from distilsent.serving.app import ServiceSettings, create_app  # noqa: E402

TEXTS = ["a great film", "awful, boring plot", "not bad", "i love this movie", "the worst", "fun !", "meh", "it was ok"]


LONG = "very " * 100  # over the tiny model's 64 positions


def with_backend(clf: Classifier, backend) -> Classifier:
    return Classifier(backend, clf.tokenizer, clf.config, name=clf.name)


class Gate:
    """A backend that holds every batch until ``opened`` is set: requests stay in flight on demand."""

    def __init__(self, backend):
        self.backend = backend
        self.opened = threading.Event()

    def logits(self, ids, mask):
        self.opened.wait(10)
        return self.backend.logits(ids, mask)


@asynccontextmanager
async def running(load, ready: bool = True, **limits):
    """A client of a started app whose model ``load`` returns (ready unless told), stopped on exit."""
    app = create_app(ServiceSettings(**limits), load=load)
    async with app.router.lifespan_context(app), asgi_client(app) as client:
        if ready:
            await wait_ready(client)
        yield client


@asynccontextmanager
async def asgi_client(app):
    """An httpx client that calls ``app`` in process; ``client.app`` is the app."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        client.app = app
        yield client


async def wait_ready(client: httpx.AsyncClient) -> None:
    for _ in range(500):
        if (await client.get("/health")).status_code == 200:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the service never became ready")


async def wait_admitted(client: httpx.AsyncClient, texts: int) -> None:
    for _ in range(500):
        if client.app.state.service.batcher.admitted == texts:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {texts} texts admitted")


async def wait_on_thread(client: httpx.AsyncClient, texts: int = 1) -> None:
    """Until ``texts`` texts are admitted and none still waits in the queue: their batch is on the inference
    thread (held there by a Gate)."""
    await wait_admitted(client, texts)
    for _ in range(500):
        if not client.app.state.service.batcher._jobs:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the batch never left the queue")


def assert_close(got, expected, *, rel: float = 1e-4, abs_tol: float = 1e-5) -> None:
    """Equal shapes, keys (in order) and labels; scores equal to float32 rounding by default (batches pad
    differently)."""
    if isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (got, expected)
        for g, e in zip(got, expected):
            assert_close(g, e, rel=rel, abs_tol=abs_tol)
    elif isinstance(expected, dict):
        assert list(got) == list(expected), (got, expected)
        for key in expected:
            assert_close(got[key], expected[key], rel=rel, abs_tol=abs_tol)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=rel, abs=abs_tol)
    else:
        assert got == expected


def hosted(clf: Classifier, inputs, top_k=None, **options) -> list:
    """What the hosted Inference API answers (huggingface_hub's recorded cassettes): one list per input, a
    string being one input, with every label or the top_k best; the pipeline's own shape for a list of
    texts with top_k."""
    return clf([inputs] if isinstance(inputs, str) else inputs, top_k=top_k, **options)


def assert_error(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type and body["error"], body


def run(coroutine):
    return asyncio.run(coroutine)


HF_CASES = [
    ({}, {}),
    ({"top_k": None}, {}),
    ({"top_k": 1}, {"top_k": 1}),
    ({"top_k": 5}, {"top_k": 5}),
    ({"function_to_apply": "sigmoid"}, {"function_to_apply": "sigmoid"}),
    ({"function_to_apply": "none", "top_k": None}, {"function_to_apply": "none"}),
    ({"truncation": True}, {"truncation": True}),
]


BAD_BODIES = [
    b"not json",
    b'{"inputs": "x",',
    b"\xff\xfe{}",  # invalid UTF-8
    b"[]",
    b"null",
    b'"a text"',
    b"{}",
    b'{"inputs": null}',
    b'{"inputs": 5}',
    b'{"inputs": [1, 2]}',
    b'{"inputs": [["a sentence", "pair"]]}',
    b'{"inputs": {"text": "x"}}',
    b'{"inputs": "x", "extra": 1}',
    b'{"inputs": "\\ud800"}',  # a lone surrogate: valid JSON, not valid text
    b'{"inputs": "x", "parameters": {"top_k": 0}}',
    b'{"inputs": "x", "parameters": {"top_k": "2"}}',
    b'{"inputs": "x", "parameters": {"top_k": true}}',
    b'{"inputs": "x", "parameters": {"function_to_apply": "relu"}}',
    b'{"inputs": "x", "parameters": {"truncation": "yes"}}',
    b'{"inputs": "x", "parameters": {"unknown": 1}}',
    b'{"inputs": "x", "parameters": {"neutral_below": "0.99"}}',  # strict: a string is not a number
    b'{"inputs": "x", "parameters": {"neutral_below": true}}',
    b'{"inputs": "x", "parameters": []}',
    b'{"inputs": "x", "raw_scores": 1}',
    b'{"inputs": "x", "parameters": {}, "truncate": true}',  # Hugging Face and TEI at once
    b'{"inputs": "x", "options": {"n": ' + b"9" * 5000 + b"}}",  # an integer of 5,000 digits
    b'{"inputs": "x", "options": {"n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",  # nesting 100k deep
    b'{"inputs": "caf\xe9"}',  # invalid UTF-8 inside a string
]


TEXT_PAIRS = [
    {"inputs": {"text": "a great film", "text_pair": "it was"}},
    {"inputs": [{"text": "a great film", "text_pair": "it was"}]},
    {"inputs": ["fun", ["a great film", "it was"]]},
    {"inputs": {"text": "a great film"}, "parameters": {}},
    {"inputs": [["a great film", "it was"]], "truncate": True},
]


def raw_scope(method: str, path: str, headers: dict[str, str]) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }


JSON_HEADERS = {"host": "localhost", "content-type": "application/json"}


async def call_raw(app, receive, method="POST", path="/", headers=None) -> tuple[int, dict, bytes]:
    """Call the ASGI app directly, with a ``receive`` that the test controls (a slow or vanishing client)."""
    sent = []

    async def send(message):
        sent.append(message)

    await app(raw_scope(method, path, headers or JSON_HEADERS), receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def body_then(body: bytes, after: asyncio.Event):
    """A receive that sends ``body``, then reports a disconnect once ``after`` is set."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await after.wait()
        return {"type": "http.disconnect"}

    return receive


def counter(metrics: str, status: int) -> float:
    prefix = f'distilsent_requests_total{{method="POST",route="/",status="{status}"}}'
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix))


class Recording:
    """A backend that notes the first word piece of every row it runs, then waits at ``gate``."""

    def __init__(self, gate, seen: list):
        self.gate, self.seen = gate, seen

    def logits(self, ids, mask):
        self.seen.extend(ids[:, 1].tolist())
        return self.gate.logits(ids, mask)


@contextmanager
def uvicorn_server(app, **config):
    """``app`` on a real uvicorn (distilsent's protocol) on a free loopback port, in a thread: its URL."""
    import uvicorn

    from distilsent.serving.protocol import GuardedHttp
    from distilsent.serving.server import listen

    sock = listen("127.0.0.1", 0)
    header_timeout = config.pop("header_timeout", ServiceSettings().header_timeout)
    config = uvicorn.Config(app, http=GuardedHttp, log_level="error", lifespan="on",
                            **{"h11_max_incomplete_event_size": ServiceSettings().max_header_bytes, **config})
    config.header_timeout = header_timeout
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started:
                break
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def exchange(url: str, request: bytes) -> bytes:
    """Send raw bytes on a new connection; the answer, read until its body is whole or the server closes."""
    import socket as sockets

    host, port = url.removeprefix("http://").split(":")
    with sockets.create_connection((host, int(port)), timeout=20) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
            head, blank, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if blank and length and len(body) >= int(length.group(1)):
                break
        return answer


def free_port() -> int:
    import socket as sockets

    with sockets.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

