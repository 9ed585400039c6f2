"""HTTP service: one model behind Hugging Face Inference API and TEI compatible routes, batched across requests.

- ``POST /`` and ``POST /predict`` take ``{"inputs": str | [str], ...}`` as ``application/json``. A body
  with ``parameters`` (or ``options``) is a Hugging Face Inference API call and is answered as the hosted
  Inference API answers it: one list per input (a string is one input), every label sorted by score unless
  ``top_k`` says how many (what ``huggingface_hub.InferenceClient.text_classification`` reads). A body with
  ``raw_scores`` or ``truncate`` is a text-embeddings-inference (TEI) call and is answered as TEI does
  (every label, best first, per text). distilsent adds ``long_text`` (truncate, head_tail, window),
  ``window``, ``stride`` and ``aggregate`` (mean, max) to both bodies (in ``parameters``, or top-level in a
  TEI body), and ``neutral_below`` to ``parameters``, without changing the answer's shape; without a
  ``long_text`` (or ``serve --long-text``) an over-long text stays a 422. ``max_request_windows`` caps the
  windows of texts read as several windows in one request (413), checked on token counts before any
  window is built. A body with neither gets the shape its route is known for: Hugging Face on ``/``,
  TEI on ``/predict``. A body with both is invalid. A list of strings is always a batch of texts; text
  pairs are refused (422).
- ``GET /health`` (200 once the model is loaded and the batcher runs, 503 otherwise), ``GET /info``,
  ``GET /metrics`` (Prometheus text), ``/docs`` (served from the installed package, no network) and
  ``/openapi.json``; ``GET /ui``, a page to try the model, and ``POST /explain`` (``{"inputs": text}``:
  occlusion attributions per word, what the page highlights).
- Every error is ``{"error": message, "error_type": kind}`` (what the Hugging Face clients read): 400 Host
  not allowed or a malformed request, 404/405 unknown route or method (405 with ``Allow``), 408 body too
  slow, 413 body or batch over the limits, 415 not JSON, 422 invalid body or text too long without
  truncation, 429 queue full or too many requests, 431 headers too large, 503 loading, failed or shutting
  down (429 and 503 carry ``Retry-After``); 500 only when the backend fails on a request's texts, and only
  for that request. A client that hangs up is logged and counted as 499, not as a server error.
- Every answer carries ``X-Content-Type-Options: nosniff`` and, but for the static ``/docs`` assets,
  ``Cache-Control: no-store``; ``/ui`` also a Content-Security-Policy (its own inline script and style by
  hash, requests to this server only) and ``X-Frame-Options: DENY``.

The service maps HTTP onto the classifier's steps: ``encode`` here (on a small thread pool for large
payloads), ``plan`` and ``run_batch`` in :class:`~distilsent.serving.batcher.Batcher`, ``scores`` and ``format``
here. Every setting and its default is in :class:`~distilsent.serving.settings.ServiceSettings`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any, Literal, Union

from ..errors import (
    BatcherFailure,
    CheckpointError,
    DistilsentError,
    InputError,
    MissingDependencyError,
    QueueFullError,
    ShuttingDownError,
)

try:
    import prometheus_client
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from fastapi_offline import FastAPIOffline
    from pydantic import (
        BaseModel,
        ConfigDict,
        Field,
        RootModel,
        StrictBool,
        StrictFloat,
        StrictInt,
        StrictStr,
        TypeAdapter,
        ValidationError,
    )
    from starlette.datastructures import MutableHeaders
    from starlette.exceptions import HTTPException
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as e:
    raise MissingDependencyError(
        f"the HTTP service needs FastAPI, uvicorn[standard], prometheus_client and fastapi-offline "
        f"({e.name} is missing): pip install 'distilsent[serve]'"
    ) from None

from .. import __version__
from ..runtime.classifier import FUNCTIONS, Classifier
from ..runtime.long_text import UNLIMITED, WindowPlan, aggregate, plan
from .batcher import Batcher
from .page import content_security_policy, explain_for_page, page
from .settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app", "serve"]

log = logging.getLogger("distilsent.serving.service")
access_log = logging.getLogger("distilsent.access")

SETTINGS_ENV = "DISTILSENT_SERVE_SETTINGS"  # how `serve --workers N` hands its settings to each worker
ROUTES = ("/", "/predict", "/health", "/info", "/metrics", "/docs", "/openapi.json", "/ui", "/explain")
BODY_ROUTES = ("/", "/predict", "/explain")  # the POST routes that read a body; others answer 404/405 unread
DOCS_ASSETS = "/docs/assets"  # Swagger UI's static files: the only answers that may be cached
METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")
# Payloads this large are tokenized on the tokenizer threads so they do not hold up every other request.
THREADED_TOKENIZE_CHARS = 16_384
RETRY_AFTER_S = {429: 1, 503: 5}  # what 429 and 503 tell clients to wait before retrying
# On every answer (see ResponseHeaders), whoever sends it.
NOSNIFF, NO_STORE = ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")


# ---------------------------------------------------------------------------------------------- bodies

LongText = Literal["truncate", "head_tail", "window"]
Aggregate = Literal["mean", "max"]
LONG_TEXT = Field(default=None, description="distilsent: texts over the maximum length are cut (truncate), read "
                  "as their first 128 + last 382 tokens (head_tail) or as windows whose scores are aggregated "
                  "(window); default: the server's --long-text, else 422 for such texts")
STRIDE = Field(default=None, ge=1, description="distilsent: with window, a window starts every this many tokens")
WINDOW = Field(default=None, ge=3, description="distilsent: with window, tokens per window ([CLS] and [SEP] "
               "included; a wider one is cut to the model's maximum length); default: the server's --window, "
               "else that maximum")
AGGREGATE = Field(default=None, description="distilsent: with window, the mean of the windows' scores weighted by "
                  "their tokens, or the most confident window (max); default: the server's --aggregate, else mean")


class Parameters(BaseModel):
    """Hugging Face Inference API parameters of text classification."""

    model_config = ConfigDict(extra="forbid")
    top_k: StrictInt | None = Field(
        default=None, ge=1, description="labels per text, best first; absent or null: every label (the hosted "
        "Inference API's default)"
    )
    function_to_apply: Literal[FUNCTIONS] | None = None  # type: ignore[valid-type]
    truncation: StrictBool = Field(default=False, description="cut texts over the maximum length instead of 422")
    # distilsent's own fields (not in the Hugging Face API): long texts and the abstain band.
    long_text: LongText | None = LONG_TEXT
    stride: StrictInt | None = STRIDE
    aggregate: Aggregate | None = AGGREGATE
    window: StrictInt | None = WINDOW
    neutral_below: StrictFloat | None = Field(
        default=None, ge=0, le=1, description="distilsent: label NEUTRAL when the best score is below this "
        "(binary models; each text's list then holds its best label only, so top_k may be absent, null or 1)",
    )


INPUTS = Field(description="a text, or a list of texts (a batch, never a pair)")
TEXT_PAIRS = 'inputs: text pairs ({"text", "text_pair"}) are not supported; send a text or a list of texts'


class HuggingFaceRequest(BaseModel):
    """Hugging Face Inference API body."""

    model_config = ConfigDict(extra="forbid")
    inputs: StrictStr | list[StrictStr] = INPUTS
    parameters: Parameters | None = None
    options: dict[str, Any] | None = Field(
        default=None, description="Hugging Face Inference API options (wait_for_model, use_cache): accepted, ignored"
    )


class TeiRequest(BaseModel):
    """text-embeddings-inference ``/predict`` body."""

    model_config = ConfigDict(extra="forbid")
    inputs: StrictStr | list[StrictStr] = INPUTS
    raw_scores: StrictBool | None = Field(default=None, description="logits instead of probabilities")
    truncate: StrictBool | None = Field(default=None, description="cut texts over the maximum length")
    long_text: LongText | None = LONG_TEXT
    stride: StrictInt | None = STRIDE
    aggregate: Aggregate | None = AGGREGATE
    window: StrictInt | None = WINDOW


PredictRequest = TypeAdapter(Union[HuggingFaceRequest, TeiRequest])


class ExplainRequest(BaseModel):
    """Body of ``POST /explain``, the page's word highlights."""

    model_config = ConfigDict(extra="forbid")
    inputs: StrictStr = Field(description="one text")


