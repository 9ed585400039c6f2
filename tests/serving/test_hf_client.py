"""The official Hugging Face clients against `POST /` of a real uvicorn on a loopback port: what
`huggingface_hub.InferenceClient` and `AsyncInferenceClient` return, their raw request path, their own
exceptions for our errors; and the README's server examples, run as written against the embedded model."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")
hub = pytest.importorskip("huggingface_hub", reason="the client tests need huggingface_hub")
import httpx  # noqa: E402
from huggingface_hub import AsyncInferenceClient, InferenceClient  # noqa: E402
from huggingface_hub.errors import HfHubHTTPError  # noqa: E402
from huggingface_hub.inference._generated.types import TextClassificationOutputElement  # noqa: E402
from huggingface_hub.inference._providers import get_provider_helper  # noqa: E402

from distilsent import Classifier  # noqa: E402
from distilsent.serving.app import ServiceSettings, create_app  # noqa: E402

from ..conftest import ROOT  # noqa: E402
from .kit import Gate, assert_close, uvicorn_server, with_backend  # noqa: E402

TEXT = "a gripping, beautiful film"
TEXTS = ["a great film", "awful, boring plot", "meh, fine"]


@pytest.fixture(autouse=True)
def hermetic_client(monkeypatch):
    """Under HF_HUB_OFFLINE the client refuses every URL, loopback included; without a token of its own it
    would read (and send) a logged-in user's. Neither belongs in a test."""
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "not-a-hub-token")


def wait_healthy(url: str) -> None:
    for _ in range(1000):
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        threading.Event().wait(0.01)
    raise AssertionError("the service never became ready")


@pytest.fixture(scope="module")
def url(clf):
    with uvicorn_server(create_app(ServiceSettings(max_request_texts=8), load=lambda: clf)) as url:
        wait_healthy(url)
        yield url


def same(elements, expected: list[dict]) -> None:
    """Client elements against the library's dicts: the same labels in the same order, scores to float32."""
    assert all(isinstance(e, TextClassificationOutputElement) for e in elements), elements
    assert [e.label for e in elements] == [d["label"] for d in expected]
    assert [e.score for e in elements] == pytest.approx([d["score"] for d in expected], rel=1e-4, abs=1e-6)


def raw_request(client, inputs, parameters: dict):
    """The client's low-level request path (huggingface_hub 1.0 dropped ``post``): the request its provider
    helper prepares for a URL, sent by its own ``_inner_post``; the bytes the server answered."""
    helper = get_provider_helper("hf-inference", task="text-classification", model=client.model)
    request = helper.prepare_request(inputs=inputs, parameters=parameters, headers=client.headers, model=client.model,
                                     api_key=client.token)
    return client._inner_post(request)


# --------------------------------------------------------------------------------------------- answers


def test_text_classification_returns_a_list_of_every_label_or_the_top_k(url, clf):
    client = InferenceClient(model=url)
    answer = client.text_classification(TEXT)
    assert isinstance(answer, list) and len(answer) == len(clf.labels)  # every label, the hosted API's default
    same(answer, clf(TEXT, top_k=None))
    same(client.text_classification("meh, fine", top_k=2), clf("meh, fine", top_k=2))
    same(client.text_classification("meh, fine", top_k=1), clf("meh, fine", top_k=1))
    for function in ("sigmoid", "none", "softmax"):
        same(client.text_classification(TEXT, function_to_apply=function), clf(TEXT, top_k=None,
                                                                                 function_to_apply=function))
    same(client.text_classification(TEXT, top_k=1, function_to_apply="none"),
         clf(TEXT, top_k=1, function_to_apply="none"))
    endpoint = InferenceClient(model=url, provider="hf-inference")  # /health and /info need the provider named
    assert endpoint.health_check() is True and endpoint.get_endpoint_info()["labels"] == clf.labels


def test_a_list_of_texts_through_the_raw_request_path_is_one_list_per_text(url, clf):
    client = InferenceClient(model=url)
    for parameters, top_k in (({}, None), ({"top_k": 1}, 1), ({"top_k": 2, "function_to_apply": "sigmoid"}, 2)):
        options = {"function_to_apply": parameters["function_to_apply"]} if "function_to_apply" in parameters else {}
        answer = TextClassificationOutputElement.parse_obj_as_list(raw_request(client, TEXTS, parameters))
        expected = clf(TEXTS, top_k=top_k, **options)
        assert len(answer) == len(TEXTS)
        for elements, want in zip(answer, expected):
            same(elements, want)


def test_the_async_client_gets_the_same_answers(url, clf):
    async def main():
        async with AsyncInferenceClient(model=url) as client:
            same(await client.text_classification(TEXT), clf(TEXT, top_k=None))
            same(await client.text_classification("meh, fine", top_k=2), clf("meh, fine", top_k=2))
            same(await client.text_classification(TEXT, function_to_apply="sigmoid"),
                 clf(TEXT, top_k=None, function_to_apply="sigmoid"))
            answer = TextClassificationOutputElement.parse_obj_as_list(await raw_request(client, TEXTS, {"top_k": 1}))
            for elements, want in zip(answer, clf(TEXTS, top_k=1)):
                same(elements, want)

    asyncio.run(main())


