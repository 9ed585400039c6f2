"""HTTP service: one model behind Hugging Face Inference API and TEI compatible routes, batched across requests.

- ``POST /`` and ``POST /predict`` take ``{"inputs": str | [str], ...}``. A body with ``parameters`` is a
  Hugging Face Inference API call and is answered in the shapes of ``pipeline("text-classification")``;
  a body with ``raw_scores`` or ``truncate`` is a text-embeddings-inference (TEI) call and is answered
  as TEI does (every label, best first, per text). A body with neither gets the shape its route is known
  for: Hugging Face on ``/``, TEI on ``/predict``. A list of strings is always a batch of texts.
- ``GET /health`` (200 once the model is loaded, 503 before), ``GET /info``, ``GET /metrics``
  (Prometheus), ``/docs`` and ``/openapi.json``.
- Every error is ``{"error": message, "error_type": kind}``: 422 invalid body or text too long without
  truncation, 413 body or batch over the limits, 429 queue full, 503 loading or shutting down; 500 only
  when the backend itself fails, and then only for the requests whose texts make it fail.

Requests are tokenized on arrival and batched by :class:`~distilsent.batcher.Batcher`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from .errors import InputError, MissingDependencyError, QueueFullError, ShuttingDownError

try:
    import prometheus_client
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
    from starlette.exceptions import HTTPException
except ImportError as e:
    raise MissingDependencyError(
        f"the HTTP service needs FastAPI, uvicorn and prometheus_client ({e.name} is missing): "
        "pip install 'distilsent[serve]'"
    ) from None

from .batcher import Batcher
from .classifier import FUNCTIONS, Classifier, format_scores

log = logging.getLogger("distilsent.service")
access_log = logging.getLogger("distilsent.access")

SETTINGS_ENV = "DISTILSENT_SERVE_SETTINGS"  # how `serve --workers N` hands its settings to each worker
ROUTES = ("/", "/predict", "/health", "/info", "/metrics", "/docs", "/openapi.json")
METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")
# Payloads this large are tokenized on a thread so they do not hold up every other request.
THREADED_TOKENIZE_CHARS = 16_384


@dataclass(frozen=True)
class ServiceSettings:
    """What the service loads and the limits it enforces (run-time options, not saved with a model)."""

    model: str | None = None  # checkpoint directory or Hub id; None: the embedded default model
    backend: str | None = None  # None: Classifier.load's default
    threads: int | None = None
    max_batch_tokens: int = 8192  # padded tokens per batch
    max_batch_size: int = 64  # texts per batch
    max_wait_ms: float = 5.0  # how long the first queued text waits for others to join its batch
    max_queue_texts: int = 2048  # texts admitted (queued or computing) before 429
    max_request_texts: int = 256  # texts in one request before 413
    max_concurrent_requests: int = 512  # requests being read or served before 429
    max_body_bytes: int = 1 << 20  # request body size before 413

    def __post_init__(self) -> None:
        limits = [f.name for f in dataclasses.fields(self) if f.name.startswith("max_") and f.name != "max_wait_ms"]
        bad = [name for name in limits if not getattr(self, name) > 0]
        if bad:
            raise InputError(f"{', '.join(bad)} must be positive")
        if not self.max_wait_ms >= 0:
            raise InputError(f"max_wait_ms must be 0 or more, got {self.max_wait_ms}")
        if self.max_request_texts > self.max_queue_texts:
            raise InputError("max_request_texts cannot exceed max_queue_texts: such a request could never run")


# ---------------------------------------------------------------------------------------------- bodies


class Parameters(BaseModel):
    """Hugging Face Inference API parameters of text classification."""

    model_config = ConfigDict(extra="forbid")
    top_k: StrictInt | None = Field(
        default=None, ge=1, description="labels per text, best first; null: all. Absent: the best label only."
    )
    function_to_apply: Literal[FUNCTIONS] | None = None  # type: ignore[valid-type]
    truncation: StrictBool = Field(default=False, description="cut texts over the maximum length instead of 422")


class PredictRequest(BaseModel):
    """Hugging Face Inference API body (``parameters``, ``options``) or TEI body (``raw_scores``, ``truncate``)."""

    model_config = ConfigDict(extra="forbid")
    inputs: StrictStr | list[StrictStr] = Field(description="a text, or a list of texts (a batch, never a pair)")
    parameters: Parameters | None = None
    options: dict[str, Any] | None = Field(
        default=None, description="Hugging Face Inference API options (wait_for_model, use_cache): accepted, ignored"
    )
    raw_scores: StrictBool | None = Field(default=None, description="TEI: logits instead of probabilities")
    truncate: StrictBool | None = Field(default=None, description="TEI: cut texts over the maximum length")


class ErrorBody(BaseModel):
    error: str
    error_type: str


class ServiceError(Exception):
    """A request the service answers with an error status (kept inside this module: HTTP is its concern)."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_type = error_type


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

    def on_batch(self, texts: int, tokens: int, waits, seconds: float) -> None:
        self.texts.inc(texts)
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(tokens)
        self.inference_seconds.observe(seconds)
        for wait in waits:
            self.queue_seconds.observe(wait)