class ErrorBody(BaseModel):
    error: str
    error_type: str


class Label(BaseModel):
    label: str
    score: float


class HuggingFaceAnswer(RootModel[list[list[Label]]]):
    """Hugging Face body: one list per input (a string is one input), every label sorted by score, or the
    top_k best; with neutral_below the best label only, NEUTRAL inside the band."""


class TeiAnswer(RootModel[Union[list[Label], list[list[Label]]]]):
    """TEI body: every label sorted by score ({"score", "label"}); a list of texts gives one such list per text."""


PredictAnswer = TypeAdapter(Union[HuggingFaceAnswer, TeiAnswer])


class ServiceError(Exception):
    """A request the service answers with an error status (kept inside this module: HTTP is its concern)."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def parse_body(raw: bytes) -> HuggingFaceRequest | TeiRequest:
    """The body as one of the two APIs; any malformed JSON (invalid UTF-8, too deep, ...) is a 422."""
    try:
        return PredictRequest.validate_json(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        if errors[0]["type"] == "json_invalid":
            reason = errors[0].get("ctx", {}).get("error", "malformed")
            raise ServiceError(422, "validation", f"body is not valid JSON ({reason})") from None
        if any(_is_text_pair(problem) for problem in errors):  # one line, not every union member's complaint
            raise ServiceError(422, "validation", TEXT_PAIRS) from None
        problems = []
        for problem in errors[:6]:
            if problem["type"] in ("model_type", "model_attributes_type"):
                problems.append("body: expected a JSON object")
                continue
            # loc starts with the union member tried: say which API's field is wrong
            api, *where = problem["loc"]
            api = "Hugging Face" if api == HuggingFaceRequest.__name__ else "TEI"
            problems.append(f"{'.'.join(str(w) for w in where) or 'body'}: {problem['msg']} ({api} body)")
        unique = list(dict.fromkeys(problems))
        raise ServiceError(422, "validation", "; ".join(unique) or "invalid request body") from None


def _is_text_pair(problem: dict) -> bool:
    """Whether a validation problem is one of the pipeline's text-pair inputs: ``{"text", "text_pair"}``, or a
    ``[text, pair]`` list inside the list of inputs."""
    where, value = problem["loc"][1:], problem.get("input")
    if where[:1] != ("inputs",):
        return False
    if isinstance(value, dict):
        return bool({"text", "text_pair"} & set(value))
    nested = len(where) == 3  # ("inputs", "list[str]", index): an element of the list of inputs
    return nested and isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


# ---------------------------------------------------------------------------------------------- metrics


class Metrics:
    """Prometheus metrics of one process (with ``--workers N`` each worker reports its own)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

    def on_batch(self, texts: int, tokens: int, waits, seconds: float) -> None:
        self.texts.inc(texts)
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(tokens)
        self.inference_seconds.observe(seconds)
        for wait in waits:
            self.queue_seconds.observe(wait)


