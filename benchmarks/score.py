"""Bulk scoring: ``distilsent score`` against a plain loop over ``Classifier.__call__``, its memory on a
million rows, and the Ray engine against the local one.

    python benchmarks/score.py                                   # everything, ~10 min on 2 cores
    python benchmarks/score.py --sst2-rows 67349 --imdb-rows 24000 --model ./my-int8   # whole files

1. Throughput, in one process with one Classifier (same backend, same threads) for both sides: the
   reference is ``clf(texts[i:i + 1000])`` over texts already in memory (the offline ceiling, no file I/O);
   ``score`` reads the file, classifies chunk by chunk, writes CSV parts and joins them. Measured on the first
   ``--sst2-rows`` rows of SST-2 train and the first ``--imdb-rows`` IMDb reviews (fixed slices: full passes
   cost ~15 min each on 2 cores), in alternating rounds; the best round of each side is compared.
2. Memory: ``distilsent score`` in a child process on a synthetic ``--rss-rows``-row CSV of short texts with
   a small random model of the real vocabulary (the real model would take hours over a million rows; the
   streaming code is the same). RSS is sampled while it runs; flat means the same at 10% and at 90%.
3. Ray: a local Ray on 2 CPUs; the local engine (2 threads) vs Ray with 1 actor x 2 threads and 2 actors x
   1 thread, on the same SST-2 slice and model.

The model is the embedded one exported to int8 (``distilsent export default DIR --int8``) unless
``--model`` is given. Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import cpu_flags, cpu_name, write_section  # benchmarks/results.py

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
SST2_TRAIN = DATA / "sst2" / "train.tsv"
IMDB_TRAIN = DATA / "imdb" / "train.csv"
CHUNK = 1000


def head_rows(source: Path, target: Path, rows: int, delimiter: str) -> Path:
    """The header and first ``rows`` rows of a CSV/TSV file, rows parsed (IMDb reviews hold newlines)."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(source, encoding="utf-8", newline="") as src, open(target, "w", encoding="utf-8", newline="") as dst:
        reader = csv.reader(src, delimiter=delimiter, quoting=quoting)
        writer = csv.writer(dst, delimiter=delimiter, quoting=quoting, lineterminator="\n",
                            **({"quotechar": None} if delimiter == "\t" else {}))
        for i, row in enumerate(reader):
            if i > rows:
                break
            writer.writerow(row)
    return target


def throughput(clf, path: Path, text_column: str, rounds: int, work: Path) -> dict:
    from distilsent.bulk.local import ScoreSettings, score_stream
    from distilsent.data.examples import read_examples

    texts = [e.text for e in read_examples(path, text_column=text_column)]
    settings = ScoreSettings(text_column=text_column, prefix="pred_", chunk_rows=CHUNK)
    clf(texts[:64])  # warm-up: ONNX Runtime's first calls allocate
    loop, score = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(0, len(texts), CHUNK):
            clf(texts[i:i + CHUNK])
        loop.append(len(texts) / (time.perf_counter() - start))
        start = time.perf_counter()
        score_stream(clf, str(path), str(work / "scored.csv"), settings, progress=False)
        score.append(len(texts) / (time.perf_counter() - start))
    return {"rows": len(texts), "loop": max(loop), "score": max(score), "loop_all": loop, "score_all": score}


def tiny_model(directory: Path) -> Path:
    """A random 2-layer, 64-dim classifier with the embedded model's 30,522-token vocabulary."""
    import torch

    from distilsent.model.checkpoint import default_model_dir, save_model
    from distilsent.model.config import DistilBertConfig
    from distilsent.model.distilbert import DistilBertForSequenceClassification
    from distilsent.model.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(default_model_dir())
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=2, hidden_dim=128)
    torch.manual_seed(0)
    save_model(DistilBertForSequenceClassification(config), tokenizer, directory, card="# random benchmark model\n")
    return directory


