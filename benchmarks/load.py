"""Load test of `distilsent serve`: many concurrent clients, mixed text lengths, loopback only.

Starts the real server as a subprocess, measures the offline throughput of the same model on the same
texts in this process (the server idle meanwhile), then drives the server with ``--concurrency``
keep-alive connections for a fixed number of requests (after a warm-up), and reports requests/s and
texts/s against the offline figure, p50/p99 latency, errors, the server's RSS before and after, and
what a SIGTERM does to requests in flight (the ``clean`` scenario). The others run each on a fresh server
(benchmarks/load_attacks.py): ``attacks``, slow clients (hundreds of connections trickling their bodies while
ordinary requests are sent), token bombs (1 MiB texts, a request of 96 texts of 512 tokens with a one-word
request behind it, and the same request abandoned by its client) and bodies over the limit, with the server's
RSS before, at peak and after; ``explain``, 20 concurrent explanations of 256-word texts while a few clients
classify sentences, with every client's outcome, the prediction latency idle and during, and RSS; ``memory``,
the RSS the server keeps after each kind of burst. The figures go to the ``load`` section of
benchmarks/RESULTS.md when every scenario ran.

    python benchmarks/load.py --model runs/default/best            # 20,000 requests, 64 clients, every scenario
    python benchmarks/load.py --requests 2000 --no-write           # a quick look
    nice -n 5 python benchmarks/load.py --scenarios explain         # one scenario: its rows only, nothing written

The client speaks raw HTTP/1.1 over asyncio streams: it shares the cores with the server, so it
must cost as little CPU as possible (its CPU time is reported).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from load_attacks import attack_rows, explain_rows, memory_rows
from loadkit import (
    CLIENT_ERRORS,
    MIB,
    ROOT,
    drive,
    http,
    largest_batches,
    new_run,
    percentile,
    rss_bytes,
    start_server,
    texts_of,
    workload,
)
from results import RESULTS, cpu_name, write_section  # benchmarks/results.py

RSS_EVERY = 5000
SCENARIOS = ("clean", "attacks", "explain", "memory")


async def sigterm_in_flight(server: subprocess.Popen, port: int, requests, count: int) -> tuple[int, int]:
    """Send ``count`` requests at once, SIGTERM the server while they are in flight; how many got 200."""

    async def one(route, body):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return (await http(reader, writer, route, body))[0]
        except CLIENT_ERRORS:
            return 0
        finally:
            writer.close()

    tasks = [asyncio.create_task(one(route, body)) for route, body, _ in requests[:count]]
    await asyncio.sleep(0.05)  # connected and sent, mostly queued behind the model
    server.send_signal(signal.SIGTERM)
    statuses = await asyncio.gather(*tasks)
    return sum(status == 200 for status in statuses), count


def offline_throughput(model: str | None, backend: str | None, threads: int | None, texts: list[str]) -> float:
    """Texts/s of ``Classifier`` on the whole list at once (sorted and batched under its token budget)."""
    from distilsent import Classifier

    options = {"backend": backend} if backend else {}
    clf = Classifier.load(model, threads=threads, **options)
    clf(texts[:256], truncation=True)  # warm-up: first-call allocations and kernel selection
    started = time.perf_counter()
    clf(texts, truncation=True)
    return len(texts) / (time.perf_counter() - started)


def clean_run(args, command: list[str], log, requests) -> dict:
    """The measured requests on one server, then SIGTERM with a burst in flight: the clean run's figures."""
    warmup, measured, burst = requests[: args.warmup], requests[args.warmup : -64], requests[-64:]
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
    return {**run, "requests": len(run["latencies"]), "measured": len(measured), "offline": offline,
            "p50": percentile(run["latencies"], 0.5), "p99": percentile(run["latencies"], 0.99),
            "rss": (rss_start, rss_before, rss_series), "sigterm": (ok, sent, exit_code)}


