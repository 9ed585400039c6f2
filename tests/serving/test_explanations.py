"""``POST /explain`` under admission: the library's occlusion answer, at most max_concurrent_explains computing,
work bounded in tokens x occlusions (429, 413), a deadline (503), work dropped when the client hangs up, 503
when shutting down, and metrics of its own."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")

from distilsent import Classifier  # noqa: E402
from distilsent.insight.explain import occlusion  # noqa: E402

from .kit import Gate, assert_error, body_then, call_raw, running, with_backend  # noqa: E402

TEXT = "i love this great movie, the actors are fun!"


class Counting:
    """A backend that counts its calls and how many run at once, each held at ``gate`` first."""

    def __init__(self, gate: Gate):
        self.gate, self.calls, self.active, self.peak = gate, 0, 0, 0
        self.lock = threading.Lock()

    def logits(self, ids, mask):
        with self.lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return self.gate.logits(ids, mask)
        finally:
            with self.lock:
                self.active -= 1


def work_of(clf: Classifier, text: str) -> int:
    """Tokens x occlusions, as the service counts an explanation's work."""
    from distilsent.insight.explain import split_words

    return len(clf.encode([text])[0]) * (len(split_words(text)) + 1)


async def wait_for(condition, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {what}")


def test_the_answer_is_the_librarys_occlusion(clf):
    async def main():
        async with running(lambda: clf) as client:
            for text in (TEXT, "dull", "not bad at all , really"):
                response = await client.post("/explain", json={"inputs": text})
                assert response.status_code == 200, response.text
                expected = occlusion(clf, text).to_dict()
                got = response.json()
                assert {k: v for k, v in got.items() if k not in ("score", "attributions")} == \
                    {k: v for k, v in expected.items() if k not in ("score", "attributions")}
                assert got["score"] == pytest.approx(expected["score"], abs=1e-5)
                assert got["attributions"] == pytest.approx(expected["attributions"], abs=1e-5)

    asyncio.run(main())


def test_explanations_compute_at_most_max_concurrent_explains_at_once_beside_the_batcher(clf):
    gate = Gate(clf.backend)
    counting = Counting(gate)

    async def main():
        async with running(lambda: with_backend(clf, counting), max_concurrent_explains=2) as client:
            explanations = client.app.state.service.explanations
            explanations.pace = 1e9  # as if batches had gone fast: explanations may wait for a thread
            try:
                tasks = [asyncio.create_task(client.post("/explain", json={"inputs": TEXT})) for _ in range(4)]
                await wait_for(lambda: counting.active == 2, "two explanations computing")
                await asyncio.sleep(0.2)
                assert counting.active == 2 and explanations.computing == 2
                assert explanations.work == 4 * work_of(clf, TEXT)  # admitted: two computing, two waiting
                # predictions do not queue behind them: the batcher runs beside the explanation threads
                prediction = asyncio.create_task(client.post("/", json={"inputs": "fun"}))
                await wait_for(lambda: counting.active == 3, "the prediction's batch beside them")
            finally:
                gate.opened.set()
            assert (await prediction).status_code == 200
            assert [r.status_code for r in await asyncio.gather(*tasks)] == [200] * 4
            assert counting.peak == 3 and explanations.work == 0

    try:
        asyncio.run(main())
    finally:
        gate.opened.set()


def test_work_past_the_limit_is_429_with_retry_after_and_one_explanation_over_it_is_413(clf):
    gate = Gate(clf.backend)
    work = work_of(clf, TEXT)

    async def main():
        async with running(lambda: with_backend(clf, gate), max_explain_work=work + work // 2) as client:
            client.app.state.service.explanations.pace = 1e9  # the work limit alone decides
            try:
                first = asyncio.create_task(client.post("/explain", json={"inputs": TEXT}))
                await wait_for(lambda: client.app.state.service.explanations.work == work, "the first admitted")
                response = await client.post("/explain", json={"inputs": TEXT})
                assert_error(response, 429, "overloaded")
                assert "tokens x occlusions" in response.json()["error"]
                assert response.headers["retry-after"] == "1"  # at a pace of 1e9 tokens/s the queue drains at once
                client.app.state.service.explanations.pace = work / 7.2  # 7.2 s for the one admitted: retry in 8
                assert (await client.post("/explain", json={"inputs": TEXT})).headers["retry-after"] == "8"
                client.app.state.service.explanations.pace = 1e-3  # never within the deadline: the deadline
                response = await client.post("/explain", json={"inputs": TEXT})
                assert response.headers["retry-after"] == "45"  # the default explain_timeout
                client.app.state.service.explanations.pace = 1e9
                assert_error(await client.post("/explain", json={"inputs": TEXT + " " + TEXT}), 413, "too_large")
                assert (await client.post("/", json={"inputs": "fun"})).status_code == 200  # predictions go on
            finally:
                gate.opened.set()
            assert (await first).status_code == 200
            assert (await client.post("/explain", json={"inputs": TEXT})).status_code == 200  # work given back
            metrics = (await client.get("/metrics")).text
            for outcome, count in (("ok", 2), ("overloaded", 3), ("too_large", 1)):
                assert f'distilsent_explains_total{{outcome="{outcome}"}} {count}.0' in metrics
            assert "distilsent_explain_seconds_count 2.0" in metrics and "distilsent_explain_work 0.0" in metrics

    try:
        asyncio.run(main())
    finally:
        gate.opened.set()


def test_an_explanation_that_would_not_finish_in_time_at_the_current_pace_is_429_at_once(clf):
    gate = Gate(clf.backend)
    work = work_of(clf, TEXT)

    async def main():
        async with running(lambda: with_backend(clf, gate), explain_timeout=10) as client:
            explanations = client.app.state.service.explanations
            try:
                first = asyncio.create_task(client.post("/explain", json={"inputs": TEXT}))
                await wait_for(lambda: explanations.computing == 1, "the first computing")
                # no batch has run yet, so no pace: nothing may wait for the one thread
                assert_error(await client.post("/explain", json={"inputs": TEXT}), 429, "overloaded")
                explanations.pace = 2.5 * work / 10  # 10 s finish 2.5 texts' work: one more may wait, not two
                second = asyncio.create_task(client.post("/explain", json={"inputs": TEXT}))
                await wait_for(lambda: explanations.admitted == 2, "the second admitted")
                assert_error(await client.post("/explain", json={"inputs": TEXT}), 429, "overloaded")
            finally:
                gate.opened.set()
            assert [(await t).status_code for t in (first, second)] == [200, 200]
            assert explanations.pace > 2.5 * work / 10  # measured on the batches run since

    try:
        asyncio.run(main())
    finally:
        gate.opened.set()


def test_an_explanation_past_its_deadline_is_503_and_starts_no_further_batch(clf):
    gate = Gate(clf.backend)
    counting = Counting(gate)

    async def main():
        async with running(lambda: with_backend(clf, counting), explain_timeout=0.5) as client:
            try:
                response = await client.post("/explain", json={"inputs": TEXT})
                assert_error(response, 503, "timeout")
                assert response.headers["retry-after"]
                assert client.app.state.service.explanations.work == 0
                calls = counting.calls
            finally:
                gate.opened.set()
            await asyncio.sleep(0.3)
            assert counting.calls == calls  # the batch on the thread ended; no other started
            metrics = (await client.get("/metrics")).text
            assert 'distilsent_explains_total{outcome="timeout"} 1.0' in metrics

    try:
        asyncio.run(main())
    finally:
        gate.opened.set()


def test_an_explanation_whose_client_hangs_up_is_dropped(clf):
    gate = Gate(clf.backend)
    counting = Counting(gate)

    async def main():
        async with running(lambda: with_backend(clf, counting)) as client:
            explanations = client.app.state.service.explanations
            try:
                leave = asyncio.Event()
                body = json.dumps({"inputs": TEXT}).encode()
                gone = asyncio.create_task(call_raw(client.app, body_then(body, leave), path="/explain"))
                await wait_for(lambda: counting.active == 1, "the explanation computing")
                leave.set()
                status, _, _ = await asyncio.wait_for(gone, 30)
                assert status == 499 and explanations.work == 0 and explanations.computing == 0
                calls = counting.calls
            finally:
                gate.opened.set()
            await asyncio.sleep(0.3)
            assert counting.calls == calls
            metrics = (await client.get("/metrics")).text
            assert 'distilsent_explains_total{outcome="cancelled"} 1.0' in metrics

    try:
        asyncio.run(main())
    finally:
        gate.opened.set()


def test_explanations_refuse_bad_texts_and_answer_503_once_shutting_down(clf):
    async def main():
        async with running(lambda: clf, max_explain_work=10**7) as client:
            for bad in ({"inputs": ""}, {"inputs": " \n"}, {"inputs": "word " * 257}, {"inputs": ["a"]}, {}):
                assert_error(await client.post("/explain", json=bad), 422, "validation")
            assert (await client.post("/explain", json={"inputs": "word " * 256})).status_code == 200
            client.app.state.service.explanations.close()
            response = await client.post("/explain", json={"inputs": TEXT})
            assert_error(response, 503, "unhealthy")
            assert response.headers["retry-after"]

    asyncio.run(main())