def error_response(metrics: Metrics, status: int, error_type: str, message: str, close: bool = False) -> JSONResponse:
    metrics.errors.labels(error_type).inc()
    headers = {"Retry-After": str(RETRY_AFTER_S[status])} if status in RETRY_AFTER_S else {}
    if close:  # the rest of the request was not read: the connection cannot carry another one
        headers["Connection"] = "close"
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------- middleware


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


# ---------------------------------------------------------------------------------------------- the app


class Service:
    """The model, its batcher and the service's state; ``app.state.service``."""

    def __init__(self, settings: ServiceSettings, load: Callable[[], Classifier], metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self._load = load
        self.classifier: Classifier | None = None
        self.batcher: Batcher | None = None
        self.failure: str | None = None
        self.closing = False
        # Bounds how many tokenizations run at once: each holds a payload's encodings in memory.
        self._tokenizers = ThreadPoolExecutor(settings.tokenize_threads, thread_name_prefix="distilsent-tokenize")

    async def start(self) -> None:
        try:
            classifier = await asyncio.to_thread(self._load)
        except Exception as e:  # noqa: BLE001 - any load failure is reported by /health, not a crash
            log.error("model failed to load: %s", e)
            self.failure = f"model failed to load: {e}"
            return
        self.batcher = Batcher(classifier, self.settings, on_batch=self.metrics.on_batch)
        self.batcher.start()
        self.metrics.admitted.set_function(lambda: self.batcher.admitted)
        self.metrics.admitted_tokens.set_function(lambda: self.batcher.admitted_tokens)
        self.classifier = classifier
        log.info("model %s loaded (%s backend)", classifier.name, getattr(classifier.backend, "name", "custom"))

    async def stop(self) -> None:
        self.closing = True
        if self.batcher is not None:
            await self.batcher.close(self.settings.shutdown_timeout)
        self._tokenizers.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> Classifier:
        if self.closing:
            raise ServiceError(503, "unhealthy", "the server is shutting down")
        if self.classifier is None:
            raise ServiceError(503, "unhealthy", self.failure or "the model is loading; retry shortly")
        if not self.batcher.alive:
            raise ServiceError(503, "unhealthy", self.batcher.failure or "the batcher is not running")
        return self.classifier

    async def predict(self, request: Request, default: Literal["hf", "tei"]) -> Any:
        classifier = self.ready()
        body = parse_body(await request.body())
        fields = body.model_fields_set - {"inputs"}
        style = default if not fields else "hf" if isinstance(body, HuggingFaceRequest) else "tei"
        single = isinstance(body.inputs, str)
        texts = [body.inputs] if single else body.inputs
        s = self.settings
        if len(texts) > s.max_request_texts:
            raise ServiceError(
                413, "too_large", f"{len(texts)} texts in one request, over the limit of {s.max_request_texts}"
            )
        if style == "hf":
            parameters = getattr(body, "parameters", None) or Parameters()
            truncation, function = parameters.truncation, parameters.function_to_apply
            reading = parameters
        else:
            truncation = bool(getattr(body, "truncate", None))
            function = "none" if getattr(body, "raw_scores", None) else None
            reading = body if isinstance(body, TeiRequest) else TeiRequest(inputs=texts)
        served = self.default_reading(classifier)
        strategy = reading.long_text or (None if truncation else served["long_text"])  # an asked-for cut wins
        long_text = {"long_text": strategy, "stride": reading.stride or served["stride"],
                     "window": reading.window or served["window"]}
        window_plan = await self._encode(classifier, texts, truncation, long_text if strategy else None)
        sequences = window_plan.sequences
        tokens = sum(len(sequence) for sequence in sequences)
        if tokens > s.max_queue_tokens:
            raise ServiceError(
                413, "too_large", f"{tokens} tokens in one request, over the limit of {s.max_queue_tokens}"
            )
        logits = await self._submit(request, sequences)
        scores = aggregate(classifier.scores(logits, function), window_plan, len(texts),
                           reading.aggregate or served["aggregate"] or "mean")
        if style == "tei":
            return classifier.format(scores, style="tei", single=single)
        # The hosted Inference API's shape: one list per input, a string being one input (single=False).
        top_k, neutral = parameters.top_k, {}
        if parameters.neutral_below is not None:  # abstaining is a verdict on the best label: it alone is shown
            top_k, neutral = top_k or 1, {"neutral_below": parameters.neutral_below}
        try:
            return classifier.format(scores, top_k=top_k, single=False, **neutral)
        except InputError as e:
            raise ServiceError(422, "validation", str(e)) from None

    async def _encode(
        self, classifier: Classifier, texts: list[str], truncation: bool, long_text: dict | None
    ) -> WindowPlan:
        """The sequences to run: one per text as cut (or refused) by ``truncation``, or the ``long_text``
        plan (:meth:`Classifier.windows`) when the request or the server names a strategy."""
        for i, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ServiceError(
                    422, "validation", f"text {i} is not valid Unicode (it has a lone surrogate)"
                ) from None

        def work() -> WindowPlan:
            if long_text is None:
                return WindowPlan.one_each(classifier.encode(texts, truncation=truncation))
            return self._windows(classifier, texts, **long_text)

        try:
            if sum(len(t) for t in texts) > THREADED_TOKENIZE_CHARS:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._tokenizers, work)
            return work()
        except InputError as e:
            if long_text is not None:
                raise ServiceError(422, "validation", str(e)) from None
            raise ServiceError(
                422, "validation", f"{e}; send truncation/truncate true to cut it, or a long_text (head_tail, window)"
            ) from None

    def _windows(
        self, classifier: Classifier, texts: list[str], long_text: str, stride: int | None, window: int | None
    ) -> WindowPlan:
        """:meth:`Classifier.windows`, with ``max_request_windows`` checked on the token counts before any
        window is built: 3-token windows of a 1 MiB text are a million lists (over 500 MB) otherwise. Only
        texts read as several windows count; one sequence per text is ``max_request_texts``' to limit."""
        if long_text == "truncate":  # a bounded prefix of each text, never windows
            return classifier.windows(texts, long_text=long_text)
        ids = classifier.tokenizer.encode(texts, UNLIMITED)
        stride, window = stride or classifier.stride, window or classifier.window
        if long_text == "window":
            windows = split_windows([len(i) for i in ids], classifier.max_length, stride, window)
            limit = self.settings.max_request_windows
            if windows > limit:
                raise ServiceError(413, "too_large", f"{windows} windows in one request, over the limit of {limit}; "
                                   "send fewer or shorter texts, or a larger stride")
        return plan(ids, long_text, classifier.max_length, stride=stride, head=classifier.head, window=window)

    async def _submit(self, request: Request, sequences: list[list[int]]):
        """The batcher's logits, unless the client hangs up first: then its queued texts are dropped."""
        work = asyncio.ensure_future(self.batcher.submit(sequences))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                if not task.done():
                    task.cancel()
        if not work.done() or work.cancelled():
            raise ServiceError(499, "client_closed", "the client closed the connection")
        try:
            return work.result()
        except QueueFullError as e:
            raise ServiceError(429, "overloaded", str(e)) from None
        except (ShuttingDownError, BatcherFailure) as e:
            raise ServiceError(503, "unhealthy", str(e)) from None
        except InputError as e:
            raise ServiceError(422, "validation", str(e)) from None
        except Exception:
            log.exception("inference failed")
            raise ServiceError(500, "backend", "inference failed; see the server log") from None

    def default_reading(self, classifier: Classifier) -> dict:
        """The reading of requests that name none: ``serve --long-text`` with its --window/--stride/--aggregate;
        else the model's own (its config.json) with those flags over it; else none, so that an over-long text
        is a 422 as in the pipeline. Keys: long_text, window, stride, aggregate (None: not set)."""
        s = self.settings
        flags = {"long_text": s.long_text, "window": s.window, "stride": s.stride, "aggregate": s.aggregate}
        if s.long_text is None and "reading" in classifier.config.distilsent:
            own = classifier.reading.options()  # loaded without a long_text: the model's own
            return {**{k: own[k] for k in flags}, **{k: v for k, v in flags.items() if v is not None}}
        return flags

    def info(self) -> dict:
        classifier = self.ready()
        s = self.settings
        served = self.default_reading(classifier)
        return {
            "model_id": classifier.name,
            "model_type": "distilbert",
            "labels": classifier.labels,
            "max_input_length": classifier.max_length,
            "backend": getattr(classifier.backend, "name", s.backend or "unknown"),
            "version": __version__,
            "max_batch_tokens": s.max_batch_tokens,
            "max_batch_size": s.max_batch_size,
            "max_wait_ms": s.max_wait_ms,
            "max_queue_texts": s.max_queue_texts,
            "max_queue_tokens": s.max_queue_tokens,
            "max_client_batch_size": s.max_request_texts,
            "long_text": served["long_text"],
            "window": served["window"],
            "aggregate": served["aggregate"],
            "max_request_windows": s.max_request_windows,
            "max_concurrent_requests": s.max_concurrent_requests,
            "max_body_bytes": s.max_body_bytes,
        }