def clean_rows(args, run: dict) -> str:
    rps, tps = run["requests"] / run["seconds"], run["texts"] / run["seconds"]
    rss_start, rss_before, rss_series = run["rss"]
    growth = (rss_series[-1] - rss_before) / rss_before
    ok, sent, exit_code = run["sigterm"]
    stopped = "" if run["requests"] == run["measured"] else " (**stopped at the time limit**)"
    return f"""| requests measured (after {args.warmup} warm-up) | {run['requests']:,} of {run['measured']:,} \
in {run['seconds']:.1f} s{stopped} | 20,000 |
| requests/s | {rps:.1f} | |
| texts/s (server) | {tps:.1f} | |
| texts/s (offline `Classifier` on {args.offline_texts:,} of the same texts, same run) | {run['offline']:.1f} | |
| server / offline texts/s | {tps / run['offline']:.1%} | >= 80% |
| latency p50 / p99 | {run['p50'] * 1000:.1f} ms / {run['p99'] * 1000:.1f} ms | |
| errors | {sum(run['errors'].values())} {run['errors'] or ''} | 0 |
| server RSS: at start / after warm-up / after the requests | {rss_start / MIB:.0f} / {rss_before / MIB:.0f} / \
{rss_series[-1] / MIB:.0f} MiB | |
| RSS growth over the measured requests | {growth:+.1%} | < 10% |
| RSS after each {RSS_EVERY:,} requests | {' / '.join(f'{r / MIB:.0f}' for r in rss_series)} MiB | level |
| client CPU time (shares the cores) | {run['client_cpu']:.1f} s | |
| SIGTERM with {sent} requests in flight | {ok} answered 200; server exit status {exit_code} | all 200 |
"""


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
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, run in this order: {', '.join(SCENARIOS)} (default: all); RESULTS.md "
                             "is written only when all ran")
    parser.add_argument("--no-attacks", action="store_true", help="only the clean run (--scenarios clean)")
    parser.add_argument("--attacks-only", action="store_true", help="only the attack rows (--scenarios attacks)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    scenarios = ["clean"] if args.no_attacks else ["attacks"] if args.attacks_only else args.scenarios.split(",")
    if unknown := set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    requests = workload(args.warmup + args.requests + 64, seed=0)
    measured = requests[args.warmup : -64]
    command = [sys.executable, "-m", "distilsent", "serve", "--workers", str(args.workers),
               "--log-level", "info", *args.serve_args.split()]
    for flag, value in (("--model", args.model), ("--backend", args.backend), ("--threads", args.threads)):
        if value is not None:
            command += [flag, str(value)]
    log = tempfile.NamedTemporaryFile("w+", prefix="distilsent-serve-", suffix=".log", delete=False)
    scenario_rows = {
        "clean": lambda: clean_rows(args, clean_run(args, command, log, requests)),
        "attacks": lambda: attack_rows(command, log, args.slow_clients, measured),
        "explain": lambda: explain_rows(command, log),
        "memory": lambda: memory_rows(command, log, measured),
    }
    rows = ""
    for scenario in scenarios:
        try:
            rows += scenario_rows[scenario]()
        except Exception as e:  # noqa: BLE001 - keep the other scenarios' figures; say what broke
            if scenario == "clean":
                raise
            traceback.print_exc()
            rows += f"| {scenario} run | failed: {e!r} | |\n"

    command_line = "python benchmarks/load.py " + " ".join(sys.argv[1:])
    report = f"""## HTTP service under load

`{command_line}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores ({cpu_name()}),
loopback, server and client on the same cores. Model `{args.model or 'default'}`, backend
`{args.backend or 'library default'}`, {args.workers} worker(s), {args.concurrency} concurrent keep-alive clients,
requests: 85% one text / 15% lists of 2-8; texts: SST-2 dev sentences, 10% paragraphs of 3-8 of them;
half Hugging Face bodies on `/`, half TEI bodies on `/predict`, all with truncation. Load average
(1/5/15 min) at start {' '.join(load_before)}, at end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}:
other jobs on the machine distort both the offline and the server figures.

| figure | value | target |
|---|---|---|
{rows}"""
    print(report)
    print(f"server log: {log.name}")
    if not args.no_write and scenarios == list(SCENARIOS):
        write_section("load", report)
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
