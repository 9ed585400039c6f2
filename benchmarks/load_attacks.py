"""The attack and burst scenarios of benchmarks/load.py, each on a fresh server, each giving rows of the
report's table: slow clients, token bombs and bodies over the limit (``attacks``); 20 concurrent explanations
of 256-word texts while a few clients classify single sentences (``explain``); and the server's RSS after each
kind of burst, against its idle level (``memory``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time

from loadkit import (
    CLIENT_ERRORS,
    MIB,
    RssPeak,
    drive,
    http,
    largest_batches,
    metrics_text,
    mib,
    new_run,
    percentile,
    request_once,
    rss_bytes,
    sentences,
    settled_rss,
    start_server,
    stop_server,
)

SETTLE_S = 10  # quiet seconds before an "after" RSS figure: what the server keeps once a burst is over


async def slow_clients(port: int, count: int, requests, pid: int) -> dict:
    """``count`` clients send headers and then one body byte every 2 s (0.5 byte/s) while ``requests``
    are sent by 8 ordinary clients: how both fared, and the server's RSS."""

    async def slow() -> int:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return 0
        try:
            writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{")
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), 2.0)
                    return int(line.split()[1]) if line else 0
                except asyncio.TimeoutError:
                    writer.write(b" ")
                    await writer.drain()
        except (OSError, ValueError, IndexError):
            return 0
        finally:
            writer.close()

    rss_before = rss_bytes(pid)
    started = time.perf_counter()
    slow_tasks = [asyncio.create_task(slow()) for _ in range(count)]
    await asyncio.sleep(1.0)  # let them connect and start trickling
    run = new_run()
    await drive(port, requests, 8, time.perf_counter() + 600, run)
    rss_during = rss_bytes(pid)
    statuses = await asyncio.gather(*slow_tasks)
    failed = sum(n for kind, n in run["errors"].items() if kind.isdigit() or kind == "wrong shape")
    return {
        "ok": len(run["latencies"]) - failed,
        "sent": len(requests),
        "errors": run["errors"],
        "p99": percentile(run["latencies"], 0.99),
        "slow": {status: statuses.count(status) for status in sorted(set(statuses))},
        "slow_seconds": time.perf_counter() - started,
        "rss": (rss_before, rss_during, rss_bytes(pid)),
    }


ONE_MIB = json.dumps({"inputs": "a gripping, beautiful film. " * 37_000, "parameters": {"truncation": True}}).encode()
WORD = json.dumps({"inputs": "great"}).encode()


async def one_mib_texts(port: int) -> list[tuple[int, float]]:
    """8 requests of one 1 MiB text at once (truncation): (status, seconds) of each."""
    return await asyncio.gather(*(request_once(port, "/", ONE_MIB) for _ in range(8)))


def long_texts() -> list[str]:
    """96 texts, each well over 512 tokens: together three quarters of the default token budget (65,536),
    leaving room for the one-word request sent behind them."""
    rng = random.Random(2)
    pool = sentences()
    return [" ".join(rng.choices(pool, k=30)) for _ in range(96)]


async def token_bombs(port: int, pid: int, long: list[str]) -> dict:
    """1 MiB texts eight at once; a request of many 512-token texts with a one-word request behind it; the same
    big request abandoned by its client. RSS before, peak and after."""
    big = json.dumps({"inputs": long, "parameters": {"truncation": True}}).encode()
    rss_before = rss_bytes(pid)
    async with RssPeak(pid, every=0.02) as peak:
        bombs = await one_mib_texts(port)
        big_task = asyncio.create_task(request_once(port, "/", big))
        await asyncio.sleep(0.5)  # the big request is tokenized and queued
        word_status, word_seconds = await request_once(port, "/", WORD)
        big_status, big_seconds = await big_task
        # The same big request, its client gone after 0.5 s: how long until the server holds nothing.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(big)}\r\n\r\n".encode() + big)
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()
        left = time.perf_counter()
        while True:
            await request_once(port, "/", WORD)
            metrics = await metrics_text(port)
            admitted = next((float(line.split()[-1]) for line in metrics.splitlines()
                             if line.startswith("distilsent_admitted_tokens ")), 0.0)
            if admitted <= 0 or time.perf_counter() - left > 120:
                break
            await asyncio.sleep(0.1)
        freed_seconds = time.perf_counter() - left
    return {
        "bombs": {status: [s for s, _ in bombs].count(status) for status, _ in bombs},
        "bomb_seconds": max(seconds for _, seconds in bombs),
        "big": (big_status, big_seconds, len(long)),
        "word": (word_status, word_seconds),
        "freed_seconds": freed_seconds,
        "rss": (rss_before, peak.peak, rss_bytes(pid)),
    }