def split_windows(lengths: list[int], max_length: int, stride: int | None, window: int | None) -> int:
    """How many windows :func:`distilsent.runtime.long_text.plan` makes of the texts with these token counts
    (``[CLS]`` and ``[SEP]`` included) that it splits into more than one, counted without building them."""
    width = min(window or max_length, max_length) - 2
    step = stride if stride is not None else width // 2
    if not 1 <= step <= width:
        return 0  # plan() refuses these settings with its own message
    total = 0
    for length in lengths:
        content = length - 2
        if content > width:
            starts = (content - width) // step + 1
            total += starts + ((starts - 1) * step + width < content)  # the last window, aligned to the end
    return total


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


ERROR_STATUSES = {
    400: "Host header not allowed",
    408: "body not received in time",
    413: "body, texts or tokens over the limits",
    415: "body not sent as application/json",
    422: "invalid body, or a text too long without truncation",
    429: "queue full or too many concurrent requests (Retry-After)",
    500: "the backend failed on this request's texts",
    503: "loading, failed, or shutting down (Retry-After)",
}
ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in ERROR_STATUSES.items()}
EXAMPLES = {
    "hf": {"inputs": "a gripping, beautiful film", "parameters": {"top_k": 2}},
    "tei": {"inputs": ["a gripping, beautiful film", "dull"], "raw_scores": False, "truncate": True},
}
# What the embedded default model answers to the examples above (scores rounded).
ANSWER_EXAMPLES = {
    "hf": [[{"label": "POSITIVE", "score": 0.9876}, {"label": "NEGATIVE", "score": 0.0124}]],
    "tei": [[{"score": 0.9876, "label": "POSITIVE"}, {"score": 0.0124, "label": "NEGATIVE"}],
            [{"score": 0.9661, "label": "NEGATIVE"}, {"score": 0.0339, "label": "POSITIVE"}]],
}
ANSWER_DESCRIPTION = (
    "Hugging Face body: as the hosted Inference API, one list per input (a string is one input), every label "
    "sorted by score or the top_k best. TEI body: every label sorted by score; one such list per text for a list."
)