def synthetic_csv(path: Path, rows: int) -> Path:
    words = ("good bad great awful film movie plot acting fun boring not very the a was is loved hated "
             "ending story slow fast").split()
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "text", "source"])
        for i in range(rows):
            writer.writerow([i, " ".join(rng.choices(words, k=rng.randint(2, 8))), "synthetic"])
    return path


def rss_run(model: Path, source: Path, target: Path, rows: int) -> dict:
    """Peak RSS of ``distilsent score`` in a child process, and its RSS sampled against progress."""
    partial = target.with_name(target.name + ".partial")
    command = [sys.executable, "-m", "distilsent", "score", str(source), str(target), "--model", str(model),
               "--quiet", "--batch-size", "64"]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    samples = []  # (fraction done, RSS MB)
    # VmHWM is the peak of the child's own address space; getrusage's ru_maxrss would also count this
    # (large) benchmark process, whose pages the child shares between fork and exec.
    peak = 0.0
    while child.poll() is None:
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{child.pid}/status").read_text().splitlines())
            rss, peak = int(status["VmRSS"].split()[0]) / 1024, max(peak, int(status["VmHWM"].split()[0]) / 1024)
            done = len(list(partial.glob("0*"))) * CHUNK / rows if partial.is_dir() else 0.0
            samples.append((done, rss))
        except (FileNotFoundError, KeyError, ValueError, ProcessLookupError):
            pass
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"distilsent score exited with {child.returncode}")

    def at(fraction: float) -> float:
        return next((rss for done, rss in samples if done >= fraction), samples[-1][1])

    return {"rows": rows, "seconds": seconds, "peak_mb": peak, "at10": at(0.1), "at50": at(0.5), "at90": at(0.9)}


