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
- ``GET /health`` (200 with ``{"status": "ok", "batcher_restarts": n}`` once the model is loaded and the
  batcher runs, 503 otherwise; n counts batcher workers restarted after one died), ``GET /info``,
  ``GET /metrics`` (Prometheus text), ``/docs`` (served from the installed package, no network) and
  ``/openapi.json``; ``GET /ui``, a page to try the model, and ``POST /explain`` (``{"inputs": text}``:
  occlusion attributions per word, what the page highlights; admitted apart from predictions, with limits,
  a deadline and metrics of its own: see :mod:`.explanations`).
- Every error is ``{"error": message, "error_type": kind}`` (what the Hugging Face clients read): 400 Host
  not allowed or a malformed request, 404/405 unknown route or method (405 with ``Allow``), 408 body too
  slow, 413 body or batch over the limits, 415 not JSON, 422 invalid body or text too long without
  truncation, 429 queue full or too many requests, 431 headers too large, 503 loading, failed or shutting
  down (429 and 503 carry ``Retry-After``); 500 only when the backend fails on a request's texts, and only
  for that request. A client that hangs up is logged and counted as 499, not as a server error.
- Every answer carries ``X-Content-Type-Options: nosniff`` and, but for the static ``/docs`` assets,
  ``Cache-Control: no-store``; ``/ui`` also a Content-Security-Policy (its own inline script and style by
  hash, requests to this server only) and ``X-Frame-Options: DENY``.

This module holds the service's state (:class:`Service`: the model, its batcher, loading and shutdown), its
prediction path and :func:`create_app` with the routes. The prediction path is the classifier's chain:
``prepare`` here (on a tokenizer thread for large payloads), :class:`~distilsent.serving.batcher.Batcher` as
its runner (``plan`` and ``run_batch`` over every waiting request), ``complete`` and ``format`` here. The bodies are
in :mod:`.bodies`, what a request passes first in :mod:`.admission`, the metrics, access log and common headers
in :mod:`.metrics`, ``/explain``'s admission and computation in :mod:`.explanations`, and starting a server in
:mod:`.server`. Every setting and its default is in
:class:`~distilsent.serving.settings.ServiceSettings`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any, Literal

from . import missing_extra

try:
    import prometheus_client
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from fastapi_offline import FastAPIOffline
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException
except ImportError as e:
    raise missing_extra(e) from None

from .. import __version__
from ..errors import BatcherFailure, InputError, QueueFullError, ShuttingDownError, WindowLimitError
from ..runtime.classifier import Classifier
from ..runtime.inference import Job
from ..runtime.long_text import Reading
from .admission import Limits
from .batcher import Batcher
from .bodies import (
    ERRORS,
    ApiDocs,
    ExplainRequest,
    HuggingFaceRequest,
    Parameters,
    ServiceError,
    TeiRequest,
    parse_body,
)
from .explanations import Explanations
from .memory import MemoryRelease, malloc_trim
from .metrics import DOCS_ASSETS, NO_STORE, NOSNIFF, AccessLog, Metrics, ResponseHeaders, error_response
from .page import content_security_policy, page
from .settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]

log = logging.getLogger("distilsent.serving.app")

# Payloads this large are tokenized on the tokenizer threads so they do not hold up every other request.
THREADED_TOKENIZE_CHARS = 16_384