def create_app(settings: ServiceSettings | None = None, load: Callable[[], Classifier] | None = None) -> FastAPI:
    """The ASGI app. ``load`` returns the classifier (default: ``Classifier.load`` of ``settings``);
    it runs on a thread after start-up, and until it returns the model routes answer 503."""
    settings = settings or ServiceSettings()
    if load is None:
        def load() -> Classifier:
            return load_classifier(settings)

    metrics = Metrics()
    service = Service(settings, load, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(service.start())
        try:
            yield
        finally:
            # uvicorn has already stopped accepting and waited for in-flight requests; finish whatever
            # the batcher still holds, within the shutdown timeout, before the process goes away.
            if not loading.done():
                loading.cancel()
            await service.stop()

    app = FastAPIOffline(
        title="distilsent",
        version=__version__,
        description="English sentiment classification; Hugging Face Inference API and TEI compatible.",
        lifespan=lifespan,
        redoc_url=None,
        static_url="/docs/assets",
    )
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, e: ServiceError) -> JSONResponse:
        return error_response(metrics, e.status, e.error_type, str(e))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        kind = HTTPStatus(e.status_code).phrase.lower().replace(" ", "_")  # not_found, method_not_allowed
        response = error_response(metrics, e.status_code, kind, str(e.detail))
        response.headers.update(e.headers or {})
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        # A bug, not the client's fault: still JSON, and the server goes on (uvicorn logs the traceback).
        # Starlette answers it outside every middleware, ResponseHeaders included: the headers go here.
        response = error_response(metrics, 500, "internal", "internal server error")
        response.headers.update(dict((NOSNIFF, NO_STORE)))
        return response

    # The routes read their bodies themselves (the limits come first), so their schemas are given here.
    definitions: dict = {}

    def schema_of(adapter: TypeAdapter) -> dict:
        schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
        definitions.update(schema.pop("$defs", {}))
        return schema

    body_schema, answer_schema = schema_of(PredictRequest), schema_of(PredictAnswer)
    definitions["ExplainRequest"] = ExplainRequest.model_json_schema()
    explain_schema = {"$ref": "#/components/schemas/ExplainRequest"}

    def request_body(schema: dict, example: dict) -> dict:
        content = {"application/json": {"schema": schema, "example": example}}
        return {"requestBody": {"required": True, "content": content}}

    def answers(api: str) -> dict:
        content = {"application/json": {"schema": answer_schema, "example": ANSWER_EXAMPLES[api]}}
        return {**ERRORS, 200: {"description": ANSWER_DESCRIPTION, "content": content}}

    @app.post("/", responses=answers("hf"), openapi_extra=request_body(body_schema, EXAMPLES["hf"]))
    async def predict_hf(request: Request) -> Any:
        """Classify; Hugging Face Inference API shapes unless the body has TEI fields."""
        return JSONResponse(await service.predict(request, "hf"))

    @app.post("/predict", responses=answers("tei"), openapi_extra=request_body(body_schema, EXAMPLES["tei"]))
    async def predict_tei(request: Request) -> Any:
        """Classify; TEI shapes unless the body has Hugging Face fields."""
        return JSONResponse(await service.predict(request, "tei"))

    probe_errors = {503: ERRORS[503], 400: ERRORS[400]}

    @app.get("/health", responses=probe_errors)
    async def health() -> dict:
        service.ready()
        return {"status": "ok"}

    @app.get("/info", responses=probe_errors)
    async def info() -> dict:
        return service.info()

    @app.get("/ui", include_in_schema=False)
    async def ui_page() -> Response:
        """A page to try the model in a browser (self-contained: works offline)."""
        # Only its own script and style run, it talks to this server alone, and no other site may frame it.
        headers = {"Content-Security-Policy": content_security_policy(), "X-Frame-Options": "DENY"}
        return Response(page(), media_type="text/html; charset=utf-8", headers=headers)

    @app.post("/explain", responses=ERRORS, openapi_extra=request_body(explain_schema, {"inputs": "a gripping film"}))
    async def explain(request: Request) -> Any:
        """Occlusion attributions of each word of one text toward its predicted label (what /ui highlights)."""
        classifier = service.ready()
        try:
            body = ExplainRequest.model_validate_json(await request.body())
        except ValidationError as e:
            message = "; ".join(p["msg"] for p in e.errors(include_input=False)[:3])
            raise ServiceError(422, "validation", message) from None
        try:
            return JSONResponse(await asyncio.to_thread(explain_for_page, classifier, body.inputs))
        except InputError as e:
            raise ServiceError(422, "validation", str(e)) from None

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {prometheus_client.CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                         "description": "Prometheus text exposition format"}},
    )
    async def prometheus() -> Response:
        exposition = prometheus_client.generate_latest(metrics.registry)
        return Response(exposition, media_type=prometheus_client.CONTENT_TYPE_LATEST)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
        return app.openapi_schema

    app.openapi = openapi

    # The last added is outermost: the access log sees every response, including the limits' 4xx, and
    # every response gets the common headers.
    app.add_middleware(Limits, settings=settings, metrics=metrics)
    app.add_middleware(AccessLog, metrics=metrics)
    app.add_middleware(ResponseHeaders)
    return app


