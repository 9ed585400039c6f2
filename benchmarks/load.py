"""Load test of `distilsent serve`: many concurrent clients, mixed text lengths, loopback only.

Starts the real server as a subprocess, measures the offline throughput of the same model on the same
texts in this process (the server idle meanwhile), then drives the server with ``--concurrency``
keep-alive connections for a fixed number of requests (after a warm-up), and reports requests/s and
texts/s against the offline figure, p50/p99 latency, errors, the server's RSS before and after, and
what a SIGTERM does to requests in flight. Two attacks follow the clean run, on a fresh server: slow
clients (hundreds of connections trickling their bodies while ordinary requests are sent) and token
bombs (1 MiB texts, a request of 96 texts of 512 tokens with a one-word request behind it, and the
same request abandoned by its client), with the server's RSS before, at peak and after. The figures
go to the ``load`` section of benchmarks/RESULTS.md.

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
import traceback
from pathlib import Path

from results import RESULTS, cpu_name, write_section  # benchmarks/results.py

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
        f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
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
            elif not answer_shape_ok(route, result, n):
                errors["wrong shape"] = errors.get("wrong shape", 0) + 1
            else:
                run["texts"] += n
        writer.close()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    run["seconds"] += time.perf_counter() - started
    run["client_cpu"] += time.process_time() - cpu


def answer_shape_ok(route: str, result, n: int) -> bool:
    """Hugging Face bodies (on /): one list of labels per input, as the hosted Inference API answers. TEI
    bodies (on /predict): one text gives its ranked labels, a list of texts one such list per text."""
    if route == "/predict" and result and isinstance(result[0], dict):
        return n == 1 and all(isinstance(label, dict) for label in result)
    return len(result) == n and all(isinstance(labels, list) for labels in result)


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


async def request_once(port: int, route: str, body: bytes) -> tuple[int, float]:
    """One request on its own connection: (status, seconds); status 0 if the connection failed."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0, time.perf_counter() - started
    try:
        return (await http(reader, writer, route, body))[0], time.perf_counter() - started
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        return 0, time.perf_counter() - started
    finally:
        writer.close()


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
        "p99": sorted(run["latencies"])[int(len(run["latencies"]) * 0.99) - 1] if run["latencies"] else float("nan"),
        "slow": {status: statuses.count(status) for status in sorted(set(statuses))},
        "slow_seconds": time.perf_counter() - started,
        "rss": (rss_before, rss_during, rss_bytes(pid)),
    }


async def token_bombs(port: int, pid: int, long: list[str]) -> dict:
    """1 MiB texts eight at once; a request of many 512-token texts with a one-word request behind it; the same
    big request abandoned by its client. RSS before, peak (sampled every 20 ms) and after."""
    peak = {"rss": 0}
    sampling = True

    async def sample() -> None:
        while sampling:
            peak["rss"] = max(peak["rss"], rss_bytes(pid))
            await asyncio.sleep(0.02)

    one_mib = json.dumps({"inputs": "a gripping, beautiful film. " * 37_000,
                          "parameters": {"truncation": True}}).encode()
    big = json.dumps({"inputs": long, "parameters": {"truncation": True}}).encode()
    word = json.dumps({"inputs": "great"}).encode()
    rss_before = rss_bytes(pid)
    sampler = asyncio.create_task(sample())
    bombs = await asyncio.gather(*(request_once(port, "/", one_mib) for _ in range(8)))
    big_task = asyncio.create_task(request_once(port, "/", big))
    await asyncio.sleep(0.5)  # the big request is tokenized and queued
    word_status, word_seconds = await request_once(port, "/", word)
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
        status, _ = await request_once(port, "/", word)
        metrics = await metrics_text(port)
        admitted = next((float(line.split()[-1]) for line in metrics.splitlines()
                         if line.startswith("distilsent_admitted_tokens ")), 0.0)
        if admitted <= 0 or time.perf_counter() - left > 120:
            break
        await asyncio.sleep(0.1)
    freed_seconds = time.perf_counter() - left
    sampling = False
    await sampler
    return {
        "bombs": {status: [s for s, _ in bombs].count(status) for status, _ in bombs},
        "bomb_seconds": max(seconds for _, seconds in bombs),
        "big": (big_status, big_seconds, len(long)),
        "word": (word_status, word_seconds),
        "freed_seconds": freed_seconds,
        "rss": (rss_before, peak["rss"], rss_bytes(pid)),
    }