class Service:
    """The model, its batcher and the service's state; ``app.state.service``."""

    def __init__(self, settings: ServiceSettings, load: Callable[[], Classifier], metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self._load = load
        self.classifier: Classifier | None = None
        self.batcher: Batcher | None = None
        self.explanations: Explanations | None = None
        self.failure: str | None = None
        self.closing = False
        self.memory = MemoryRelease(malloc_trim())
        # Bounds how many tokenizations run at once: each holds a payload's encodings in memory.
        self._tokenizers = ThreadPoolExecutor(settings.tokenize_threads, thread_name_prefix="distilsent-tokenize")

    async def start(self) -> None:
        try:
            classifier = await asyncio.to_thread(self._load)
        except Exception as e:  # noqa: BLE001 - any load failure is reported by /health, not a crash
            log.error("model failed to load: %s", e)
            self.failure = f"model failed to load: {e}"
            return
        self.batcher = Batcher(classifier, self.settings, on_batch=self._on_batch)
        self.batcher.start()
        self.metrics.admitted.set_function(lambda: self.batcher.admitted)
        self.metrics.admitted_tokens.set_function(lambda: self.batcher.admitted_tokens)
        self.metrics.batcher_restarts.set_function(lambda: self.batcher.restarts)
        self.metrics.memory_releases.set_function(lambda: self.memory.releases)
        self.explanations = Explanations(classifier, self.settings, self.metrics, self._tokenize, self.memory.heavy)
        self.classifier = classifier
        log.info("model %s loaded (%s backend)", classifier.name, getattr(classifier.backend, "name", "custom"))

    async def stop(self) -> None:
        self.closing = True
        if self.batcher is not None:
            await self.batcher.close(self.settings.shutdown_timeout)
        if self.explanations is not None:
            self.explanations.close()
        self._tokenizers.shutdown(wait=False, cancel_futures=True)
        self.memory.close()

    async def _tokenize(self, chars: int, function: Callable, *args) -> Any:
        """``function(*args)``, tokenizing a payload of ``chars`` characters: here if it is small, else on a
        tokenizer thread (at most ``tokenize_threads`` such payloads at once, each heavy work for
        :class:`MemoryRelease`)."""
        if chars <= THREADED_TOKENIZE_CHARS:
            return function(*args)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._tokenizers, function, *args)
        finally:
            self.memory.heavy()

    def _on_batch(self, texts: int, tokens: int, waits, seconds: float) -> None:
        self.metrics.on_batch(texts, tokens, waits, seconds)
        self.memory.batch(tokens)

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
        try:
            read_as = Reading(strategy or "truncate", window=reading.window or served["window"] or classifier.window,
                              stride=reading.stride or served["stride"] or classifier.stride, head=classifier.head,
                              aggregate=reading.aggregate or served["aggregate"] or "mean")
        except InputError as e:
            raise ServiceError(422, "validation", str(e)) from None
        # Without a strategy, truncation says whether an over-long text is cut or refused; with one, it is read.
        job = await self._prepare(classifier, texts, read_as, truncation=truncation or strategy is not None)
        tokens = sum(len(sequence) for sequence in job.sequences)
        if tokens > s.max_queue_tokens:
            raise ServiceError(
                413, "too_large", f"{tokens} tokens in one request, over the limit of {s.max_queue_tokens}"
            )
        logits = await self._submit(request, job.sequences)  # the batcher is the chain's runner
        scores = classifier.complete(job, logits, function).scores
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

    async def _prepare(self, classifier: Classifier, texts: list[str], reading: Reading, truncation: bool) -> Job:
        """:meth:`Classifier.prepare` (on a tokenizer thread for large payloads): the sequences to run, with
        ``max_request_windows`` checked on the token counts before any window is built (3-token windows of a
        1 MiB text are a million lists, over 500 MB, otherwise). Only texts read as several windows count; one
        sequence per text is ``max_request_texts``' to limit."""
        for i, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ServiceError(
                    422, "validation", f"text {i} is not valid Unicode (it has a lone surrogate)"
                ) from None
        prepare = functools.partial(classifier.prepare, texts, reading, truncation=truncation,
                                    window_limit=self.settings.max_request_windows)
        try:
            return await self._tokenize(sum(len(t) for t in texts), prepare)
        except WindowLimitError as e:
            raise ServiceError(413, "too_large", f"{e.windows} windows in one request, over the limit of {e.limit}; "
                               "send fewer or shorter texts, or a larger stride") from None
        except InputError as e:
            if truncation:
                raise ServiceError(422, "validation", str(e)) from None
            raise ServiceError(
                422, "validation", f"{e}; send truncation/truncate true to cut it, or a long_text (head_tail, window)"
            ) from None

    async def _submit(self, request: Request, sequences: list[list[int]]):
        """The batcher's logits, unless the client hangs up first: then its queued texts are dropped."""
        try:
            return await unless_gone(request, self.batcher.submit(sequences))
        except QueueFullError as e:
            raise ServiceError(429, "overloaded", str(e)) from None
        except (ShuttingDownError, BatcherFailure) as e:
            raise ServiceError(503, "unhealthy", str(e)) from None
        except InputError as e:
            raise ServiceError(422, "validation", str(e)) from None
        except ServiceError:
            raise
        except Exception:
            log.exception("inference failed")
            raise ServiceError(500, "backend", "inference failed; see the server log") from None

    async def explain(self, request: Request) -> dict:
        """``POST /explain``: the body checked here, the rest by :class:`Explanations`, while the client waits."""
        self.ready()
        try:
            body = ExplainRequest.model_validate_json(await request.body())
        except ValidationError as e:
            message = "; ".join(p["msg"] for p in e.errors(include_input=False)[:3])
            raise ServiceError(422, "validation", message) from None
        return await unless_gone(request, self.explanations.explain(body.inputs))

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
            "max_concurrent_explains": s.max_concurrent_explains,
            "max_explain_work": s.max_explain_work,
            "explain_timeout": s.explain_timeout,
        }


