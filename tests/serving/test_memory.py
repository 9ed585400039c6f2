"""Memory given back after bursts: glibc's malloc_trim, called once heavy work has been quiet for a moment."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'distilsent[serve]'")

from distilsent.serving.memory import HEAVY_BATCH_TOKENS, MemoryRelease, malloc_trim  # noqa: E402

from .kit import running  # noqa: E402


class Trims:
    def __init__(self):
        self.calls = 0

    def __call__(self, pad: int) -> int:
        self.calls += 1
        return 1


def test_the_trim_runs_once_heavy_work_has_been_quiet_and_not_after_small_work():
    async def main():
        trims = Trims()
        memory = MemoryRelease(trims, quiet=0.2)
        memory.batch(HEAVY_BATCH_TOKENS - 1)  # ordinary traffic: nothing to give back
        await asyncio.sleep(0.4)
        assert trims.calls == 0
        for _ in range(5):  # a burst: the trim waits until it is over
            memory.batch(HEAVY_BATCH_TOKENS)
            await asyncio.sleep(0.1)
        assert trims.calls == 0
        await asyncio.sleep(0.4)
        assert trims.calls == 1 and memory.releases == 1

    asyncio.run(main())


def test_the_service_gives_memory_back_after_a_burst(clf):
    trims = Trims()

    async def main():
        async with running(lambda: clf) as client:
            service = client.app.state.service
            service.memory._trim, service.memory.quiet = trims, 0.2
            for _ in range(3):
                assert (await client.post("/", json={"inputs": "fun"})).status_code == 200
            await asyncio.sleep(0.4)
            assert trims.calls == 0  # one-word requests are not a burst
            burst = {"inputs": ["a great film " * 20] * 64, "parameters": {"truncation": True}}  # 64 x 64 tokens
            assert (await client.post("/", json=burst)).status_code == 200
            assert (await client.post("/explain", json={"inputs": "a great film"})).status_code == 200
            await asyncio.sleep(0.4)
            assert trims.calls == 1
            assert "distilsent_memory_releases 1.0" in (await client.get("/metrics")).text

    asyncio.run(main())


RELEASED = """
import threading
from distilsent.serving.memory import malloc_trim

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

kept = []

def burst():  # 200 MB in blocks malloc serves from a thread's arena, all freed but one in 32 (what lives on)
    blocks = [bytearray(2048) for _ in range(100_000)]
    kept.extend(blocks[::32])
    del blocks

before = rss()
thread = threading.Thread(target=burst)
thread.start()
thread.join()
held = rss() - before
malloc_trim()(0)
print(held, rss() - before)
"""


def test_malloc_trim_gives_back_what_a_thread_freed():
    if malloc_trim() is None:
        pytest.skip("the C library has no malloc_trim (not glibc)")
    result = subprocess.run([sys.executable, "-c", RELEASED], capture_output=True, text=True, timeout=60, check=True)
    held, after = map(int, result.stdout.split())
    assert held > 100 << 20 and after < held - (100 << 20), (held, after)