def ray_runs(model: str, source: Path, work: Path, clf) -> dict:
    from distilsent.bulk.ray_engine import require_ray

    ray = require_ray(local=True)
    from distilsent.bulk.local import ScoreSettings, score_stream
    from distilsent.bulk.ray_engine import score_on_ray

    settings = ScoreSettings(text_column="sentence", prefix="pred_", chunk_rows=CHUNK)

    def local() -> float:
        start = time.perf_counter()
        summary = score_stream(clf, str(source), str(work / "local.csv"), settings, progress=False)
        return summary["rows"] / (time.perf_counter() - start)

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {"init_seconds": time.perf_counter() - start}
    try:
        before = local()  # the local engine before and after the Ray runs, the better one counts
        for actors, threads in ((1, 2), (2, 1)):
            start = time.perf_counter()
            summary = score_on_ray(str(source), str(work / f"ray{actors}.csv"), settings, model=model,
                                   threads=threads, actors=actors, progress=False)
            out[f"ray_{actors}x{threads}"] = summary["rows"] / (time.perf_counter() - start)
            same = (work / f"ray{actors}.csv").read_bytes() == (work / "local.csv").read_bytes()
            out[f"ray_{actors}x{threads}_same"] = same
        out["local"] = max(before, local())
        out["rows"] = summary["rows"]
    finally:
        ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the embedded model, int8 export)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sst2-rows", type=int, default=10_000)
    parser.add_argument("--imdb-rows", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of loop and score")
    parser.add_argument("--rss-rows", type=int, default=1_000_000)
    parser.add_argument("--ray-rows", type=int, default=10_000)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--ray-only", action="store_true", help="only part 3 (its own section of RESULTS.md)")
    args = parser.parse_args()
    if not SST2_TRAIN.is_file() or not IMDB_TRAIN.is_file():
        raise SystemExit(f"needs {SST2_TRAIN} and {IMDB_TRAIN}")

    from distilsent import Classifier

    cpu = cpu_name()
    vnni = "avx512_vnni" in cpu_flags()
    setting = (f"CPU: {cpu}, {os.cpu_count()} cores{' (AVX-512 VNNI)' if vnni else ''}; model: "
               f"{'embedded model, int8 export' if args.model is None else args.model}; other work may have "
               "shared the CPU.")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            model = str(work / "int8")
            subprocess.run([sys.executable, "-m", "distilsent", "export", "default", model, "--int8", "--quiet"],
                           check=True, stdout=subprocess.DEVNULL)
        clf = Classifier.load(model, threads=args.threads)
        if not args.ray_only:
            local_sections(args, clf, work, setting)
        if not args.skip_ray:
            ray = ray_runs(model, head_rows(SST2_TRAIN, work / "ray.tsv", args.ray_rows, "\t"), work, clf)
            print(f"ray: {ray}", flush=True)
            text = "\n".join([
                "## Bulk scoring on Ray (`benchmarks/score.py`)",
                "",
                setting,
                "",
                f"Local Ray instance on 2 CPUs, SST-2 train first {ray['rows']:,} rows, Ray start-up "
                f"{ray['init_seconds']:.1f} s not counted; each Ray job includes reading and numbering the "
                "file into the object store, starting the actors and shipping the model.",
                "",
                "| engine | rows/s | vs local | output identical to local |",
                "|---|---|---|---|",
                f"| local, 1 process x {args.threads} threads | {ray['local']:.1f} | 1.00 | - |",
                f"| Ray, 1 actor x 2 threads | {ray['ray_1x2']:.1f} | {ray['ray_1x2'] / ray['local']:.2f} | "
                f"{ray['ray_1x2_same']} |",
                f"| Ray, 2 actors x 1 thread | {ray['ray_2x1']:.1f} | {ray['ray_2x1'] / ray['local']:.2f} | "
                f"{ray['ray_2x1_same']} |",
            ])
            write_section("score_ray", text)
            print(text)


def local_sections(args, clf, work: Path, setting: str) -> None:
    sst2 = head_rows(SST2_TRAIN, work / "sst2.tsv", args.sst2_rows, "\t")
    imdb = head_rows(IMDB_TRAIN, work / "imdb.csv", args.imdb_rows, ",")
    results = {
        "sst2": throughput(clf, sst2, "sentence", args.rounds, work),
        "imdb": throughput(clf, imdb, "text", args.rounds, work),
    }
    for name, r in results.items():
        print(f"{name}: {r['rows']} rows  loop {r['loop']:.1f} rows/s  score {r['score']:.1f} rows/s  "
              f"ratio {r['score'] / r['loop']:.3f}  (rounds: loop {[round(x, 1) for x in r['loop_all']]}, "
              f"score {[round(x, 1) for x in r['score_all']]})", flush=True)
    from distilsent import Classifier

    tiny = tiny_model(work / "tiny")
    # Build and cache its ONNX graph first: the one-off build (onnx, graph checks) is not scoring memory.
    Classifier.load(tiny)
    rss = rss_run(tiny, synthetic_csv(work / "synthetic.csv", args.rss_rows), work / "synthetic.scored.csv",
                  args.rss_rows)
    print(f"rss: {rss['rows']} rows in {rss['seconds']:.0f} s; RSS at 10% {rss['at10']:.0f} MB, 50% "
          f"{rss['at50']:.0f} MB, 90% {rss['at90']:.0f} MB; peak (VmHWM) {rss['peak_mb']:.0f} MB", flush=True)
    lines = [
        "## Bulk scoring (`benchmarks/score.py`)",
        "",
        f"{setting} {args.threads} threads; {args.rounds} alternating rounds, the best of each side.",
        "",
        "| data (first rows) | loop over `clf(chunk of 1,000)` rows/s | `score` file to file rows/s | score / loop |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} ({r['rows']:,}) | {r['loop']:.1f} | {r['score']:.1f} | {r['score'] / r['loop']:.3f} |")
    lines += [
        "",
        f"Memory: `distilsent score` on a {rss['rows']:,}-row synthetic CSV (random 2-layer model, real vocabulary): "
        f"RSS {rss['at10']:.0f} MB at 10%, {rss['at50']:.0f} MB at 50%, {rss['at90']:.0f} MB at 90%; "
        f"peak (VmHWM) {rss['peak_mb']:.0f} MB; {rss['seconds']:.0f} s.",
    ]
    write_section("score", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
