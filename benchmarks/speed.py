"""Side-by-side CPU inference speed: transformers pipeline vs distilsent torch, ONNX fp32 and ONNX int8.

    python benchmarks/speed.py                      # the default model and a DistilBERT-base-size model
    python benchmarks/speed.py --model runs/default/best --sizes default
    python benchmarks/speed.py --compare old=DIR new=DIR fp32=DIR   # exported models, interleaved in one process

For each model and engine, on the same weights, in one run: texts/s and tokens/s over SST-2 dev and over
long texts (256-512 tokens), single-text latency p50/p99 for a short sentence, useful GFLOP/s (real tokens
only, padding excluded) as a share of a float32 matrix-multiply peak measured in the same run, SST-2 dev
accuracy, agreement with the torch engine, and peak memory. Each engine runs in its own process so that peak
memory is its own and the ONNX engines never import torch. Writes its section of benchmarks/RESULTS.md.

The DistilBERT-base-size model has random weights (no hub access here): its speed is real, its accuracy is not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import RESULTS, cpu_flags, cpu_name, write_section  # benchmarks/results.py

ROOT = Path(__file__).resolve().parent.parent
SST2_DEV = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
ENGINES = ("pipeline", "torch", "onnx", "int8")
SHORT = "a gripping, beautiful film"
PIPELINE_BATCH = 32
LATENCY_CALLS = 200
LONG_TEXTS = 32
LONG_RANGE = (256, 512)
COMPARE_SHORT_CALLS = 50


def dev_examples(path: Path) -> tuple[list[str], list[int]]:
    from distilsent.data.examples import read_examples

    examples = read_examples(path)
    return [e.text for e in examples], [e.label for e in examples]


def long_texts(texts: list[str], tokenizer) -> list[str]:
    """Deterministic 256-512-token texts: consecutive dev sentences joined until long enough.

    Target lengths step through 256-448 so that batches hold mixed lengths; the sentence that crosses a
    target adds at most ~60 tokens, so texts stay within 512 (what all engines truncate to anyway).
    """
    out, current = [], []
    for text in texts:
        current.append(text)
        joined = " ".join(current)
        n = len(tokenizer.encode([joined], truncation=False, max_length=10**6)[0])
        if n >= LONG_RANGE[0] + (len(out) * 37) % 192:
            out.append(joined)
            current = []
            if len(out) == LONG_TEXTS:
                break
    return out


# --------------------------------------------------------------------------- worker (one engine per process)


def load_engine(engine: str, directory: Path, threads: int):
    """A function texts -> logits (n, labels) float32, in input order."""
    if engine == "pipeline":
        import torch
        from transformers import pipeline

        torch.set_num_threads(threads)
        # float32 as the reference figures were measured: transformers 5 would otherwise keep the default
        # model's stored float16 (dtype="auto"), which is several times slower on a CPU.
        pipe = pipeline("text-classification", model=str(directory), tokenizer=str(directory), device=-1,
                        batch_size=PIPELINE_BATCH, dtype=torch.float32)
        labels = [pipe.model.config.id2label[i] for i in range(pipe.model.config.num_labels)]

        def run(texts):
            results = pipe(texts, top_k=None, function_to_apply="none", truncation=True)
            return np.array([[next(r["score"] for r in row if r["label"] == name) for name in labels]
                             for row in results], dtype=np.float32)

        return run, lambda: pipe(SHORT)
    from distilsent import Classifier

    clf = Classifier.load(directory, backend="torch" if engine == "torch" else "onnx", threads=threads)
    return clf.logits, lambda: clf(SHORT)


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: the latter survives exec, so a worker
    would report its parent's peak whenever that is larger."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(engine: str, directory: Path, threads: int, data: Path) -> dict:
    from distilsent.model.checkpoint import load_config, load_tokenizer

    config = load_config(directory)
    tokenizer = load_tokenizer(directory, config)
    texts, labels = dev_examples(data)
    long = long_texts(texts, tokenizer)
    run, single = load_engine(engine, directory, threads)
    run(texts[:64])  # warm-up: first-call allocations, thread pools
    result = {}
    for name, workload in (("dev", texts), ("long", long)):
        lengths = [len(s) for s in tokenizer.encode(workload)]
        best, logits = float("inf"), None
        for _ in range(2):
            start = time.perf_counter()
            logits = run(workload)
            best = min(best, time.perf_counter() - start)
        flops = sum(config.flops_per_token(n) * n for n in lengths)
        result[name] = {"texts": len(workload), "tokens": sum(lengths), "seconds": best,
                        "gflops": flops / best / 1e9, "predictions": logits.argmax(-1).tolist(),
                        "logits": logits.tolist() if name == "dev" else None}
    result["accuracy"] = float((np.array(result["dev"]["predictions"]) == np.array(labels)).mean())
    for _ in range(20):
        single()
    times = []
    for _ in range(LATENCY_CALLS):
        start = time.perf_counter()
        single()
        times.append(time.perf_counter() - start)
    result["p50_ms"] = 1000 * float(np.percentile(times, 50))
    result["p99_ms"] = 1000 * float(np.percentile(times, 99))
    result["peak_mb"] = peak_rss_mb()
    result["torch_imported"] = "torch" in sys.modules
    return result


def compare(dirs: dict[str, Path], threads: int, data: Path, rounds: int, cpu_time: bool) -> None:
    """Exported models side by side in this one process: SST-2 dev accuracy, label agreement, labels that
    change between batch_size=1 and the default batches, then speed as a ratio to the first model.

    The models run back to back, in rotating order, ``rounds`` times, and each round's ratio is taken before
    the median: on a CPU shared with other jobs the load drifts between rounds far more than within one.
    ``cpu_time`` counts this process's CPU seconds instead of wall time, which other jobs disturb less; use
    it with ``--threads 1``, as ONNX Runtime's pool threads spin while they wait.
    """
    from distilsent import Classifier

    texts, labels = dev_examples(data)
    clfs = {name: Classifier.load(directory, backend="onnx", threads=threads) for name, directory in dirs.items()}
    names = list(clfs)
    predictions = {}
    for name, clf in clfs.items():
        batched, alone = clf.logits(texts), clf.logits(texts, batch_size=1)
        predictions[name] = batched.argmax(-1)
        score_change = np.abs(clf.scores(batched) - clf.scores(alone)).max()
        agreement = ", ".join(f"{other} {100 * (predictions[name] == predictions[other]).mean():.2f}%"
                              for other in names[:names.index(name)])
        print(f"{name}: accuracy {100 * (predictions[name] == np.array(labels)).mean():.2f}%; labels that differ "
              f"between batch_size=1 and the default batches: {(batched.argmax(-1) != alone.argmax(-1)).sum()} "
              f"(max score change {score_change:.2g}); label agreement with {agreement or '-'}", flush=True)
    clock = time.process_time if cpu_time else time.perf_counter
    dev, short = ({name: [] for name in names} for _ in range(2))
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = clock()
            clfs[name].logits(texts)
            dev[name].append(clock() - start)
            start = clock()
            for _ in range(COMPARE_SHORT_CALLS):
                clfs[name](SHORT)
            short[name].append((clock() - start) / COMPARE_SHORT_CALLS)
    first = names[0]
    kind = "CPU" if cpu_time else "wall"
    for name in names:
        dev_ratio = np.median(np.array(dev[first]) / np.array(dev[name]))
        short_ratio = np.median(np.array(short[first]) / np.array(short[name]))
        print(f"{name}: dev {len(texts) / np.median(dev[name]):.0f} texts/s ({kind} time), speed x{dev_ratio:.3f} of "
              f"{first}; one short text {1000 * np.median(short[name]):.2f} ms, speed x{short_ratio:.3f} of {first} "
              f"(medians of {rounds} rounds, {threads} threads)")


# --------------------------------------------------------------------------- driver


def matmul_peak(threads: int) -> float:
    """Best float32 GFLOP/s of a large square matrix multiply with ``threads`` threads (torch, i.e. MKL/oneDNN)."""
    import torch

    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(8):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def base_size_model(directory: Path, tokenizer_dir: Path) -> Path:
    """DistilBERT-base size (768 dim, 6 layers, 12 heads, 3072 FFN) with seeded random weights."""
    import torch

    from distilsent.model.checkpoint import load_tokenizer, save_model
    from distilsent.model.config import DistilBertConfig
    from distilsent.model.distilbert import DistilBertForSequenceClassification

    config = DistilBertConfig()
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(config)
    save_model(model, load_tokenizer(tokenizer_dir, config), directory,
               card="# random DistilBERT-base-size weights, for speed only\n")
    return directory


def prepare(size: str, model: Path, scratch: Path) -> dict[str, Path]:
    from distilsent.runtime.export import export

    source = model if size == "default" else base_size_model(scratch / f"{size}-torch", model)
    dirs = {"pipeline": source, "torch": source, "onnx": scratch / f"{size}-onnx", "int8": scratch / f"{size}-int8"}
    export(source, dirs["onnx"])
    export(source, dirs["int8"], int8=True)
    return dirs


def run_worker(engine: str, directory: Path, threads: int, data: Path) -> dict:
    command = [sys.executable, __file__, "--worker", engine, str(directory), "--threads", str(threads),
               "--data", str(data)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{engine} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine(threads: int) -> str:
    import onnxruntime
    import torch
    import transformers

    return (f"{cpu_name()} ({cpu_flags()}), {os.cpu_count()} logical CPUs, {threads} threads; Python "
            f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"onnxruntime {onnxruntime.__version__}")


def table(size: str, rows: dict[str, dict], peak: float) -> list[str]:
    names = {"pipeline": f"transformers pipeline (batch_size={PIPELINE_BATCH})", "torch": "distilsent torch",
             "onnx": "distilsent ONNX fp32", "int8": "distilsent ONNX int8"}
    reference, base = rows["torch"], rows["pipeline"]["dev"]["texts"] / rows["pipeline"]["dev"]["seconds"]
    lines = [
        "| engine | dev texts/s | × pipeline | dev tokens/s | dev useful GFLOP/s (% peak) | long texts/s "
        "| long tokens/s | long GFLOP/s (% peak) | p50 ms | p99 ms | dev accuracy | agrees with torch "
        "| max abs logit diff vs torch | peak RSS MB |",
        "|---|" + "---:|" * 13,
    ]
    for engine, r in rows.items():
        dev, long = r["dev"], r["long"]
        rate = dev["texts"] / dev["seconds"]
        agree = np.mean(np.array(dev["predictions"]) == np.array(reference["dev"]["predictions"]))
        diff = np.abs(np.array(dev["logits"]) - np.array(reference["dev"]["logits"])).max()
        accuracy = f"{100 * r['accuracy']:.2f}%" if size == "default" else "n/a (random)"
        lines.append(
            f"| {names[engine]} | {rate:.0f} | {rate / base:.2f} | {dev['tokens'] / dev['seconds']:.0f} "
            f"| {dev['gflops']:.0f} ({100 * dev['gflops'] / peak:.0f}%) | {long['texts'] / long['seconds']:.1f} "
            f"| {long['tokens'] / long['seconds']:.0f} | {long['gflops']:.0f} ({100 * long['gflops'] / peak:.0f}%) "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {accuracy} | {100 * agree:.2f}% | {diff:.2g} "
            f"| {r['peak_mb']:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="the 'default' model (default: the embedded one)")
    parser.add_argument("--sizes", default="default,base", help="comma-separated: default, base")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--data", type=Path, default=SST2_DEV)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file ('-' prints only)")
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--compare", nargs="+", metavar="NAME=DIR",
                        help="exported models to compare in one process instead (prints only; see compare())")
    parser.add_argument("--rounds", type=int, default=7, help="--compare: interleaved rounds")
    parser.add_argument("--cpu-time", action="store_true", help="--compare: time CPU seconds, not wall time")
    args = parser.parse_args()
    if args.compare:
        dirs = dict(item.split("=", 1) for item in args.compare)
        compare({name: Path(directory) for name, directory in dirs.items()}, args.threads, args.data, args.rounds,
                args.cpu_time)
        return
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]), args.threads, args.data)))
        return

    from distilsent.model.checkpoint import resolve

    if not args.data.is_file():
        raise SystemExit(f"SST-2 dev not found at {args.data}; pass --data")
    model = resolve(args.model)
    engines = args.engines.split(",")
    peak = matmul_peak(args.threads)
    print(f"fp32 matmul peak ({args.threads} threads, 2048^3, torch): {peak:.0f} GFLOP/s", flush=True)
    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:])
    sections = [
        f"## Inference speed (`{command.strip()}`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine(args.threads)}.",
        f"fp32 matrix-multiply peak measured in the same run: **{peak:.0f} GFLOP/s** (2048³ torch.mm, best of 8).",
        "",
        "dev = SST-2 dev (872 texts); long = "
        f"{LONG_TEXTS} texts of {LONG_RANGE[0]}-{LONG_RANGE[1]} tokens (joined dev sentences); "
        f"p50/p99 = one call with one short sentence ({SHORT!r}), {LATENCY_CALLS} calls. "
        "Useful GFLOP/s count the real tokens only (no padding), from `DistilBertConfig.flops_per_token`. "
        "Throughput is the best of 2 passes; each engine runs in its own process (peak RSS is that process's).",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes.split(","):
            dirs = prepare(size, model, Path(scratch))
            rows = {}
            for engine in engines:
                rows[engine] = run_worker(engine, dirs[engine], args.threads, args.data)
                r = rows[engine]
                print(f"{size:8s} {engine:9s} dev {r['dev']['texts'] / r['dev']['seconds']:7.1f} texts/s "
                      f"({r['dev']['gflops']:5.0f} GFLOP/s)  long {r['long']['texts'] / r['long']['seconds']:6.2f} "
                      f"texts/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                      f"acc {100 * r['accuracy']:.2f}%  RSS {r['peak_mb']:.0f} MB  "
                      f"torch imported: {r['torch_imported']}",
                      flush=True)
            if "pipeline" in rows:
                base = rows["pipeline"]["dev"]["texts"] / rows["pipeline"]["dev"]["seconds"]
                base_long = rows["pipeline"]["long"]["texts"] / rows["pipeline"]["long"]["seconds"]
                for engine, r in rows.items():
                    rate, rate_long = (r[w]["texts"] / r[w]["seconds"] for w in ("dev", "long"))
                    print(f"{size:8s} {engine:9s} x pipeline: dev {rate / base:.2f}, long {rate_long / base_long:.2f}")
            if {"pipeline", "torch"} <= set(rows):
                title = ("the default model" if size == "default" else
                         "DistilBERT-base size (768 dim, 6 layers, 3072 FFN), random weights")
                config = json.loads((dirs["torch"] / "config.json").read_text())
                sections += ["", f"### {title}: {config['dim']} dim, {config['n_layers']} layers, "
                             f"{config['n_heads']} heads, {config['hidden_dim']} FFN", ""] + table(size, rows, peak)
    if str(args.out) != "-":
        write_section("speed", "\n".join(sections), args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