async def oversized_bodies(port: int, count: int = 8, size: int = 2 * MIB) -> dict:
    """``count`` clients at once, each sending a body of ``size`` bytes (over the default 1 MiB limit) in 64 KiB
    pieces 10 ms apart (a 6.4 MB/s link), then reading: how many read the 413 JSON answer, how many met a
    reset while sending."""

    async def one() -> str:
        body = b'{"inputs": "' + b"a" * (size - 14) + b'"}'
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return "refused"
        try:
            writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            for start in range(0, len(body), 64 << 10):
                writer.write(body[start : start + (64 << 10)])
                await writer.drain()
                await asyncio.sleep(0.01)
            status = int((await reader.readline()).split()[1])
            _, _, answer = (await reader.read()).partition(b"\r\n\r\n")  # the server closes after a 413
            return f"{status} {json.loads(answer)['error_type']}"
        except CLIENT_ERRORS as e:
            return type(e).__name__
        finally:
            writer.close()

    outcomes = await asyncio.gather(*(one() for _ in range(count)))
    return {outcome: outcomes.count(outcome) for outcome in sorted(set(outcomes))}


def attack_rows(command: list[str], log, slow_count: int, requests) -> str:
    """The slow-client, token-bomb and oversized-body runs on a fresh server, as rows of the report's table."""
    long = long_texts()
    server, port = start_server(command, log)
    try:
        asyncio.run(drive(port, largest_batches(requests) + requests[:500], 16, time.perf_counter() + 600, new_run()))
        slow = asyncio.run(slow_clients(port, slow_count, requests[-400:], server.pid))
        bombs = asyncio.run(token_bombs(port, server.pid, long))
        oversized = asyncio.run(oversized_bodies(port))
    finally:
        stop_server(server)
    big_status, big_seconds, big_texts = bombs["big"]
    word_status, word_seconds = bombs["word"]
    rows = [
        f"| **slow clients** (fresh server): {slow_count} connections sending a body at 0.5 byte/s "
        f"| answered {slow['slow']} after {slow['slow_seconds']:.1f} s | 408 within --body-timeout |",
        f"| ordinary requests sent meanwhile by 8 clients | {slow['ok']} of {slow['sent']} answered 200 "
        f"(errors {slow['errors'] or 0}), p99 {slow['p99'] * 1000:.0f} ms | all 200 |",
        f"| server RSS before / during / after the slow clients | {mib(*slow['rss'])} MiB | |",
        f"| **token bombs**: 8 requests of one 1 MiB text at once (truncation) | statuses {bombs['bombs']}, "
        f"slowest {bombs['bomb_seconds']:.2f} s | 200 |",
        f"| one request of {big_texts} texts of 512 tokens | {big_status} in {big_seconds:.1f} s | |",
        f"| a one-word request sent 0.5 s after it | {word_status} in {word_seconds:.2f} s "
        "| not behind the whole big request |",
        f"| the big request abandoned by its client after 0.5 s | server holds no tokens "
        f"{bombs['freed_seconds']:.1f} s after the hang-up | |",
        f"| server RSS before / peak / after the bombs | {mib(*bombs['rss'])} MiB "
        f"({(bombs['rss'][1] - bombs['rss'][0]) / MIB:+.0f} at peak) | within +400 MB |",
        f"| **bodies over the limit**: 8 clients at once sending 2 MiB | {oversized} | every one reads its 413 |",
    ]
    return "\n".join(rows) + "\n"


def explain_text(rng: random.Random, words: int) -> str:
    """A text of exactly ``words`` words as /explain counts them: letters only, so no punctuation adds words."""
    vocabulary = [w for sentence in sentences() for w in sentence.split() if w.isalpha()]
    return " ".join(rng.choices(vocabulary, k=words))


async def explain_flood(port: int, texts: list[str], timeout: float = 150) -> list[tuple[str, float, bool]]:
    """Every text to ``POST /explain`` at once, each on its own connection: (outcome, seconds, Retry-After
    given) per client; the outcome is the status, or the client error, or "none" after ``timeout`` s."""

    async def one(text: str) -> tuple[str, float, bool]:
        headers: dict = {}
        body = json.dumps({"inputs": text}).encode()
        started = time.perf_counter()
        try:
            status, _ = await asyncio.wait_for(request_once(port, "/explain", body, headers), timeout)
        except asyncio.TimeoutError:
            return "none", time.perf_counter() - started, False
        return str(status or "reset"), time.perf_counter() - started, "retry-after" in headers

    return await asyncio.gather(*(one(text) for text in texts))


