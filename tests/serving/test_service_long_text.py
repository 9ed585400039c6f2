"""The service's distilsent fields: long_text, window, stride, aggregate and neutral_below on both routes, and the
per-request window limit."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")

from distilsent import Classifier, long_text  # noqa: E402

from .kit import running  # noqa: E402

LONG = " ".join(["the film was good but the plot was boring and the actors were awful"] * 20)  # ~300 tokens


def close(got, expected):
    assert [d["label"] for d in got] == [d["label"] for d in expected]
    assert [d["score"] for d in got] == pytest.approx([d["score"] for d in expected], rel=1e-5)


def test_over_long_text_without_a_strategy_keeps_its_422(clf):
    async def go():
        async with running(lambda: clf) as client:
            for route, body in (("/", {"inputs": LONG, "parameters": {}}), ("/predict", {"inputs": [LONG]})):
                response = await client.post(route, json=body)
                assert response.status_code == 422 and "long_text" in response.json()["error"]

    asyncio.run(go())


def test_hugging_face_parameters_read_long_texts(clf):
    async def go():
        async with running(lambda: clf) as client:
            for strategy, aggregate in (("head_tail", "mean"), ("window", "mean"), ("window", "max")):
                parameters = {"long_text": strategy, "aggregate": aggregate, "stride": 20, "top_k": None}
                response = await client.post("/", json={"inputs": [LONG, "great fun"], "parameters": parameters})
                assert response.status_code == 200, response.text
                expected = clf([LONG, "great fun"], long_text=strategy, aggregate=aggregate, stride=20, top_k=None)
                for got, want in zip(response.json(), expected):
                    close(got, want)

    asyncio.run(go())


def test_tei_body_reads_long_texts(clf):
    async def go():
        async with running(lambda: clf) as client:
            response = await client.post("/predict", json={"inputs": LONG, "long_text": "window", "stride": 31})
            assert response.status_code == 200, response.text
            close(response.json(), clf(LONG, long_text="window", stride=31, top_k=None))

    asyncio.run(go())


def test_server_default_strategy_applies_when_the_request_does_not_say(clf):
    async def go():
        async with running(lambda: clf, long_text="head_tail") as client:
            response = await client.post("/", json={"inputs": LONG})
            assert response.status_code == 200
            [labels] = response.json()  # one list per input, every label: the shape does not change
            close(labels, clf(LONG, long_text="head_tail", top_k=None))

    asyncio.run(go())


def test_window_width_on_both_routes_and_as_the_server_default(clf):
    async def go():
        want = clf([LONG, "great fun"], long_text="window", window=16, aggregate="max", top_k=None)
        async with running(lambda: clf) as client:
            parameters = {"long_text": "window", "window": 16, "aggregate": "max", "top_k": None}
            response = await client.post("/", json={"inputs": [LONG, "great fun"], "parameters": parameters})
            assert response.status_code == 200, response.text
            for got, expected in zip(response.json(), want):
                close(got, expected)
            response = await client.post("/predict", json={"inputs": [LONG, "great fun"], "long_text": "window",
                                                           "window": 16, "aggregate": "max"})
            assert response.status_code == 200, response.text
            for got, expected in zip(response.json(), want):
                close(got, expected)
            response = await client.post("/predict", json={"inputs": LONG, "long_text": "window", "window": 2})
            assert response.status_code == 422, response.text  # no room for [CLS] + a token + [SEP]
            wide = await client.post("/predict", json={"inputs": LONG, "long_text": "window", "window": 10**6})
            assert wide.status_code == 200  # cut to the model's 64 positions
            close(wide.json(), clf(LONG, long_text="window", top_k=None))
        async with running(lambda: clf, long_text="window", window=16, aggregate="max") as client:
            response = await client.post("/", json={"inputs": [LONG, "great fun"], "parameters": {"top_k": None}})
            assert response.status_code == 200, response.text
            for got, expected in zip(response.json(), want):
                close(got, expected)
            info = (await client.get("/info")).json()
            assert (info["long_text"], info["window"], info["aggregate"]) == ("window", 16, "max")

    asyncio.run(go())


def test_window_limit_per_request(clf):
    async def go():
        async with running(lambda: clf, max_request_windows=8) as client:
            windows = len(clf.windows([LONG], long_text="window", stride=31).sequences)
            assert windows > 8
            response = await client.post("/", json={"inputs": LONG, "parameters": {"long_text": "window",
                                                                                     "stride": 31}})
            assert response.status_code == 413 and "windows in one request" in response.json()["error"]
            response = await client.post("/", json={"inputs": LONG, "parameters": {"long_text": "window",
                                                                                     "stride": 62}})
            assert response.status_code == 200  # a larger stride needs fewer windows
            response = await client.post("/", json={"inputs": LONG, "parameters": {"long_text": "window",
                                                                                     "stride": 100}})
            assert response.status_code == 422 and "stride" in response.json()["error"]
            response = await client.post("/", json={"inputs": LONG, "parameters": {"long_text": "sideways"}})
            assert response.status_code == 422

    asyncio.run(go())


def test_neutral_below_request_parameter(clf):
    def best(answer):  # one list per input, holding the best label alone
        assert all(len(labels) == 1 for labels in answer), answer
        return [labels[0]["label"] for labels in answer]

    async def go():
        async with running(lambda: clf) as client:
            texts = ["great fun", "awful bad"]
            response = await client.post("/", json={"inputs": texts, "parameters": {"neutral_below": 1.0}})
            assert response.status_code == 200
            assert best(response.json()) == ["NEUTRAL", "NEUTRAL"]
            for parameters in ({"neutral_below": 0.0}, {"neutral_below": 0, "top_k": None}, {"neutral_below": 0.0,
                                                                                              "top_k": 1}):
                response = await client.post("/", json={"inputs": texts, "parameters": parameters})
                assert response.status_code == 200, (parameters, response.text)
                assert best(response.json()) == [d["label"] for d in clf(texts)]
            [answer] = (await client.post("/", json={"inputs": "great fun", "parameters": {"neutral_below": 1}})).json()
            assert answer == [{"label": "NEUTRAL", "score": clf("great fun")[0]["score"]}]  # the best score kept
            response = await client.post("/", json={"inputs": texts, "parameters": {"neutral_below": 0.7, "top_k": 2}})
            assert response.status_code == 422 and "one label" in response.json()["error"]
            for bad in (1.5, "0.99", True):  # out of range, or not a number: no coercion
                response = await client.post("/", json={"inputs": texts, "parameters": {"neutral_below": bad}})
                assert response.status_code == 422 and "neutral_below" in response.json()["error"], response.text

    asyncio.run(go())


def test_only_texts_read_as_several_windows_count_toward_the_window_limit(clf):
    short = ["great fun"] * 129  # two words each: never split, whatever the strategy

    async def go():
        for default in ("head_tail", "window"):
            async with running(lambda: clf, long_text=default) as client:
                response = await client.post("/", json={"inputs": short})
                assert response.status_code == 200, response.text  # was 413 "129 windows"
        windows = len(clf.windows([LONG], long_text="window", stride=31).sequences)
        parameters = {"long_text": "window", "stride": 31}
        async with running(lambda: clf, max_request_windows=windows) as client:
            response = await client.post("/", json={"inputs": [LONG, *short[:100]], "parameters": parameters})
            assert response.status_code == 200, response.text
        async with running(lambda: clf, max_request_windows=windows - 1) as client:
            response = await client.post("/", json={"inputs": [LONG], "parameters": parameters})
            assert response.status_code == 413 and f"{windows} windows" in response.json()["error"]

    asyncio.run(go())


def test_the_window_limit_is_checked_before_any_window_is_built(clf, monkeypatch):
    built = []
    real = long_text.window_starts
    monkeypatch.setattr(long_text, "window_starts", lambda *a: built.append(a) or real(*a))
    huge = LONG * 20  # about 6,000 tokens: 6,000 windows of one token each

    async def go():
        async with running(lambda: clf) as client:
            parameters = {"long_text": "window", "window": 3, "stride": 1}
            response = await client.post("/", json={"inputs": huge, "parameters": parameters})
            assert response.status_code == 413 and "windows in one request" in response.json()["error"]
            assert built == []
            response = await client.post("/", json={"inputs": LONG, "parameters": {"long_text": "window"}})
            assert response.status_code == 200 and built  # within the limit, windows are built as before

    asyncio.run(go())


@pytest.mark.parametrize("window,stride", [(None, None), (16, None), (16, 3), (16, 14), (3, 1), (64, 62), (10**6, 7)])
def test_window_count_from_token_counts_is_what_the_plan_builds(clf, window, stride):
    texts = ["great fun", LONG, LONG[: len(LONG) // 3], LONG[:190], "the plot " * 31]
    lengths = [len(ids) for ids in clf.tokenizer.encode(texts, long_text.UNLIMITED)]
    window_plan = clf.windows(texts, long_text="window", window=window, stride=stride)
    per_text = [list(window_plan.owner).count(i) for i in range(len(texts))]
    assert max(per_text) > 1
    assert long_text.count_windows(lengths, clf.max_length, stride=stride, window=window) == \
        sum(n for n in per_text if n > 1)


def test_the_model_s_own_reading_is_the_server_default_and_serve_flags_or_requests_override_it(tmp_path, vocab_file):
    import json

    from ..conftest import make_tiny_model

    directory = make_tiny_model(tmp_path / "reads", vocab_file)
    config = json.loads((directory / "config.json").read_text())
    config["distilsent"] = {"reading": {"long_text": "window", "window": 16, "aggregate": "max"}}
    (directory / "config.json").write_text(json.dumps(config))
    own = Classifier.load(directory, threads=1)

    async def go():
        async with running(lambda: own) as client:
            response = await client.post("/", json={"inputs": LONG})
            assert response.status_code == 200, response.text
            close(response.json()[0], own(LONG, top_k=None))  # as the library reads it, with no arguments
            close(response.json()[0], own(LONG, long_text="window", window=16, aggregate="max", top_k=None))
            info = (await client.get("/info")).json()
            assert (info["long_text"], info["window"], info["aggregate"]) == ("window", 16, "max")
            cut = await client.post("/predict", json={"inputs": LONG, "truncate": True})
            close(cut.json(), own(LONG, long_text="truncate", top_k=None))  # an asked-for cut wins
        async with running(lambda: own, aggregate="mean") as client:
            response = await client.post("/predict", json={"inputs": LONG})
            close(response.json(), own(LONG, aggregate="mean", top_k=None))  # the model's windows, serve's mean
        async with running(lambda: own, long_text="head_tail") as client:
            response = await client.post("/predict", json={"inputs": LONG})
            close(response.json(), own(LONG, long_text="head_tail", top_k=None))

    asyncio.run(go())
