"""Load test of `distilsent serve`: many concurrent clients, mixed text lengths, loopback only.

Starts the real server as a subprocess, measures the offline throughput of the same model on the same
texts in this process (the server idle meanwhile), then drives the server with ``--concurrency``
keep-alive connections for a fixed number of requests (after a warm-up), and reports requests/s and
texts/s against the offline figure, p50/p99 latency, errors, the server's RSS before and after, and
what a SIGTERM does to requests in flight. The figures go to the ``load`` section of
benchmarks/RESULTS.md.

    python benchmarks/load.py --model runs/default/best            # 20,000 requests, 64 clients
    python benchmarks/load.py --requests 2000 --no-write           # a quick look

The client speaks raw HTTP/1.1 over asyncio streams: it shares the two cores with the server, so it
must cost as little CPU as possible (its CPU time is reported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import RESULTS, write_section  # benchmarks/results.py

ROOT = Path(__file__).resolve().parent.parent
SST2_DEV = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
RSS_EVERY = 5000


def sentences() -> list[str]:
    if SST2_DEV.is_file():
        rows = SST2_DEV.read_text(encoding="utf-8").splitlines()[1:]
        return [row.rsplit("\t", 1)[0] for row in rows if row.strip()]
    words = "the film was good great bad awful not very plot actors story fun boring love hate best worst".split()
    rng = random.Random(1)
    return [" ".join(rng.choices(words, k=rng.randint(3, 40))) for _ in range(872)]


def workload(count: int, seed: int) -> list[tuple[str, bytes, int]]:
    """(route, body, texts) per request: mostly one sentence, some paragraphs, some lists of 2-8 texts;
    Hugging Face bodies on /, TEI bodies on /predict."""
    rng = random.Random(seed)
    pool = sentences()

    def text() -> str:
        if rng.random() < 0.1:  # a paragraph of 3-8 sentences: ~100-250 tokens
            return " ".join(rng.choices(pool, k=rng.randint(3, 8)))
        return rng.choice(pool)

    requests = []
    for i in range(count):
        inputs = [text() for _ in range(rng.randint(2, 8))] if rng.random() < 0.15 else text()
        n = len(inputs) if isinstance(inputs, list) else 1
        if i % 2:
            requests.append(("/predict", json.dumps({"inputs": inputs, "truncate": True}).encode(), n))
        else:
            body = {"inputs": inputs, "parameters": {"truncation": True}}
            requests.append(("/", json.dumps(body).encode(), n))
    return requests


def texts_of(requests) -> list[str]:
    out = []
    for _, body, _ in requests:
        inputs = json.loads(body)["inputs"]
        out.extend([inputs] if isinstance(inputs, str) else inputs)
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants (the workers of ``--workers N``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


async def http(reader, writer, route: str, body: bytes) -> tuple[int, bytes]:
    writer.write(
        f"POST {route} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def drive(port: int, requests, concurrency: int, deadline: float, run: dict) -> None:
    """Send every request over ``concurrency`` keep-alive connections, adding to ``run``'s figures;
    stop issuing at ``deadline``."""
    latencies, errors = run["latencies"], run["errors"]
    pending = iter(requests)

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for route, body, n in pending:
            if time.perf_counter() > deadline:
                break
            started = time.perf_counter()
            try:
                status, answer = await http(reader, writer, route, body)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            latencies.append(time.perf_counter() - started)
            result = json.loads(answer)
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
            elif len(result) != n and not (n == 1 and route == "/predict"):  # TEI: one text -> its ranked labels
                errors["wrong shape"] = errors.get("wrong shape", 0) + 1
            else:
                run["texts"] += n
        writer.close()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    run["seconds"] += time.perf_counter() - started
    run["client_cpu"] += time.process_time() - cpu


def new_run() -> dict:
    return {"latencies": [], "errors": {}, "texts": 0, "seconds": 0.0, "client_cpu": 0.0}


def largest_batches(requests) -> list[tuple[str, bytes, int]]:
    """Requests that make the server's biggest batch shapes (longest texts, shortest texts by the
    dozen), so that allocator pools reach their final size during the warm-up."""
    texts = sorted(set(texts_of(requests)), key=len)
    bodies = [texts[-32:], texts[:64], texts[len(texts) // 2 : len(texts) // 2 + 64]]
    return [("/", json.dumps({"inputs": b, "parameters": {"truncation": True}}).encode(), len(b)) for b in bodies]


async def sigterm_in_flight(server: subprocess.Popen, port: int, requests, count: int) -> tuple[int, int]:
    """Send ``count`` requests at once, SIGTERM the server while they are in flight; how many got 200."""

    async def one(route, body):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return (await http(reader, writer, route, body))[0]
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            return 0
        finally:
            writer.close()

    tasks = [asyncio.create_task(one(route, body)) for route, body, _ in requests[:count]]
    await asyncio.sleep(0.05)  # connected and sent, mostly queued behind the model
    server.send_signal(signal.SIGTERM)
    statuses = await asyncio.gather(*tasks)
    return sum(status == 200 for status in statuses), count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, server: subprocess.Popen, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become healthy in time")


def offline_throughput(model: str | None, backend: str | None, threads: int | None, texts: list[str]) -> float:
    """Texts/s of ``Classifier`` on the whole list at once (sorted and batched under its token budget)."""
    from distilsent import Classifier

    options = {"backend": backend} if backend else {}
    clf = Classifier.load(model, threads=threads, **options)
    clf(texts[:256], truncation=True)  # warm-up: first-call allocations and kernel selection
    started = time.perf_counter()
    clf(texts, truncation=True)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--backend", default=None, help="backend for both server and offline run (default: the library's)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: all cores)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1000, help="requests before the RSS 'before' figure")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--offline-texts", type=int, default=3000, help="texts of the workload timed offline")
    parser.add_argument("--max-seconds", type=float, default=900, help="stop issuing requests after this long")
    parser.add_argument("--serve-args", default="", help="extra `distilsent serve` options, e.g. '--max-wait-ms 2'")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    requests = workload(args.warmup + args.requests + 64, seed=0)
    warmup, measured, burst = requests[: args.warmup], requests[args.warmup : -64], requests[-64:]
    port = free_port()
    command = [sys.executable, "-m", "distilsent", "serve", "--port", str(port), "--workers", str(args.workers),
               "--log-level", "info", *args.serve_args.split()]
    for flag, value in (("--model", args.model), ("--backend", args.backend), ("--threads", args.threads)):
        if value is not None:
            command += [flag, str(value)]
    log = tempfile.NamedTemporaryFile("w+", prefix="distilsent-serve-", suffix=".log", delete=False)
    # The access log (stdout) is written, as in production, but not kept.
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
    try:
        wait_healthy(port, server, timeout=300)
        rss_start = rss_bytes(server.pid)
        offline = offline_throughput(args.model, args.backend, args.threads, texts_of(measured)[: args.offline_texts])
        deadline = time.perf_counter() + args.max_seconds
        asyncio.run(drive(port, largest_batches(requests) + warmup, args.concurrency, deadline, new_run()))
        rss_before = rss_bytes(server.pid)
        run, rss_series = new_run(), []
        for start in range(0, len(measured), RSS_EVERY):  # RSS between slices: a leak climbs, a pool levels off
            asyncio.run(drive(port, measured[start : start + RSS_EVERY], args.concurrency, deadline, run))
            rss_series.append(rss_bytes(server.pid))
        rss_after = rss_series[-1]
        ok, sent = asyncio.run(sigterm_in_flight(server, port, burst, len(burst)))
        try:
            exit_code = server.wait(timeout=60)
            # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly
            clean = "Application shutdown complete" in Path(log.name).read_text(encoding="utf-8")
            exit_code = "SIGTERM after a clean shutdown" if exit_code == -signal.SIGTERM and clean else exit_code
        except subprocess.TimeoutExpired:
            exit_code = "still running 60 s after SIGTERM"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    latencies = sorted(run["latencies"])
    run["requests"] = len(latencies)
    run["p50"] = latencies[len(latencies) // 2]
    run["p99"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    rps, tps = run["requests"] / run["seconds"], run["texts"] / run["seconds"]
    growth = (rss_after - rss_before) / rss_before
    errors = sum(run["errors"].values())
    mib = 1 << 20
    command_line = "python benchmarks/load.py " + " ".join(sys.argv[1:])
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    complete = run["requests"] == len(measured)
    report = f"""## HTTP service under load

