"""What benchmarks/load.py and benchmarks/load_attacks.py share: the workload, a raw HTTP/1.1 client over
asyncio streams (it shares the cores with the server, so it must cost as little CPU as possible), the server
process (started, probed, its RSS with its workers', sampled) and the figures' formats.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SST2_DEV = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
MIB = 1 << 20
CLIENT_ERRORS = (OSError, asyncio.IncompleteReadError, ValueError, IndexError)


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


def largest_batches(requests) -> list[tuple[str, bytes, int]]:
    """Requests that make the server's biggest batch shapes (longest texts, shortest texts by the
    dozen), so that allocator pools reach their final size during the warm-up."""
    texts = sorted(set(texts_of(requests)), key=len)
    bodies = [texts[-32:], texts[:64], texts[len(texts) // 2 : len(texts) // 2 + 64]]
    return [("/", json.dumps({"inputs": b, "parameters": {"truncation": True}}).encode(), len(b)) for b in bodies]


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


class RssPeak:
    """The server's peak RSS while the ``async with`` body runs, sampled every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.1):
        self.pid, self.every, self.peak = pid, every, 0

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(self.every)

    async def __aenter__(self) -> RssPeak:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        self.peak = max(self.peak, rss_bytes(self.pid))


async def settled_rss(pid: int, seconds: float) -> int:
    """The server's RSS after ``seconds`` without requests from us (what it gives back once a burst is over)."""
    await asyncio.sleep(seconds)
    return rss_bytes(pid)


async def http(reader, writer, route: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    """One request on an open connection: its status and body; its headers (lower-case names) into ``headers``."""
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
        if headers is not None:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, await reader.readexactly(length)


async def request_once(port: int, route: str, body: bytes, headers: dict | None = None) -> tuple[int, float]:
    """One request on its own connection: (status, seconds); status 0 if the connection failed."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0, time.perf_counter() - started
    try:
        return (await http(reader, writer, route, body, headers))[0], time.perf_counter() - started
    except CLIENT_ERRORS:
        return 0, time.perf_counter() - started
    finally:
        writer.close()


def new_run() -> dict:
    return {"latencies": [], "errors": {}, "texts": 0, "seconds": 0.0, "client_cpu": 0.0}


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
            except CLIENT_ERRORS as e:
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


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


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


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


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


def mib(*values: int) -> str:
    return " / ".join(f"{v / MIB:.0f}" for v in values)
