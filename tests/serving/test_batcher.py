"""Cross-request batching (serving/batcher.py): concurrent requests share batches and get their own answers,
failures stay with their request, shutdown finishes work in flight, and the worker cannot hang or stay dead."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")

from distilsent import Classifier  # noqa: E402
from distilsent.serving.app import ServiceSettings, create_app  # noqa: E402

from .kit import (  # noqa: E402
    TEXTS,
    Gate,
    Recording,
    asgi_client,
    assert_close,
    assert_error,
    body_then,
    call_raw,
    counter,
    hosted,
    run,
    running,
    wait_admitted,
    wait_on_thread,
    wait_ready,
    with_backend,
)


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
                await wait_on_thread(client)
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
                await wait_on_thread(client)
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
            await wait_on_thread(client)
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

