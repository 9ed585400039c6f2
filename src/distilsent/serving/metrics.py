"""What the service reports and the marks every answer carries: the Prometheus :class:`Metrics` of one process,
the :class:`AccessLog` (one JSON line and the request metrics per request), :func:`error_response` (the JSON
error every part of the service answers with, counted, with ``Retry-After`` on 429 and 503) and
:class:`ResponseHeaders` (``nosniff`` and ``no-store`` on every answer).
"""

from __future__ import annotations

import json
import logging
import time

from . import missing_extra

try:
    from fastapi.responses import JSONResponse
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from starlette.datastructures import MutableHeaders
except ImportError as e:
    raise missing_extra(e) from None

access_log = logging.getLogger("distilsent.access")

ROUTES = ("/", "/predict", "/health", "/info", "/metrics", "/docs", "/openapi.json", "/ui", "/explain")
METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")
DOCS_ASSETS = "/docs/assets"  # Swagger UI's static files: the only answers that may be cached
RETRY_AFTER_S = {429: 1, 503: 5}  # what 429 and 503 tell clients to wait before retrying
# On every answer (see ResponseHeaders), whoever sends it.
NOSNIFF, NO_STORE = ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")


class Metrics:
    """Prometheus metrics of one process (with ``--workers N`` each worker reports its own)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("distilsent_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.errors = Counter("distilsent_errors", "Error responses by kind", ["error_type"], registry=r)
        self.request_seconds = Histogram(
            "distilsent_request_seconds", "Time from request to response", ["route"], registry=r
        )
        self.texts = Counter("distilsent_texts", "Texts classified", registry=r)
        self.batch_texts = Histogram(
            "distilsent_batch_texts", "Texts per batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r
        )
        self.batch_tokens = Histogram(
            "distilsent_batch_tokens", "Padded tokens per batch",
            buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768), registry=r,
        )
        self.queue_seconds = Histogram(
            "distilsent_queue_seconds", "Time each text waited before its batch ran",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.inference_seconds = Histogram(
            "distilsent_inference_seconds", "Time to run one batch through the model",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r,
        )
        self.admitted = Gauge("distilsent_admitted_texts", "Texts queued or being computed", registry=r)
        self.admitted_tokens = Gauge("distilsent_admitted_tokens", "Tokens queued or being computed", registry=r)
        self.explains = Counter(
            "distilsent_explains", "Explanations by outcome: ok, overloaded (429), too_large (413), timeout (503), "
            "cancelled (the client hung up), failed", ["outcome"], registry=r,
        )
        self.explain_seconds = Histogram(
            "distilsent_explain_seconds", "Time from an explanation's admission to its end",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60), registry=r,
        )
        self.explain_work = Gauge(
            "distilsent_explain_work", "Tokens x occlusions of the explanations admitted (waiting or computing)",
            registry=r,
        )
        self.explains_computing = Gauge("distilsent_explains_computing", "Explanations computing now", registry=r)
        self.memory_releases = Gauge(
            "distilsent_memory_releases", "Times free memory was given back to the system after a burst", registry=r
        )
        self.batcher_restarts = Gauge(
            "distilsent_batcher_restarts", "Batcher workers started after one ended unasked", registry=r
        )

    def on_batch(self, texts: int, tokens: int, waits, seconds: float) -> None:
        self.texts.inc(texts)
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(tokens)
        self.inference_seconds.observe(seconds)
        for wait in waits:
            self.queue_seconds.observe(wait)


def error_response(metrics: Metrics, status: int, error_type: str, message: str, close: bool = False,
                   retry_after: int | None = None) -> JSONResponse:
    metrics.errors.labels(error_type).inc()
    retry_after = retry_after if retry_after is not None else RETRY_AFTER_S.get(status)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if close:  # the rest of the request was not read: the connection cannot carry another one
        headers["Connection"] = "close"
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


class AccessLog:
    """One JSON line per request on the ``distilsent.access`` logger, and the request metrics."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = None
        disconnected = False

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receive_seen():
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, receive_seen, send_status)
        finally:
            seconds = time.perf_counter() - started
            if status is None:  # no response: the client hung up (499, as nginx logs it), else a server fault
                status = 499 if disconnected else 500
            # Unknown paths and methods share one label value so that scanners cannot grow the metrics.
            route = scope["path"] if scope["path"] in ROUTES else "other"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(json.dumps({
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "client": f"{client[0]}:{client[1]}" if client else None,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round(seconds * 1000, 3),
                }))


class ResponseHeaders:
    """Headers on every answer, errors from the limits included. ``X-Content-Type-Options: nosniff``: a
    browser must never read a JSON answer (which echoes request text) as HTML or script. ``Cache-Control:
    no-store``: answers are about one request's texts, and no cache, shared or private, should keep them;
    only the static /docs assets may be cached."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cacheable = scope["path"].startswith(DOCS_ASSETS + "/")

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in (NOSNIFF,) if cacheable else (NOSNIFF, NO_STORE):
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
