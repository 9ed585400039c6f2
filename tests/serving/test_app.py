"""The service's routes through an HTTP client against the app: answer shapes, errors as JSON, headers, the
OpenAPI document and docs page, and fuzzed bodies (serving/app.py, serving/bodies.py, serving/metrics.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")
import httpx  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from distilsent.serving.app import ServiceSettings, create_app  # noqa: E402

from .kit import (  # noqa: E402
    BAD_BODIES,
    HF_CASES,
    JSON_HEADERS,
    LONG,
    TEXT_PAIRS,
    TEXTS,
    Gate,
    assert_close,
    assert_error,
    hosted,
    run,
    running,
    wait_admitted,
    wait_ready,
    with_backend,
)


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


# A deeper pass: DISTILSENT_FUZZ_EXAMPLES=3000 pytest tests/serving/test_app.py -k fuzz
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