async def metrics_text(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return (await reader.read()).decode("utf-8", "replace")
    finally:
        writer.close()


def start_server(command: list[str], log) -> tuple[subprocess.Popen, int]:
    port = free_port()
    server = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
    wait_healthy(port, server, timeout=300)
    return server, port


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


def attack_report(command: list[str], log, slow_count: int, requests) -> str:
    """The slow-client and token-bomb runs on a fresh server, as rows of the report's table."""
    rng = random.Random(2)
    pool = sentences()
    # Each well over 512 tokens; 96 of them fill three quarters of the default token budget (65,536),
    # leaving room for the one-word request sent behind them.
    long = [" ".join(rng.choices(pool, k=30)) for _ in range(96)]
    server, port = start_server(command, log)
    try:
        asyncio.run(drive(port, largest_batches(requests) + requests[:500], 16, time.perf_counter() + 600, new_run()))
        slow = asyncio.run(slow_clients(port, slow_count, requests[-400:], server.pid))
        bombs = asyncio.run(token_bombs(port, server.pid, long))
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    mib = 1 << 20
    rss = lambda values: " / ".join(f"{v / mib:.0f}" for v in values)  # noqa: E731
    big_status, big_seconds, big_texts = bombs["big"]
    word_status, word_seconds = bombs["word"]
    rows = [
        f"| **slow clients** (fresh server): {slow_count} connections sending a body at 0.5 byte/s "
        f"| answered {slow['slow']} after {slow['slow_seconds']:.1f} s | 408 within --body-timeout |",
        f"| ordinary requests sent meanwhile by 8 clients | {slow['ok']} of {slow['sent']} answered 200 "
        f"(errors {slow['errors'] or 0}), p99 {slow['p99'] * 1000:.0f} ms | all 200 |",
        f"| server RSS before / during / after the slow clients | {rss(slow['rss'])} MiB | |",
        f"| **token bombs**: 8 requests of one 1 MiB text at once (truncation) | statuses {bombs['bombs']}, "
        f"slowest {bombs['bomb_seconds']:.2f} s | 200 |",
        f"| one request of {big_texts} texts of 512 tokens | {big_status} in {big_seconds:.1f} s | |",
        f"| a one-word request sent 0.5 s after it | {word_status} in {word_seconds:.2f} s "
        "| not behind the whole big request |",
        f"| the big request abandoned by its client after 0.5 s | server holds no tokens "
        f"{bombs['freed_seconds']:.1f} s after the hang-up | |",
        f"| server RSS before / peak / after the bombs | {rss(bombs['rss'])} MiB | |",
    ]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--backend", default=None,
                        help="backend for both server and offline run (default: the library's)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: all cores)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1000, help="requests before the RSS 'before' figure")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--offline-texts", type=int, default=3000, help="texts of the workload timed offline")
    parser.add_argument("--max-seconds", type=float, default=900, help="stop issuing requests after this long")
    parser.add_argument("--serve-args", default="", help="extra `distilsent serve` options, e.g. '--max-wait-ms 2'")
    parser.add_argument("--slow-clients", type=int, default=520, help="connections trickling bodies in the attack run")
    parser.add_argument("--no-attacks", action="store_true", help="skip the slow-client and token-bomb runs")
    parser.add_argument("--attacks-only", action="store_true", help="print only the attack rows (writes nothing)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    requests = workload(args.warmup + args.requests + 64, seed=0)
    warmup, measured, burst = requests[: args.warmup], requests[args.warmup : -64], requests[-64:]
    command = [sys.executable, "-m", "distilsent", "serve", "--workers", str(args.workers),
               "--log-level", "info", *args.serve_args.split()]
    for flag, value in (("--model", args.model), ("--backend", args.backend), ("--threads", args.threads)):
        if value is not None:
            command += [flag, str(value)]
    log = tempfile.NamedTemporaryFile("w+", prefix="distilsent-serve-", suffix=".log", delete=False)
    if args.attacks_only:
        print(attack_report(command, log, args.slow_clients, measured))
        return
    # The access log (stdout) is written, as in production, but not kept.
    server, port = start_server(command, log)
    try:
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
    attacks = ""
    if not args.no_attacks:
        try:
            attacks = attack_report(command, log, args.slow_clients, measured)
        except Exception as e:  # noqa: BLE001 - keep the clean run's figures; say what broke
            traceback.print_exc()
            attacks = f"| attack runs | failed: {e!r} | |\n"

    latencies = sorted(run["latencies"])
    run["requests"] = len(latencies)
    run["p50"] = latencies[len(latencies) // 2]
    run["p99"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    rps, tps = run["requests"] / run["seconds"], run["texts"] / run["seconds"]
    growth = (rss_after - rss_before) / rss_before
    errors = sum(run["errors"].values())
    mib = 1 << 20
    command_line = "python benchmarks/load.py " + " ".join(sys.argv[1:])
    cpu = cpu_name()
    complete = run["requests"] == len(measured)
    rss_figures = f"{rss_start / mib:.0f} / {rss_before / mib:.0f} / {rss_after / mib:.0f}"
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
| server RSS: at start / after warm-up / after the requests | {rss_figures} MiB | |
| RSS growth over the measured requests | {growth:+.1%} | < 10% |
| RSS after each {RSS_EVERY:,} requests | {' / '.join(f'{r / mib:.0f}' for r in rss_series)} MiB | level |
| client CPU time (shares the cores) | {run['client_cpu']:.1f} s | |
| SIGTERM with {sent} requests in flight | {ok} answered 200; server exit status {exit_code} | all 200 |
{attacks}"""
    print(report)
    print(f"server log: {log.name}")
    if not args.no_write:
        write_section("load", report)
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