def load_classifier(settings: ServiceSettings) -> Classifier:
    backend = {} if settings.backend is None else {"backend": settings.backend}
    return Classifier.load(settings.model, threads=settings.threads, **backend)


def app_from_environment() -> FastAPI:
    """The app of one ``--workers N`` worker process, configured by :data:`SETTINGS_ENV`."""
    return create_app(ServiceSettings(**json.loads(os.environ[SETTINGS_ENV])))


def log_config(level: str) -> dict:
    """uvicorn's logging, plus the access log as bare JSON lines on stdout."""
    config = json.loads(json.dumps(uvicorn.config.LOGGING_CONFIG))
    config["formatters"]["json"] = {"format": "%(message)s"}
    config["handlers"]["json"] = {"formatter": "json", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"}
    config["loggers"]["distilsent.access"] = {"handlers": ["json"], "level": "INFO", "propagate": False}
    config["loggers"]["distilsent"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


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


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound now, so that a port in use is one clear error before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = "the port is in use" if e.errno in (98, 48) else e.strerror or str(e)
        raise InputError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def serve(settings: ServiceSettings, *, log_level: str = "info") -> None:
    """Run the service until SIGINT/SIGTERM, then stop accepting, finish in-flight requests and exit.

    The model is loaded (or fails to, as one error) before the port opens. With ``settings.workers`` > 1
    each worker process loads its own model and batcher, and the CPU threads are split between them
    unless ``settings.threads`` says otherwise.
    """
    from uvicorn.supervisors import Multiprocess

    if settings.workers > 1 and settings.threads is None:
        settings = dataclasses.replace(settings, threads=max(1, (os.cpu_count() or 1) // settings.workers))
    try:
        classifier = load_classifier(settings)
    except DistilsentError:
        raise
    except Exception as e:  # noqa: BLE001 - a backend's own error: one line, not a traceback
        raise CheckpointError(f"cannot load the model: {e}") from None
    sock = listen(settings.host, settings.port)
    options = dict(
        host=settings.host,
        port=settings.port,
        http=GuardedHttp,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_timeout,
        log_level=log_level,
        log_config=log_config(log_level),
        access_log=False,  # replaced by AccessLog's structured lines
        timeout_graceful_shutdown=settings.shutdown_timeout,
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    if settings.workers == 1:
        config = uvicorn.Config(create_app(settings, load=lambda: classifier), **options)
    else:
        del classifier  # checked; each worker loads its own
        os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
        config = uvicorn.Config(
            "distilsent.serving.service:app_from_environment", factory=True, workers=settings.workers, **options
        )
    config.header_timeout = settings.header_timeout
    address = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info("listening on http://%s:%d (%d worker%s)", address, settings.port, settings.workers,
             "s"[: settings.workers - 1])
    server = uvicorn.Server(config)
    if settings.workers == 1:
        server.run(sockets=[sock])
    else:
        Multiprocess(config, sockets=[sock]).run()