def error_response(metrics: Metrics, status: int, error_type: str, message: str) -> JSONResponse:
    metrics.errors.labels(error_type).inc()
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status)


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
        status = 500  # what the client sees if the app ends without a response

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
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


class Limits:
    """For POST: 429 past ``max_concurrent_requests``, 413 past ``max_body_bytes``, before any parsing.

    The body is read here, counting, so a client cannot make the server buffer more than the limit;
    it is then handed on as JSON.
    """

    def __init__(self, app, settings: ServiceSettings, metrics: Metrics):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.active = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":  # no body to hold; probes must answer even when requests pile up
            return await self.app(scope, receive, send)
        limit = self.settings.max_body_bytes
        if self.active >= self.settings.max_concurrent_requests:
            message = f"too many concurrent requests (limit {self.settings.max_concurrent_requests}); retry later"
            return await error_response(self.metrics, 429, "overloaded", message)(scope, receive, send)
        self.active += 1
        try:
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > limit:
                    text = f"request body over the limit of {limit} bytes"
                    return await error_response(self.metrics, 413, "too_large", text)(scope, receive, send)
                if not message.get("more_body", False):
                    break
            # Every POST body is JSON, whatever Content-Type says: `curl -d` sends a form type and would
            # otherwise get a confusing "not an object" error for a well-formed JSON body.
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
            replayed = False

            async def replay():
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}

            await self.app(scope, replay, send)
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

    async def start(self) -> None:
        try:
            classifier = await asyncio.to_thread(self._load)
        except Exception as e:  # noqa: BLE001 - any load failure is reported by /health, not a crash
            log.exception("model failed to load")
            self.failure = f"model failed to load: {e}"
            return
        s = self.settings
        self.batcher = Batcher(
            classifier,
            max_batch_tokens=s.max_batch_tokens,
            max_batch_size=s.max_batch_size,
            max_wait=s.max_wait_ms / 1000,
            max_queue_texts=s.max_queue_texts,
            on_batch=self.metrics.on_batch,
        )
        self.batcher.start()
        self.metrics.admitted.set_function(lambda: self.batcher.admitted)
        self.classifier = classifier
        log.info("model %s loaded (%s backend)", classifier.name, getattr(classifier.backend, "name", "custom"))

    async def stop(self) -> None:
        self.closing = True
        if self.batcher is not None:
            await self.batcher.close()

    def ready(self) -> Classifier:
        if self.closing:
            raise ServiceError(503, "unhealthy", "the server is shutting down")
        if self.classifier is None:
            raise ServiceError(503, "unhealthy", self.failure or "the model is loading; retry shortly")
        return self.classifier

    async def predict(self, body: PredictRequest, default: Literal["hf", "tei"]) -> Any:
        classifier = self.ready()
        hf = body.parameters is not None or body.options is not None
        tei = body.raw_scores is not None or body.truncate is not None
        if hf and tei:
            raise ServiceError(
                422, "validation",
                "mix of Hugging Face (parameters, options) and TEI (raw_scores, truncate) fields; use one API",
            )
        style = "hf" if hf else "tei" if tei else default
        single = isinstance(body.inputs, str)
        texts = [body.inputs] if single else body.inputs
        if len(texts) > self.settings.max_request_texts:
            raise ServiceError(
                413, "too_large", f"{len(texts)} texts in one request, over the limit of {self.settings.max_request_texts}"
            )
        if style == "hf":
            parameters = body.parameters or Parameters()
            truncation = parameters.truncation
            function = parameters.function_to_apply
        else:
            truncation = bool(body.truncate)
            function = "none" if body.raw_scores else None
        sequences = await self._tokenize(classifier, texts, truncation)
        try:
            logits = await self.batcher.submit(sequences)
        except QueueFullError as e:
            raise ServiceError(429, "overloaded", str(e)) from None
        except ShuttingDownError as e:
            raise ServiceError(503, "unhealthy", str(e)) from None
        except Exception:
            log.exception("inference failed")
            raise ServiceError(500, "backend", "inference failed; see the server log") from None
        scores = classifier.scores(logits, function)
        if style == "tei":  # every label, best first, score before label as TEI prints it
            ranked = format_scores(scores, classifier.labels, None)
            ranked = [[{"score": d["score"], "label": d["label"]} for d in row] for row in ranked]
            return ranked[0] if single else ranked
        if "top_k" not in parameters.model_fields_set:  # the pipeline's one-best shape
            return format_scores(scores, classifier.labels)
        return format_scores(scores, classifier.labels, parameters.top_k, single)

    async def _tokenize(self, classifier: Classifier, texts: list[str], truncation: bool) -> list[list[int]]:
        for i, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ServiceError(422, "validation", f"text {i} is not valid Unicode (it has a lone surrogate)") from None
        encode = classifier.tokenizer.encode
        try:
            if sum(len(t) for t in texts) > THREADED_TOKENIZE_CHARS:
                return await asyncio.to_thread(encode, texts, classifier.max_length, truncation)
            return encode(texts, classifier.max_length, truncation)
        except InputError as e:
            raise ServiceError(422, "validation", f"{e}; send truncation/truncate true to cut it") from None

    def info(self) -> dict:
        from . import __version__

        classifier = self.ready()
        s = self.settings
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
            "max_client_batch_size": s.max_request_texts,
            "max_concurrent_requests": s.max_concurrent_requests,
            "max_body_bytes": s.max_body_bytes,
        }


