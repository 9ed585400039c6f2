"""The HTTP service, through an HTTP client against the app: routes, shapes, errors, batching, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import threading
from contextlib import asynccontextmanager, contextmanager

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")
import httpx  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from distilsent import Classifier  # noqa: E402
from distilsent.serving.app import ServiceSettings, create_app  # noqa: E402

TEXTS = ["a great film", "awful, boring plot", "not bad", "i love this movie", "the worst", "fun !", "meh", "it was ok"]
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


# --------------------------------------------------------------------------------------------- shapes


HF_CASES = [
    ({}, {}),
    ({"top_k": None}, {}),
    ({"top_k": 1}, {"top_k": 1}),
    ({"top_k": 5}, {"top_k": 5}),
    ({"function_to_apply": "sigmoid"}, {"function_to_apply": "sigmoid"}),
    ({"function_to_apply": "none", "top_k": None}, {"function_to_apply": "none"}),
    ({"truncation": True}, {"truncation": True}),
]


@pytest.mark.parametrize("parameters,call", HF_CASES)
def test_hugging_face_body_answers_in_the_hosted_api_shapes(clf, parameters, call):
    async def main():
        async with running(lambda: clf) as client:
            for route in ("/", "/predict"):  # `parameters` marks the body as Hugging Face on both routes
                for inputs in ("a great film", TEXTS, TEXTS[:1], []):
                    response = await client.post(route, json={"inputs": inputs, "parameters": parameters})
                    assert response.status_code == 200, response.text
                    assert_close(response.json(), hosted(clf, inputs, **call))

    run(main())


def test_one_string_is_one_list_of_every_label_as_the_hosted_api_recorded_it(clf):
    # huggingface_hub's cassette of this model on the hosted API, body {"inputs": "I like you", "parameters": {}}:
    # [[{"label":"POSITIVE","score":0.9998695850372314},{"label":"NEGATIVE","score":0.00013043530634604394}]]
    async def main():
        async with running(lambda: clf) as client:
            [answer] = (await client.post("/", json={"inputs": "I like you", "parameters": {}})).json()
            assert [list(d) for d in answer] == [["label", "score"]] * 2
            assert {d["label"] for d in answer} == {"POSITIVE", "NEGATIVE"}
            assert answer[0]["score"] >= answer[1]["score"] and sum(d["score"] for d in answer) == pytest.approx(1)
            two = (await client.post("/", json={"inputs": ["I like you", "dull"]})).json()
            assert len(two) == 2 and all(len(labels) == 2 for labels in two)

    run(main())


def test_plain_body_on_root_is_hugging_face_and_options_are_accepted(clf):
    async def main():
        async with running(lambda: clf) as client:
            response = await client.post("/", json={"inputs": TEXTS})
            assert_close(response.json(), hosted(clf, TEXTS))
            response = await client.post("/", json={"inputs": "fun", "options": {"wait_for_model": True}})
            assert_close(response.json(), hosted(clf, "fun"))

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
            assert (await client.get("/health")).json() == {"status": "ok", "batcher_restarts": 0}
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
    b'{"inputs": "x", "parameters": {"neutral_below": "0.99"}}',  # strict: a string is not a number
    b'{"inputs": "x", "parameters": {"neutral_below": true}}',
    b'{"inputs": "x", "parameters": []}',
    b'{"inputs": "x", "raw_scores": 1}',
    b'{"inputs": "x", "parameters": {}, "truncate": true}',  # Hugging Face and TEI at once
    b'{"inputs": "x", "options": {"n": ' + b"9" * 5000 + b"}}",  # an integer of 5,000 digits
    b'{"inputs": "x", "options": {"n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",  # nesting 100k deep
    b'{"inputs": "caf\xe9"}',  # invalid UTF-8 inside a string
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


def test_an_empty_text_is_422_naming_it_not_a_label(clf):
    async def main():
        async with running(lambda: clf) as client:
            for route, body, error in [
                ("/", {"inputs": ""}, "inputs: the text is empty"),
                ("/predict", {"inputs": " \n\t"}, "inputs: the text is only whitespace"),
                ("/", {"inputs": ["fun", "dull", "  "], "parameters": {}}, "inputs[2]: the text is only whitespace"),
                ("/predict", {"inputs": ["", "fun", "\u3000"], "truncate": True},
                 "inputs[0]: the text is empty; inputs[2]: the text is only whitespace"),
            ]:
                response = await client.post(route, json=body)
                assert_error(response, 422, "validation")
                assert response.json()["error"] == error
            assert clf("")[0]["label"] in clf.labels  # the library keeps the pipeline's answer
            assert (await client.post("/", json={"inputs": []})).json() == []  # no texts is not an empty text

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
            assert_close(response.json(), hosted(clf, ["fun", LONG], truncation=True))

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
                response = await client.post("/", json={"inputs": "one more"})
                assert_error(response, 429, "overloaded")
                assert response.headers["retry-after"] == "1"
            finally:
                gate.opened.set()
            response = await first
            assert_close(response.json(), hosted(clf, TEXTS[:3]))
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
                    assert "loading" in response.json()["error"] and int(response.headers["retry-after"]) > 0
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
            for route in ("/health", "/info", "/metrics"):  # GET routes: 405 whatever the body, not a 415
                for headers in ({}, {"content-type": "text/plain"}, JSON_HEADERS):
                    response = await client.post(route, content=b"{}", headers=headers)
                    assert_error(response, 405, "method_not_allowed")
                    assert response.headers["allow"] == "GET"
            assert_error(await client.post("/nope", content=b"x", headers={"content-type": "text/plain"}), 404,
                         "not_found")

    run(main())


TEXT_PAIRS = [
    {"inputs": {"text": "a great film", "text_pair": "it was"}},
    {"inputs": [{"text": "a great film", "text_pair": "it was"}]},
    {"inputs": ["fun", ["a great film", "it was"]]},
    {"inputs": {"text": "a great film"}, "parameters": {}},
    {"inputs": [["a great film", "it was"]], "truncate": True},
]


def test_text_pairs_get_one_line_saying_so(clf):
    async def main():
        async with running(lambda: clf) as client:
            for body in TEXT_PAIRS:
                for route in ("/", "/predict"):
                    response = await client.post(route, json=body)
                    assert_error(response, 422, "validation")
                    assert response.json()["error"] == (
                        'inputs: text pairs ({"text", "text_pair"}) are not supported; send a text or a list of texts'
                    )
            response = await client.post("/", json={"inputs": [1, 2]})  # not a pair: the usual account
            assert "pair" not in response.json()["error"] and "valid string" in response.json()["error"]

    run(main())


def test_every_answer_says_nosniff_and_api_answers_no_store(clf):
    async def main():
        async with running(lambda: clf, max_body_bytes=100) as client:
            answers = [
                await client.post("/", json={"inputs": "fun"}),
                await client.post("/predict", json={"inputs": "fun"}),
                await client.get("/health"), await client.get("/info"), await client.get("/metrics"),
                await client.get("/openapi.json"), await client.get("/docs"), await client.get("/ui"),
                await client.post("/explain", json={"inputs": "fun"}),
                await client.post("/", json={"inputs": 3}),  # 422 from the route
                await client.post("/", content=b"x", headers={"content-type": "text/plain"}),  # 415 from the limits
                await client.post("/", json={"inputs": "x" * 200}),  # 413 from the limits
                await client.get("/nope"),
                await client.get("/", headers={"host": "attacker.example"}),  # 400 from the limits
            ]
            for response in answers:
                assert response.headers["x-content-type-options"] == "nosniff", response.request.url
                assert response.headers["cache-control"] == "no-store", response.request.url
            asset = next(s for s in re.findall(r'(?:src|href)="([^"]+)"', (await client.get("/docs")).text)
                         if s.startswith("/docs/assets/"))
            response = await client.get(asset)
            assert response.status_code == 200 and response.headers["x-content-type-options"] == "nosniff"
            assert "no-store" not in response.headers.get("cache-control", "")  # static: may be cached

    run(main())


def test_a_server_bug_is_a_json_500_with_the_same_headers(clf):
    app = create_app(ServiceSettings(), load=lambda: clf)

    def broken():
        raise RuntimeError("a bug")

    async def main():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                       base_url="http://localhost") as client:
            await wait_ready(client)
            app.state.service.info = broken
            response = await client.get("/info")
            assert_error(response, 500, "internal")
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["cache-control"] == "no-store"

    run(main())


def test_the_page_may_run_only_its_own_script_and_style_and_may_not_be_framed(clf):
    import base64
    import hashlib

    async def main():
        async with running(lambda: clf) as client:
            response = await client.get("/ui")
            assert response.headers["x-frame-options"] == "DENY"
            policy = dict(d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";"))
            assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
            assert policy["connect-src"] == "'self'" and "unsafe" not in response.headers["content-security-policy"]
            for tag in ("script", "style"):
                [inline] = re.findall(rf"<{tag}>(.*?)</{tag}>", response.text, flags=re.DOTALL)
                digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
                assert policy[f"{tag}-src"] == f"'sha256-{digest}'"
            assert not re.search(r"<[a-z][^>]*\sstyle=", response.text)  # attributes are not covered by the hash

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
                assert_close(response.json(), hosted(clf, inputs))
            metrics = (await client.get("/metrics")).text
        batches = next(line for line in metrics.splitlines() if line.startswith("distilsent_batch_texts_count"))
        assert float(batches.split()[-1]) < len(requests)  # merged across requests

    run(main())


def test_batch_plan_covers_every_text_within_the_limits_and_keeps_long_texts_apart():
    from distilsent.runtime.classifier import plan_batches as plan

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
            assert_close(good.json(), hosted(clf, "a great film"))
            assert_close(other.json(), hosted(clf, ["not bad", "the worst"]))
            assert_error(bad, 500, "backend")
            assert (await client.post("/", json={"inputs": "fun"})).status_code == 200

    run(main())


def test_shutdown_finishes_in_flight_requests_and_refuses_new_ones(clf):
    gate = Gate(clf.backend)
    app = create_app(ServiceSettings(), load=lambda: with_backend(clf, gate))

    async def main():
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        async with asgi_client(app) as client:
            await wait_ready(client)
            in_flight = [asyncio.create_task(client.post("/", json={"inputs": t})) for t in TEXTS[:4]]
            await wait_admitted(client, 4)
            stopping = asyncio.create_task(lifespan.__aexit__(None, None, None))
            for _ in range(500):  # until the shutdown has begun
                if client.app.state.service.closing:
                    break
                await asyncio.sleep(0.01)
            assert not stopping.done()  # the gate holds the admitted texts, and the shutdown waits for them
            assert_error(await client.post("/", json={"inputs": "late"}), 503, "unhealthy")
            gate.opened.set()
            for text, task in zip(TEXTS, in_flight):
                assert_close((await task).json(), hosted(clf, text))
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
    {}, optional={"top_k": JSON | st.integers(-2, 4),
                  "function_to_apply": JSON | st.sampled_from(["softmax", "sigmoid", "none"]),
                  "truncation": JSON | st.booleans()}
)
NEAR_VALID = st.fixed_dictionaries(
    {"inputs": st.text(max_size=300) | st.lists(st.text(max_size=80), max_size=6) | JSON},
    optional={"parameters": PARAMETERS | JSON, "raw_scores": st.booleans() | JSON, "truncate": st.booleans() | JSON,
              "options": JSON},
)
BODIES = (NEAR_VALID.map(lambda b: json.dumps(b).encode()) | JSON.map(lambda b: json.dumps(b).encode())
          | st.binary(max_size=64))


@pytest.fixture(scope="module")
def fuzz_client(clf):
    app = create_app(ServiceSettings(max_body_bytes=2000), load=lambda: clf)
    with TestClient(app, base_url="http://localhost") as client:
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
    import distilsent.serving.server as server
    from distilsent.cli import main

    seen = {}
    monkeypatch.setattr(server, "serve", lambda settings, **options: seen.update(settings=settings, **options))
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
        "assert 'distilsent.serving.app' not in sys.modules\n"
        "sys.exit(main(['serve']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "pip install 'distilsent[serve]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------- the batcher cannot hang


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


def test_an_observer_that_raises_does_not_strand_the_batch(clf):
    async def main():
        async with running(lambda: clf) as client:
            service = client.app.state.service

            def broken(*_):
                raise RuntimeError("metrics exploded")

            service.batcher._on_batch = broken
            response = await asyncio.wait_for(client.post("/", json={"inputs": TEXTS}), 30)
            assert_close(response.json(), hosted(clf, TEXTS))
            assert service.batcher.admitted == 0 and service.batcher.admitted_tokens == 0

    run(main())


def test_a_failure_outside_the_batches_fails_its_requests_with_503_and_the_worker_goes_on(clf):
    class PlanFails(Classifier):
        fail = True

        def plan(self, lengths, **options):
            if PlanFails.fail:
                PlanFails.fail = False
                raise RuntimeError("planner bug")
            return super().plan(lengths, **options)

    broken = PlanFails(clf.backend, clf.tokenizer, clf.config, name=clf.name)

    async def main():
        async with running(lambda: broken) as client:
            response = await asyncio.wait_for(client.post("/", json={"inputs": ["fun", "dull"]}), 30)
            assert_error(response, 503, "unhealthy")
            assert response.headers["retry-after"]
            assert client.app.state.service.batcher.admitted == 0
            assert (await client.get("/health")).status_code == 200
            assert_close((await client.post("/", json={"inputs": "fun"})).json(), hosted(clf, "fun"))

    run(main())


def test_a_dead_worker_fails_the_requests_in_its_hands_and_is_restarted(clf):
    gate = Gate(clf.backend)

    async def main():
        async with running(lambda: with_backend(clf, gate)) as client:
            batcher = client.app.state.service.batcher
            try:
                first = asyncio.create_task(client.post("/", json={"inputs": "fun"}))
                await wait_admitted(client, 1)
                while batcher._jobs:  # until its text is on the inference thread
                    await asyncio.sleep(0.01)
                take = batcher._take

                def broken_take():
                    batcher._take = take  # a bug that strikes once
                    raise RuntimeError("batcher bug")

                batcher._take = broken_take  # the worker dies on its next round
                second = asyncio.create_task(client.post("/", json={"inputs": "dull"}))
                await wait_admitted(client, 2)
            finally:
                gate.opened.set()
            assert (await first).status_code == 200  # its batch was on the thread: it ends as it would have
            response = await asyncio.wait_for(second, 30)
            assert_error(response, 503, "unhealthy")
            assert "batcher bug" in response.json()["error"] and response.headers["retry-after"]
            health = await client.get("/health")
            assert health.status_code == 200 and health.json()["batcher_restarts"] == 1
            assert_close((await client.post("/", json={"inputs": "fun"})).json(), hosted(clf, "fun"))
            assert "distilsent_batcher_restarts 1.0" in (await client.get("/metrics")).text

    run(main())


def test_a_killed_worker_is_restarted_and_the_next_request_is_answered(clf, caplog):
    gate = Gate(clf.backend)

    async def main():
        async with running(lambda: with_backend(clf, gate)) as client:
            batcher = client.app.state.service.batcher
            try:
                held = asyncio.create_task(client.post("/", json={"inputs": "fun"}))
                await wait_admitted(client, 1)
                while batcher._jobs:  # until its text is on the inference thread
                    await asyncio.sleep(0.01)
                batcher._worker.cancel()  # killed while a round is in its hands
                response = await asyncio.wait_for(held, 30)
                assert_error(response, 503, "unhealthy")
                assert response.headers["retry-after"]
            finally:
                gate.opened.set()
            await wait_ready(client)
            assert (await client.get("/health")).json() == {"status": "ok", "batcher_restarts": 1}
            assert_close((await client.post("/", json={"inputs": "dull"})).json(), hosted(clf, "dull"))
            assert batcher.admitted == 0

    with caplog.at_level(logging.ERROR, logger="distilsent.serving.batcher"):
        run(main())
    assert any("the batcher was stopped; restarting it" in r.getMessage() for r in caplog.records)


def test_a_worker_that_keeps_dying_is_restarted_ever_more_slowly(clf):
    async def main():
        async with running(lambda: clf) as client:
            batcher = client.app.state.service.batcher

            def broken_take():
                raise RuntimeError("batcher bug")

            batcher._take = broken_take
            delays = []
            for _ in range(4):
                restarts = batcher.restarts
                assert_error(await client.post("/", json={"inputs": "fun"}), 503, "unhealthy")
                while batcher.restarts == restarts or not batcher.alive:
                    await asyncio.sleep(0.01)
                delays.append(batcher._restart_delay)
            assert delays[0] == 0 and delays[1] <= 0.1 and delays[1] < delays[2] < delays[3] <= 5

    run(main())


class Recording:
    """A backend that notes the first word piece of every row it runs, then waits at ``gate``."""

    def __init__(self, gate, seen: list):
        self.gate, self.seen = gate, seen

    def logits(self, ids, mask):
        self.seen.extend(ids[:, 1].tolist())
        return self.gate.logits(ids, mask)


def test_a_client_that_hangs_up_has_its_queued_texts_dropped_and_is_counted_as_499(clf):
    gate = Gate(clf.backend)
    seen = []
    dull = clf.encode(["dull"])[0][1]

    async def main():
        async with running(lambda: with_backend(clf, Recording(gate, seen))) as client:
            batcher = client.app.state.service.batcher
            try:
                first = asyncio.create_task(client.post("/", json={"inputs": "fun"}))
                await wait_admitted(client, 1)
                leave = asyncio.Event()
                gone = asyncio.create_task(call_raw(client.app, body_then(b'{"inputs": ["dull", "dull"]}', leave)))
                await wait_admitted(client, 3)
                leave.set()  # the client hangs up while its texts wait behind the first batch
                status, _, _ = await asyncio.wait_for(gone, 30)
                assert status == 499 and batcher.admitted == 1
            finally:
                gate.opened.set()
            assert (await first).status_code == 200
            assert dull not in seen  # never computed
            metrics = (await client.get("/metrics")).text
            assert counter(metrics, 499) == 1 and counter(metrics, 500) == 0

    run(main())


def test_a_small_request_is_not_stuck_behind_a_big_one(clf):
    gate = Gate(clf.backend)
    order = []
    fun = clf.encode(["fun"])[0][1]
    big = ["the worst plot"] * 40  # 5 tokens each: 200 tokens, over many rounds of 16 tokens

    async def main():
        recording = with_backend(clf, Recording(gate, order))
        async with running(lambda: recording, max_batch_tokens=16, max_batch_size=4) as client:
            try:
                first = asyncio.create_task(client.post("/", json={"inputs": big}))
                await wait_admitted(client, 40)
                small = asyncio.create_task(client.post("/", json={"inputs": "fun"}))
                await wait_admitted(client, 41)
            finally:
                gate.opened.set()
            assert_close((await small).json(), hosted(clf, "fun"))
            assert_close((await first).json(), hosted(clf, big))
        assert order.index(fun) < len(order) // 2  # served within the next rounds, not after all 40

    run(main())


def test_queued_work_is_limited_by_tokens_too(clf):
    gate = Gate(clf.backend)
    text = "the worst plot"  # 5 tokens

    async def main():
        async with running(lambda: with_backend(clf, gate), max_queue_tokens=12) as client:
            assert_error(await client.post("/", json={"inputs": [text] * 3}), 413, "too_large")  # 15 > 12 alone
            try:
                first = asyncio.create_task(client.post("/", json={"inputs": [text, text]}))
                await wait_admitted(client, 2)
                response = await client.post("/", json={"inputs": text})  # 10 + 5 > 12
                assert_error(response, 429, "overloaded")
                assert "tokens" in response.json()["error"]
            finally:
                gate.opened.set()
            assert (await first).status_code == 200

    run(main())


def test_tokenizations_run_at_most_tokenize_threads_at_once(clf):
    import distilsent.serving.app as service_module

    state = {"active": 0, "peak": 0}
    release = threading.Event()
    lock = threading.Lock()

    class SlowEncode(Classifier):
        def prepare(self, texts, *args, **options):
            with lock:
                state["active"] += 1
                state["peak"] = max(state["peak"], state["active"])
            release.wait(10)
            with lock:
                state["active"] -= 1
            return super().prepare(texts, *args, **options)

    slow = SlowEncode(clf.backend, clf.tokenizer, clf.config, name=clf.name)
    long_text = "a great film " * (service_module.THREADED_TOKENIZE_CHARS // 10)

    async def main():
        async with running(lambda: slow, tokenize_threads=2) as client:
            try:
                body = {"inputs": long_text, "parameters": {"truncation": True}}
                requests = [asyncio.create_task(client.post("/", json=body)) for _ in range(6)]
                for _ in range(500):
                    if state["active"] == 2:
                        break
                    await asyncio.sleep(0.01)
            finally:
                release.set()
            for response in await asyncio.gather(*requests):
                assert response.status_code == 200
        assert state["peak"] == 2

    run(main())


def test_work_outlasting_the_shutdown_timeout_gets_a_json_503_and_close_is_bounded(clf):
    gate = Gate(clf.backend)
    app = create_app(ServiceSettings(shutdown_timeout=0.1), load=lambda: with_backend(clf, gate))

    async def main():
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        async with asgi_client(app) as client:
            await wait_ready(client)
            never = asyncio.Event()
            held = asyncio.create_task(call_raw(app, body_then(b'{"inputs": "fun"}', never)))
            await wait_admitted(client, 1)
            while app.state.service.batcher._jobs:  # until its text is on the inference thread
                await asyncio.sleep(0.01)
            queued = asyncio.create_task(call_raw(app, body_then(b'{"inputs": "dull"}', never)))
            await wait_admitted(client, 2)
            held.cancel()  # what uvicorn does to requests still running when the shutdown timeout ends
            queued.cancel()
            for task in (held, queued):
                status, headers, body = await task
                assert status == 503 and json.loads(body)["error_type"] == "unhealthy" and headers["retry-after"]
            await wait_admitted(client, 1)  # the queued text was dropped; the other one is on the thread
            await asyncio.wait_for(lifespan.__aexit__(None, None, None), 10)  # bounded although the gate is shut

    try:
        run(main())
    finally:
        gate.opened.set()


# --------------------------------------------------------------------------------------------- attacks


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


def test_openapi_lists_the_real_error_codes_metrics_as_text_and_one_api_per_body(clf):
    async def main():
        async with running(lambda: clf) as client:
            schema = (await client.get("/openapi.json")).json()
            for route in ("/", "/predict"):
                post = schema["paths"][route]["post"]
                assert {"400", "408", "413", "415", "422", "429", "500", "503"} <= set(post["responses"])
                body = post["requestBody"]["content"]["application/json"]["schema"]
                names = {option["$ref"].rsplit("/", 1)[1] for option in body["anyOf"]}
                assert names == {"HuggingFaceRequest", "TeiRequest"}
            components = schema["components"]["schemas"]
            assert set(components["HuggingFaceRequest"]["properties"]) == {"inputs", "parameters", "options"}
            assert set(components["TeiRequest"]["properties"]) == {"inputs", "raw_scores", "truncate", "long_text",
                                                                     "window", "stride", "aggregate"}
            assert "window" in components["Parameters"]["properties"]
            for route in ("/", "/predict"):  # the answers: the hosted API's shape for Hugging Face bodies, TEI's
                answer = schema["paths"][route]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
                assert {o["$ref"].rsplit("/", 1)[1] for o in answer["anyOf"]} == {"HuggingFaceAnswer", "TeiAnswer"}
            hosted = components["HuggingFaceAnswer"]
            assert hosted["type"] == "array" and hosted["items"]["items"]["$ref"].endswith("/Label")
            assert set(components["Label"]["properties"]) == {"label", "score"}
            explain = schema["paths"]["/explain"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            assert explain["$ref"].endswith("/ExplainRequest")
            assert components["ExplainRequest"]["properties"]["inputs"]["type"] == "string"
            assert all(components[n]["additionalProperties"] is False for n in ("HuggingFaceRequest", "TeiRequest"))
            metrics = schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
            assert all("text/plain" in k for k in metrics)

    run(main())


def test_docs_page_loads_its_assets_from_the_server_not_a_cdn(clf):
    async def main():
        async with running(lambda: clf) as client:
            page = (await client.get("/docs")).text
            sources = re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r"url: '([^']+)'", page)
            assert sources and all(s.startswith("/") for s in sources), sources
            for source in sources:
                assert (await client.get(source)).status_code == 200, source

    run(main())


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


# --------------------------------------------------------------------------------------------- serve


def test_serve_rejects_out_of_range_ports_in_one_line(capsys):
    from distilsent.cli import main

    with pytest.raises(SystemExit) as exit:  # a usage error, as every verb's
        main(["serve", "--port", "99999"])
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2 and err.endswith("argument --port: expected a port from 1 to 65535, got '99999'")


def test_serve_on_a_port_in_use_is_one_line_and_exit_1(tiny_model_dir, capsys):
    import socket as sockets

    from distilsent.cli import main

    with sockets.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tiny_model_dir), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"distilsent: error: cannot listen on 127.0.0.1:{port}: the port is in use"


def test_serve_with_a_model_that_cannot_load_stops_with_one_line(tiny_model_dir, tmp_path, capsys):
    from distilsent.cli import main

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert main(["serve", "--model", str(broken)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distilsent: error: "), lines


def test_serve_trusts_forwarded_headers_only_when_asked_and_guards_the_protocol(tiny_model_dir, monkeypatch):
    import uvicorn

    import distilsent.serving.server as server
    from distilsent.serving.protocol import GuardedHttp

    configs = []

    def record_and_close(self, sockets=None):
        configs.append(self.config)
        sockets[0].close()

    monkeypatch.setattr(uvicorn.Server, "run", record_and_close)
    server.serve(ServiceSettings(model=str(tiny_model_dir), port=free_port(), max_header_bytes=4096))
    server.serve(ServiceSettings(model=str(tiny_model_dir), port=free_port(), forwarded_allow_ips="10.0.0.1"))
    plain, proxied = configs
    assert plain.proxy_headers is False and proxied.proxy_headers is True and proxied.forwarded_allow_ips == "10.0.0.1"
    assert plain.http is GuardedHttp and plain.h11_max_incomplete_event_size == 4096
    assert plain.header_timeout == ServiceSettings().header_timeout


def free_port() -> int:
    import socket as sockets

    with sockets.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_request_of_max_request_texts_short_texts_is_served(clf):
    async def main():
        async with running(lambda: clf) as client:
            texts = [TEXTS[i % len(TEXTS)] for i in range(ServiceSettings().max_request_texts)]
            response = await client.post("/", json={"inputs": texts})
            assert response.status_code == 200, response.text
            assert_close(response.json(), hosted(clf, texts))

    run(main())


def test_the_onnx_session_keeps_no_memory_arena_after_a_large_batch(clf):
    # An arena keeps the largest batch's activations for the life of the process (a token bomb's peak).
    assert clf.backend.name == "onnx" and clf.backend.options.enable_cpu_mem_arena is False