`{command_line}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores ({cpu}),
loopback, server and client on the same cores. Model `{args.model or 'default'}`, backend
`{args.backend or 'library default'}`, {args.workers} worker(s), {args.concurrency} concurrent keep-alive clients,
requests: 85% one text / 15% lists of 2-8; texts: SST-2 dev sentences, 10% paragraphs of 3-8 of them;
half Hugging Face bodies on `/`, half TEI bodies on `/predict`, all with truncation. Load average
(1/5/15 min) at start {' '.join(load_before)}, at end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}:
other jobs on the machine distort both the offline and the server figures.
{'' if complete else f'**Stopped at the time limit after {run["requests"]} of {len(measured)} requests.**'}

| figure | value | target |
|---|---|---|
| requests measured (after {args.warmup} warm-up) | {run['requests']:,} in {run['seconds']:.1f} s | 20,000 |
| requests/s | {rps:.1f} | |
| texts/s (server) | {tps:.1f} | |
| texts/s (offline `Classifier` on {args.offline_texts:,} of the same texts, same run) | {offline:.1f} | |
| server / offline texts/s | {tps / offline:.1%} | >= 80% |
| latency p50 / p99 | {run['p50'] * 1000:.1f} ms / {run['p99'] * 1000:.1f} ms | |
| errors | {errors} {run['errors'] or ''} | 0 |
| server RSS: at start / after warm-up / after the requests | {rss_start / mib:.0f} / {rss_before / mib:.0f} / {rss_after / mib:.0f} MiB | |
| RSS growth over the measured requests | {growth:+.1%} | < 10% |
| RSS after each {RSS_EVERY:,} requests | {' / '.join(f'{r / mib:.0f}' for r in rss_series)} MiB | level |
| client CPU time (shares the cores) | {run['client_cpu']:.1f} s | |
| SIGTERM with {sent} requests in flight | {ok} answered 200; server exit status {exit_code} | all 200 |
"""
    print(report)
    print(f"server log: {log.name}")
    if not args.no_write:
        write_section("load", report)
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
