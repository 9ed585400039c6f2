"""The HTTP service, through an HTTP client against the app: routes, shapes, errors, batching, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from contextlib import asynccontextmanager

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")
import httpx  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from distilsent import Classifier  # noqa: E402
from distilsent.service import ServiceSettings, create_app  # noqa: E402

TEXTS = ["a great film", "awful, boring plot", "not bad", "i love this movie", "the worst", "fun !", "", "it was ok"]
LONG = "very " * 100  # over the tiny model's 64 positions


@pytest.fixture(scope="module")
def clf(tiny_model_dir) -> Classifier:
    return Classifier.load(tiny_model_dir, threads=1)


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
    app = create_app(ServiceSettings(**limits), load=load)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            client.app = app
            if ready:
                await wait_ready(client)
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


def assert_close(got, expected) -> None:
    """Equal shapes, keys and labels; scores equal to float32 rounding (batches pad differently)."""
    if isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (got, expected)
        for g, e in zip(got, expected):
            assert_close(g, e)
    elif isinstance(expected, dict):
        assert list(got) == list(expected), (got, expected)
        for key in expected:
            assert_close(got[key], expected[key])
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
    else:
        assert got == expected


def assert_error(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type and body["error"], body


def run(coroutine):
    return asyncio.run(coroutine)


# --------------------------------------------------------------------------------------------- shapes


HF_CASES = [
    ({}, {}),
    ({"top_k": None}, {"top_k": None}),
    ({"top_k": 1}, {"top_k": 1}),
    ({"top_k": 5}, {"top_k": 5}),
    ({"function_to_apply": "sigmoid"}, {"function_to_apply": "sigmoid"}),
    ({"function_to_apply": "none", "top_k": None}, {"function_to_apply": "none", "top_k": None}),
    ({"truncation": True}, {"truncation": True}),
]


@pytest.mark.parametrize("parameters,call", HF_CASES)
def test_hugging_face_body_answers_in_pipeline_shapes(clf, parameters, call):
    async def main():
        async with running(lambda: clf) as client:
            for route in ("/", "/predict"):  # `parameters` marks the body as Hugging Face on both routes
                for inputs in ("a great film", TEXTS, TEXTS[:1], []):
                    response = await client.post(route, json={"inputs": inputs, "parameters": parameters})
                    assert response.status_code == 200, response.text
                    assert_close(response.json(), clf(inputs, **call))

    run(main())


def test_plain_body_on_root_is_hugging_face_and_options_are_accepted(clf):
    async def main():
        async with running(lambda: clf) as client:
            response = await client.post("/", json={"inputs": TEXTS})
            assert_close(response.json(), clf(TEXTS))
            response = await client.post("/", json={"inputs": "fun", "options": {"wait_for_model": True}})
            assert_close(response.json(), clf("fun"))

    run(main())


def test_tei_body_answers_in_tei_shapes(clf):
    def tei(text, function=None):
        scores = clf.scores(clf.logits([text]), function)[0]
        ranked = sorted(zip(clf.labels, scores.tolist()), key=lambda pair: -pair[1])
        return [{"score": score, "label": label} for label, score in ranked]

    async def main():
        async with running(lambda: clf) as client:
            # a plain body on /predict is TEI; raw_scores/truncate make it TEI on / as well
            response = await client.post("/predict", json={"inputs": "a great film"})
            assert_close(response.json(), tei("a great film"))
            response = await client.post("/", json={"inputs": TEXTS, "raw_scores": False})
            assert_close(response.json(), [tei(t) for t in TEXTS])
            response = await client.post("/predict", json={"inputs": ["not", "bad"], "raw_scores": True})
            assert_close(response.json(), [tei("not", "none"), tei("bad", "none")])  # two texts, not a pair
            response = await client.post("/predict", json={"inputs": LONG, "truncate": True})
            assert_close(response.json(), tei(LONG))

    run(main())


def test_health_info_metrics_and_docs(clf):
    async def main():
        async with running(lambda: clf) as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            info = (await client.get("/info")).json()
            assert info["labels"] == clf.labels and info["max_input_length"] == clf.max_length == 64
            assert info["backend"] == clf.backend.name and info["model_id"] == clf.name and info["version"]
            await client.post("/", json={"inputs": TEXTS})
            await client.post("/", json={"inputs": 3})
            metrics = (await client.get("/metrics")).text
            for line in (
                'distilsent_requests_total{method="POST",route="/",status="200"} 1.0',
                'distilsent_errors_total{error_type="validation"} 1.0',
                f"distilsent_texts_total {len(TEXTS)}.0",
                "distilsent_batch_texts_count",
                "distilsent_queue_seconds_count",
                "distilsent_inference_seconds_count",
            ):
                assert line in metrics
            schema = (await client.get("/openapi.json")).json()
            assert {"/", "/predict", "/health", "/info", "/metrics"} <= set(schema["paths"])
            assert (await client.get("/docs")).status_code == 200

    run(main())


def test_access_log_is_one_json_line_per_request(clf, caplog):
    async def main():
        async with running(lambda: clf) as client:
            with caplog.at_level(logging.INFO, logger="distilsent.access"):
                await client.post("/", json={"inputs": "fun"})
    run(main())
    record = json.loads([r for r in caplog.records if r.name == "distilsent.access"][-1].getMessage())
    assert record["method"] == "POST" and record["path"] == "/" and record["status"] == 200 and record["ms"] >= 0


# --------------------------------------------------------------------------------------------- errors


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
    b'{"inputs": "x", "parameters": []}',
    b'{"inputs": "x", "raw_scores": 1}',
    b'{"inputs": "x", "parameters": {}, "truncate": true}',  # Hugging Face and TEI at once
]


def test_invalid_bodies_are_422(clf):
    async def main():
        async with running(lambda: clf) as client:
            for body in BAD_BODIES:
                for route in ("/", "/predict"):
                    response = await client.post(route, content=body, headers={"content-type": "application/json"})
                    assert_error(response, 422, "validation")
            # still serving
            assert (await client.post("/", json={"inputs": "fun"})).status_code == 200

    run(main())


def test_text_over_the_maximum_length_is_422_unless_truncation_is_asked(clf):
    async def main():
        async with running(lambda: clf) as client:
            for route, body in [
                ("/", {"inputs": ["fun", LONG]}),
                ("/", {"inputs": LONG, "parameters": {"truncation": False}}),
                ("/predict", {"inputs": LONG}),
                ("/predict", {"inputs": [LONG], "truncate": False}),
            ]:
                response = await client.post(route, json=body)
                assert_error(response, 422, "validation")
                assert "64" in response.json()["error"]
            response = await client.post("/", json={"inputs": ["fun", LONG], "parameters": {"truncation": True}})
            assert_close(response.json(), clf(["fun", LONG], truncation=True))

    run(main())


def test_payload_and_batch_over_the_limits_are_413(clf):
    async def main():
        async with running(lambda: clf, max_body_bytes=1000, max_request_texts=4) as client:
            response = await client.post("/", json={"inputs": "x" * 2000})
            assert_error(response, 413, "too_large")
            response = await client.post("/predict", json={"inputs": ["a"] * 5})
            assert_error(response, 413, "too_large")
            assert (await client.post("/predict", json={"inputs": ["a"] * 4})).status_code == 200

    run(main())


def test_full_queue_is_429_and_the_queued_request_still_succeeds(clf):
    gate = Gate(clf.backend)

    async def main():
        async with running(lambda: with_backend(clf, gate), max_queue_texts=3, max_request_texts=3) as client:
            try:
                first = asyncio.create_task(client.post("/", json={"inputs": TEXTS[:3]}))
                await wait_admitted(client, 3)
                assert_error(await client.post("/", json={"inputs": "one more"}), 429, "overloaded")
            finally:
                gate.opened.set()
            response = await first
            assert_close(response.json(), clf(TEXTS[:3]))
            assert (await client.post("/", json={"inputs": "one more"})).status_code == 200

    run(main())


def test_too_many_concurrent_requests_is_429(clf):
    gate = Gate(clf.backend)

    async def main():
        async with running(lambda: with_backend(clf, gate), max_concurrent_requests=1) as client:
            try:
                first = asyncio.create_task(client.post("/", json={"inputs": "fun"}))
                await wait_admitted(client, 1)
                assert_error(await client.post("/", json={"inputs": "more"}), 429, "overloaded")
                assert (await client.get("/health")).status_code == 200  # probes are not limited
            finally:
                gate.opened.set()
            assert (await first).status_code == 200

    run(main())


def test_loading_is_503_then_ready(clf):
    loaded = threading.Event()

    def slow_load():
        loaded.wait(10)
        return clf

    async def main():
        async with running(slow_load, ready=False) as client:
            try:
                for method, route in [("GET", "/health"), ("GET", "/info"), ("POST", "/"), ("POST", "/predict")]:
                    response = await client.request(method, route, json={"inputs": "fun"})
                    assert_error(response, 503, "unhealthy")
                    assert "loading" in response.json()["error"]
            finally:
                loaded.set()
            await wait_ready(client)
            assert (await client.post("/", json={"inputs": "fun"})).status_code == 200

    run(main())


def test_a_model_that_fails_to_load_is_reported_not_a_crash():
    def broken():
        raise OSError("disk on fire")

    async def main():
        async with running(broken, ready=False) as client:
            for _ in range(100):
                response = await client.get("/health")
                if "disk on fire" in response.text:
                    break
                await asyncio.sleep(0.01)
            assert_error(response, 503, "unhealthy")
            assert "disk on fire" in response.json()["error"]
            assert_error(await client.post("/", json={"inputs": "x"}), 503, "unhealthy")

    run(main())


def test_unknown_routes_and_methods_are_json_errors(clf):
    async def main():
        async with running(lambda: clf) as client:
            assert_error(await client.get("/nope"), 404, "not_found")
            assert_error(await client.delete("/"), 405, "method_not_allowed")
            assert_error(await client.get("/predict"), 405, "method_not_allowed")

    run(main())


# --------------------------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(clf):
    requests = [TEXTS[i % len(TEXTS)] + " " * (i % 3) + "!" * (i % 5) for i in range(40)]
    requests += [[t, "the plot " + t] for t in TEXTS]  # lists travel with single texts

    async def main():
        async with running(lambda: clf, max_wait_ms=200) as client:
            responses = await asyncio.gather(*(client.post("/", json={"inputs": r}) for r in requests))
            for inputs, response in zip(requests, responses):
                assert response.status_code == 200, response.text
                assert_close(response.json(), clf(inputs))
            metrics = (await client.get("/metrics")).text
        batches = next(line for line in metrics.splitlines() if line.startswith("distilsent_batch_texts_count"))
        assert float(batches.split()[-1]) < len(requests)  # merged across requests

    run(main())


def test_batch_plan_covers_every_text_within_the_limits_and_keeps_long_texts_apart():
    from distilsent.classifier import plan_batches as plan

    lengths = [250] * 8 + [25] * 72 + [600]  # paragraphs, sentences and one text over the budget
    batches = plan(lengths, batch_size=64, max_batch_tokens=8192)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) <= 64 and (len(batch) == 1 or len(batch) * width <= 8192)
        assert len({lengths[i] for i in batch}) == 1  # no sentence padded to a paragraph's length
    assert plan([], 64, 8192) == []


def test_one_request_failing_does_not_fail_the_others_in_its_batch(clf):
    poison = clf.tokenizer.encode(["boring"])[0][1]

    class Poisoned:
        def logits(self, ids, mask):
            if (ids == poison).any():
                raise RuntimeError("backend fault")
            return clf.backend.logits(ids, mask)

    async def main():
        async with running(lambda: with_backend(clf, Poisoned()), max_wait_ms=200) as client:
            bodies = [{"inputs": "a great film"}, {"inputs": ["boring", "fun"]}, {"inputs": ["not bad", "the worst"]}]
            good, bad, other = await asyncio.gather(*(client.post("/", json=b) for b in bodies))
            assert_close(good.json(), clf("a great film"))
            assert_close(other.json(), clf(["not bad", "the worst"]))
            assert_error(bad, 500, "backend")
            assert (await client.post("/", json={"inputs": "fun"})).status_code == 200

    run(main())


def test_shutdown_finishes_in_flight_requests_and_refuses_new_ones(clf):
    gate = Gate(clf.backend)
    app = create_app(ServiceSettings(), load=lambda: with_backend(clf, gate))

    async def main():
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            client.app = app
            await wait_ready(client)
            in_flight = [asyncio.create_task(client.post("/", json={"inputs": t})) for t in TEXTS[:4]]
            await wait_admitted(client, 4)
            stopping = asyncio.create_task(lifespan.__aexit__(None, None, None))
            await asyncio.sleep(0.05)
            assert not stopping.done()  # waits for the admitted texts
            assert_error(await client.post("/", json={"inputs": "late"}), 503, "unhealthy")
            gate.opened.set()
            for text, task in zip(TEXTS, in_flight):
                assert_close((await task).json(), clf(text))
            await stopping

    try:
        run(main())
    finally:
        gate.opened.set()


# --------------------------------------------------------------------------------------------- fuzz


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
PARAMETERS = st.fixed_dictionaries(
    {}, optional={"top_k": JSON | st.integers(-2, 4), "function_to_apply": JSON | st.sampled_from(["softmax", "sigmoid", "none"]),
                  "truncation": JSON | st.booleans()}
)
NEAR_VALID = st.fixed_dictionaries(
    {"inputs": st.text(max_size=300) | st.lists(st.text(max_size=80), max_size=6) | JSON},
    optional={"parameters": PARAMETERS | JSON, "raw_scores": st.booleans() | JSON, "truncate": st.booleans() | JSON,
              "options": JSON},
)
BODIES = NEAR_VALID.map(lambda b: json.dumps(b).encode()) | JSON.map(lambda b: json.dumps(b).encode()) | st.binary(max_size=64)


@pytest.fixture(scope="module")
def fuzz_client(clf):
    app = create_app(ServiceSettings(max_body_bytes=2000), load=lambda: clf)
    with TestClient(app) as client:
        for _ in range(500):
            if client.get("/health").status_code == 200:
                break
        yield client


# A deeper pass: DISTILSENT_FUZZ_EXAMPLES=3000 pytest tests/test_service.py -k fuzz
FUZZ_EXAMPLES = int(os.environ.get("DISTILSENT_FUZZ_EXAMPLES", "150"))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(["/", "/predict", "/health", "/info"]), body=BODIES)
def test_fuzzed_bodies_never_give_a_server_error(fuzz_client, route, body):
    response = fuzz_client.post(route, content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()) == {"error", "error_type"}
    else:
        assert isinstance(response.json(), list)


# --------------------------------------------------------------------------------------------- command line


def test_serve_verb_passes_its_options_to_the_service(monkeypatch):
    import distilsent.service as service
    from distilsent.cli import main

    seen = {}
    monkeypatch.setattr(service, "serve", lambda settings, **options: seen.update(settings=settings, **options))
    assert main(["serve", "--model", "m", "--backend", "onnx", "--workers", "2", "--port", "9000",
                 "--max-batch-tokens", "4096", "--max-wait-ms", "2.5"]) == 0
    assert seen["settings"] == ServiceSettings(
        model="m", backend="onnx", workers=2, port=9000, max_batch_tokens=4096, max_wait_ms=2.5
    )
    assert seen["settings"].host == "127.0.0.1" and seen["log_level"] == "info"


def test_without_the_server_dependencies_the_library_imports_and_serve_says_what_to_install():
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"  # as if FastAPI were not installed
        "import distilsent\n"
        "from distilsent.cli import main\n"
        "assert 'distilsent.service' not in sys.modules\n"
        "sys.exit(main(['serve']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "pip install 'distilsent[serve]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