async def unless_gone(request: Request, work: Awaitable):
    """The result of ``work``, unless the client hangs up first: then ``work`` is cancelled, and has let go of
    what it held, before the request ends as a 499 (logged, counted; nobody reads it)."""
    work = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        pending = {task for task in (work, gone) if not task.done()}
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    if work.cancelled():
        raise ServiceError(499, "client_closed", "the client closed the connection")
    return work.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
        static_url=DOCS_ASSETS,
    )
    app.state.service = service
    _answer_errors(app, metrics)
    _add_routes(app, service, metrics)
    # The last added is outermost: the access log sees every response, including the limits' 4xx, and
    # every response gets the common headers.
    app.add_middleware(Limits, settings=settings, metrics=metrics)
    app.add_middleware(AccessLog, metrics=metrics)
    app.add_middleware(ResponseHeaders)
    return app


def _answer_errors(app: FastAPI, metrics: Metrics) -> None:
    """Every error as the service's JSON error, counted in the metrics."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, e: ServiceError) -> JSONResponse:
        return error_response(metrics, e.status, e.error_type, str(e), retry_after=e.retry_after)

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


def _add_routes(app: FastAPI, service: Service, metrics: Metrics) -> None:
    # The routes read their bodies themselves (the limits come first), so their schemas are given here.
    docs = ApiDocs()

    @app.post("/", **docs.predict("hf"))
    async def predict_hf(request: Request) -> Any:
        """Classify; Hugging Face Inference API shapes unless the body has TEI fields."""
        return JSONResponse(await service.predict(request, "hf"))

    @app.post("/predict", **docs.predict("tei"))
    async def predict_tei(request: Request) -> Any:
        """Classify; TEI shapes unless the body has Hugging Face fields."""
        return JSONResponse(await service.predict(request, "tei"))

    probe_errors = {503: ERRORS[503], 400: ERRORS[400]}

    @app.get("/health", responses=probe_errors)
    async def health() -> dict:
        service.ready()
        return {"status": "ok", "batcher_restarts": service.batcher.restarts}

    @app.get("/info", responses=probe_errors)
    async def info() -> dict:
        return service.info()

    @app.get("/ui", include_in_schema=False)
    async def ui_page() -> Response:
        """A page to try the model in a browser (self-contained: works offline)."""
        # Only its own script and style run, it talks to this server alone, and no other site may frame it.
        headers = {"Content-Security-Policy": content_security_policy(), "X-Frame-Options": "DENY"}
        return Response(page(), media_type="text/html; charset=utf-8", headers=headers)

    @app.post("/explain", **docs.explain())
    async def explain(request: Request) -> Any:
        """Occlusion attributions of each word of one text toward its predicted label (what /ui highlights)."""
        return JSONResponse(await service.explain(request))

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
            schema.setdefault("components", {}).setdefault("schemas", {}).update(docs.definitions)
        return app.openapi_schema

    app.openapi = openapi


def load_classifier(settings: ServiceSettings) -> Classifier:
    backend = {} if settings.backend is None else {"backend": settings.backend}
    return Classifier.load(settings.model, threads=settings.threads, **backend)