# --------------------------------------------------------------------------------------------- errors


def raises(call, status: int, words: str) -> HfHubHTTPError:
    """``call`` fails with the client's own HTTP error, whose message holds our JSON body's ``error``."""
    with pytest.raises(HfHubHTTPError) as caught:
        call()
    error = caught.value
    assert error.response.status_code == status, error
    ours = error.response.json()
    assert set(ours) == {"error", "error_type"} and ours["error"] in str(error) and words in ours["error"], str(error)
    return error


def test_errors_are_the_clients_exceptions_with_our_message(url):
    client = InferenceClient(model=url)
    raises(lambda: client.text_classification(TEXT, top_k=0), 422, "top_k")
    raises(lambda: raw_request(client, {"text": "a", "text_pair": "b"}, {}), 422, "text pairs")
    raises(lambda: raw_request(client, ["fun"] * 9, {}), 413, "9 texts in one request")
    raises(lambda: InferenceClient(model=url + "/nope").text_classification(TEXT), 404, "Not Found")

    async def main():
        async with AsyncInferenceClient(model=url) as client:
            try:
                await client.text_classification(TEXT, top_k=0)
            except HfHubHTTPError as error:
                assert error.response.status_code == 422 and error.response.json()["error"] in str(error)
            else:
                raise AssertionError("no error")

    asyncio.run(main())


def test_a_loading_model_is_a_503_the_client_reports_with_our_message(clf):
    loaded = threading.Event()
    app = create_app(ServiceSettings(), load=lambda: loaded.wait(30) and clf)
    with uvicorn_server(app) as url:
        try:
            error = raises(lambda: InferenceClient(model=url).text_classification(TEXT), 503, "loading")
            assert int(error.response.headers["retry-after"]) > 0

            async def main():
                async with AsyncInferenceClient(model=url) as client:
                    try:
                        await client.text_classification(TEXT)
                    except HfHubHTTPError as error:
                        assert error.response.status_code == 503 and "loading" in str(error)
                    else:
                        raise AssertionError("no error")

            asyncio.run(main())
        finally:
            loaded.set()
        wait_healthy(url)
        same(InferenceClient(model=url).text_classification(TEXT), clf(TEXT, top_k=None))


def test_a_full_queue_is_a_429_the_client_reports_with_our_message(clf):
    gate = Gate(clf.backend)
    app = create_app(ServiceSettings(max_queue_texts=1, max_request_texts=1), load=lambda: with_backend(clf, gate))
    with uvicorn_server(app) as url:
        wait_healthy(url)
        answers = []
        first = threading.Thread(target=lambda: answers.append(httpx.post(url, json={"inputs": "fun"}, timeout=30)))
        first.start()
        try:
            for _ in range(1000):
                if app.state.service.batcher.admitted == 1:
                    break
                threading.Event().wait(0.01)
            error = raises(lambda: InferenceClient(model=url).text_classification(TEXT), 429, "queue full")
            assert error.response.headers["retry-after"] == "1"
        finally:
            gate.opened.set()
            first.join(30)
        assert answers[0].status_code == 200


# --------------------------------------------------------------------------------------------- README


def server_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("### Serve it:")
    return text[start : text.index("\n### ", start + 1)]


def documented(language: str) -> list[tuple[list[str], str]]:
    """(lines, answer) of the server section's ``language`` blocks: the lines before each ``# answer``."""
    pairs = []
    for block in re.findall(rf"```{language}\n(.*?)```", server_section(), flags=re.DOTALL):
        lines: list[str] = []
        for line in block.splitlines():
            if line.startswith("# "):
                pairs.append((lines, line[2:]))
                lines = []
            elif line.strip():
                lines.append(line)
    assert pairs, f"no {language} examples with answers in the README's server section"
    return pairs


def agrees(got, written) -> None:
    """An answer as the README writes it: the same nesting, keys in the same order, labels and strings equal,
    scores equal to the 4 decimals written (and a little for other CPUs)."""
    assert_close(got, written, rel=0, abs_tol=1.5e-4)


@pytest.fixture(scope="module")
def default_url():
    """The README's examples are of the embedded model: serve it."""
    model = Classifier.load(threads=1)
    with uvicorn_server(create_app(ServiceSettings(), load=lambda: model)) as url:
        wait_healthy(url)
        yield url


def test_readme_curl_examples_answer_as_written(default_url):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    for lines, answer in documented("sh"):
        command = "\n".join(lines).replace("localhost:8000", default_url.removeprefix("http://"))
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        agrees(json.loads(result.stdout), json.loads(answer))


def test_readme_python_examples_answer_as_written(default_url):
    namespace: dict = {}
    for lines, answer in documented("python"):
        lines = [line.replace("http://localhost:8000", default_url) for line in lines]
        exec("\n".join(lines[:-1]), namespace)
        got = eval(lines[-1], namespace)
        agrees(got, eval(answer, {"TextClassificationOutputElement": TextClassificationOutputElement}))