ERRORS = {status: {"model": ErrorBody} for status in (413, 422, 429, 500, 503)}
EXAMPLES = {
    "hf": {"inputs": "a gripping, beautiful film", "parameters": {"top_k": None}},
    "tei": {"inputs": ["a gripping, beautiful film", "dull"], "raw_scores": False, "truncate": True},
}


def create_app(settings: ServiceSettings | None = None, load: Callable[[], Classifier] | None = None) -> FastAPI:
    """The ASGI app. ``load`` returns the classifier (default: ``Classifier.load`` of ``settings``);
    it runs on a thread after start-up, and until it returns the model routes answer 503."""
    from . import __version__

    settings = settings or ServiceSettings()
    if load is None:
        def load() -> Classifier:
            backend = {} if settings.backend is None else {"backend": settings.backend}
            return Classifier.load(settings.model, threads=settings.threads, **backend)

    metrics = Metrics()
    service = Service(settings, load, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(service.start())
        try:
            yield
        finally:
            # uvicorn has already stopped accepting and waited for in-flight requests; finish whatever
            # the batcher still holds before the process goes away.
            if not loading.done():
                loading.cancel()
            await service.stop()

    app = FastAPI(
        title="distilsent",
        version=__version__,
        description="English sentiment classification; Hugging Face Inference API and TEI compatible.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, e: ServiceError) -> JSONResponse:
        return error_response(metrics, e.status, e.error_type, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in e.errors()[:5]:
            if problem.get("type") == "json_invalid":
                error = problem.get("ctx", {}).get("error", "")
                problems.append(f"body is not valid JSON ({error} at character {problem['loc'][-1]})")
                continue
            where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {problem.get('msg', 'invalid')}")
        return error_response(metrics, 422, "validation", "; ".join(problems) or "invalid request body")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        kind = HTTPStatus(e.status_code).phrase.lower().replace(" ", "_")  # not_found, method_not_allowed
        response = error_response(metrics, e.status_code, kind, str(e.detail))
        response.headers.update(e.headers or {})
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        # A bug, not the client's fault: still JSON, and the server goes on (uvicorn logs the traceback).
        return error_response(metrics, 500, "internal", "internal server error")

    @app.post("/", responses=ERRORS, openapi_extra={"requestBody": {"content": {"application/json": {"example": EXAMPLES["hf"]}}}})
    async def predict_hf(body: PredictRequest) -> Any:
        """Classify; Hugging Face Inference API shapes unless the body has TEI fields."""
        return JSONResponse(await service.predict(body, "hf"))

    @app.post("/predict", responses=ERRORS, openapi_extra={"requestBody": {"content": {"application/json": {"example": EXAMPLES["tei"]}}}})
    async def predict_tei(body: PredictRequest) -> Any:
        """Classify; TEI shapes unless the body has Hugging Face fields."""
        return JSONResponse(await service.predict(body, "tei"))

    @app.get("/health", responses={503: {"model": ErrorBody}})
    async def health() -> dict:
        service.ready()
        return {"status": "ok"}

    @app.get("/info", responses={503: {"model": ErrorBody}})
    async def info() -> dict:
        return service.info()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(prometheus_client.generate_latest(metrics.registry), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    # Outermost first: the access log sees every response, including the limits' 413 and 429.
    app.add_middleware(Limits, settings=settings, metrics=metrics)
    app.add_middleware(AccessLog, metrics=metrics)
    return app


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


def serve(
    settings: ServiceSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
    shutdown_timeout: float = 30.0,
) -> None:
    """Run the service until SIGINT/SIGTERM, then stop accepting, finish in-flight requests and exit.

    With ``workers`` > 1 each worker process loads its own model and batcher, and the CPU threads are
    split between them unless ``settings.threads`` says otherwise.
    """
    from .checkpoint import resolve

    resolve(settings.model)  # a missing model is a one-line error now, not a worker that never gets ready
    if workers > 1 and settings.threads is None:
        settings = dataclasses.replace(settings, threads=max(1, (os.cpu_count() or 1) // workers))
    options = dict(
        host=host,
        port=port,
        log_level=log_level,
        log_config=log_config(log_level),
        access_log=False,  # replaced by AccessLog's structured lines
        timeout_graceful_shutdown=shutdown_timeout,
    )
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
    uvicorn.run("distilsent.service:app_from_environment", factory=True, workers=workers, **options)