async def probe(port: int, bodies: list[bytes], clients: int, stop: asyncio.Event, pause: float = 0.1) -> list[float]:
    """``clients`` keep-alive clients classifying one sentence each, ``pause`` s apart, until ``stop``: the
    latencies of those answered 200."""
    latencies: list[float] = []

    async def client(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        while not stop.is_set():
            started = time.perf_counter()
            status, _ = await http(reader, writer, "/", bodies[i % len(bodies)])
            if status == 200:
                latencies.append(time.perf_counter() - started)
            i += clients
            await asyncio.sleep(pause)
        writer.close()

    await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies


async def explain_scenario(port: int, pid: int, clients: int, words: int, probes: int) -> dict:
    rng = random.Random(3)
    texts = [explain_text(rng, words) for _ in range(clients)]
    bodies = [json.dumps({"inputs": s}).encode() for s in rng.sample(sentences(), 200)]
    stop = asyncio.Event()
    idle_probe = asyncio.create_task(probe(port, bodies, probes, stop))
    await asyncio.sleep(10)
    stop.set()
    idle = await idle_probe
    rss_start = rss_bytes(pid)
    stop = asyncio.Event()
    async with RssPeak(pid) as peak:
        during_probe = asyncio.create_task(probe(port, bodies, probes, stop))
        answers = await explain_flood(port, texts)
        stop.set()
        during = await during_probe
    return {"answers": answers, "idle": idle, "during": during,
            "rss": (rss_start, peak.peak, await settled_rss(pid, SETTLE_S))}


def explain_rows(command: list[str], log, clients: int = 20, words: int = 256, probes: int = 4) -> str:
    """``clients`` concurrent explanations of ``words``-word texts on a fresh server, while ``probes`` clients
    classify single sentences: what every client got and when, prediction latency idle and during, RSS."""
    server, port = start_server(command, log)
    try:
        run = asyncio.run(explain_scenario(port, server.pid, clients, words, probes))
    finally:
        stop_server(server)
    answers = run["answers"]
    outcomes = [outcome for outcome, _, _ in answers]
    refused = [retry for outcome, _, retry in answers if outcome in ("429", "503")]
    slowest = max(seconds for _, seconds, _ in answers)
    in_time = sum(outcome in ("200", "429", "503") and seconds <= 60 for outcome, seconds, _ in answers)
    start, peak, after = run["rss"]
    idle_p99, during_p99 = percentile(run["idle"], 0.99), percentile(run["during"], 0.99)
    return "\n".join([
        f"| **explain flood** (fresh server): {clients} concurrent POST /explain of {words} words "
        f"| {dict((o, outcomes.count(o)) for o in sorted(set(outcomes)))}; {in_time} of {clients} answered "
        f"within 60 s, slowest {slowest:.1f} s; Retry-After on {sum(refused)} of {len(refused)} 429/503 "
        "| every client answered within 60 s (200, or 429/503 with Retry-After) |",
        f"| server RSS at start / peak during / {SETTLE_S} s after the flood | {mib(start, peak, after)} MiB "
        f"({(peak - start) / MIB:+.0f} during, {(after - start) / MIB:+.0f} after) | < +250 during, < +300 after |",
        f"| prediction latency ({probes} clients, one sentence each, 0.1 s apart) p50 / p99: idle "
        f"| {percentile(run['idle'], 0.5) * 1000:.0f} / {idle_p99 * 1000:.0f} ms | |",
        f"| the same during the explain flood | {percentile(run['during'], 0.5) * 1000:.0f} / "
        f"{during_p99 * 1000:.0f} ms ({during_p99 / idle_p99:.2f}x idle p99, {len(run['during'])} requests) "
        "| p99 within 2x idle |",
    ]) + "\n"


async def memory_scenario(port: int, pid: int, requests) -> list[tuple[str, int, int, int]]:
    """Warm up, then one burst of each kind: (burst, idle RSS before it, peak, RSS ``SETTLE_S`` s after)."""
    await drive(port, largest_batches(requests) + requests[:500], 16, time.perf_counter() + 600, new_run())
    big = json.dumps({"inputs": long_texts(), "parameters": {"truncation": True}}).encode()
    rng = random.Random(4)
    texts = [explain_text(rng, 256) for _ in range(20)]
    bursts = [
        ("8 requests of one 1 MiB text at once", lambda: one_mib_texts(port)),
        ("a request of 96 texts of 512 tokens", lambda: request_once(port, "/", big)),
        ("20 concurrent explains of 256 words", lambda: explain_flood(port, texts)),
        ("8 concurrent bodies of 2 MiB (over the limit)", lambda: oversized_bodies(port)),
    ]
    figures = []
    for name, burst in bursts:
        before = await settled_rss(pid, SETTLE_S)
        async with RssPeak(pid) as peak:
            await burst()
        figures.append((name, before, peak.peak, await settled_rss(pid, SETTLE_S)))
    return figures


def memory_rows(command: list[str], log, requests) -> str:
    """The server's RSS around each kind of burst, on a fresh server: what it keeps once the burst is over."""
    server, port = start_server(command, log)
    try:
        figures = asyncio.run(memory_scenario(port, server.pid, requests))
    finally:
        stop_server(server)
    idle = figures[0][1]
    rows = [f"| **memory after bursts** (fresh server, warmed up, one burst after another): RSS before / peak / "
            f"{SETTLE_S} s after; idle {idle / MIB:.0f} MiB | | after within 300 MB of idle |"]
    for name, before, peak, after in figures:
        rows.append(f"| {name} | {mib(before, peak, after)} MiB ({(after - idle) / MIB:+.0f} vs idle) | |")
    return "\n".join(rows) + "\n"
