"""Try variants of the default build's train stage side by side: on one H200 GPU, all eight at once took 3.5 to
6.5 minutes each (an hour or more each on the 2-core CPU).

    python scripts/sweep_default_recipes.py --work DIR [--only NAME ...] [--jobs 4] [--device cuda]

Every candidate starts from the shipped default model, trains on the build's own splits (build_default_model.py,
stage split) and keeps its best checkpoint on the pooled selection splits, exactly as the build's train stage
does; only the learning rate, the seed, the sampling weights, the number of steps or the token budget change.
``DIR/sweep.json`` gets, per candidate, the selection accuracy of each source at the best checkpoint, their mean
(what a recipe is chosen on), and SST-2 dev (measured, never chosen on). Candidates marked ``budget`` train no
more steps of no longer sequences than the shipped recipe, so whichever wins can be built on the 2-core machine
within the 150 minutes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_default_model as build_script  # noqa: E402  (the build's splits, recipe and weights)

SHIPPED = build_script.WEIGHTS
STEPS = 3210  # the shipped recipe's steps (one pass over its mixture)
SST2_HEAVY = {**SHIPPED, "sst2": 2.0}

# name: (weights, TrainConfig changes, within the CPU budget). Chosen before any was run.
CANDIDATES = {
    "again": (SHIPPED, {"seed": 44, "max_steps": STEPS}, True),
    "again-lr1e-5": (SHIPPED, {"seed": 44, "learning_rate": 1e-5, "max_steps": STEPS}, True),
    "sst2x2": (SST2_HEAVY, {"seed": 44, "max_steps": STEPS}, True),
    "sst2x2-lr1e-5": (SST2_HEAVY, {"seed": 44, "learning_rate": 1e-5, "max_steps": STEPS}, True),
    "sst2x4-lr1e-5": ({**SHIPPED, "sst2": 4.0}, {"seed": 44, "learning_rate": 1e-5, "max_steps": STEPS}, True),
    "even-lr1e-5": ({name: 1.0 for name in SHIPPED}, {"seed": 44, "learning_rate": 1e-5, "max_steps": STEPS}, True),
    # Beyond the CPU budget: what three passes, or reviews read as 256 tokens, would give.
    "again-3passes": (SHIPPED, {"seed": 44, "epochs": 3, "eval_every": STEPS}, False),
    "tokens256": (SHIPPED, {"seed": 44, "max_length": 256, "head": 64}, False),
}


SHIPPED_MODEL = build_script.ROOT / "src" / "distilsent" / "default_model"


def sst2_dev(directory: Path, data: Path, sample: int | None) -> float:
    """SST-2 dev accuracy (measured, never chosen on); its sentences fit 128 tokens, so no reading applies."""
    from distilsent import Classifier
    from distilsent.data.examples import read_examples
    from distilsent.training.evaluate import evaluate

    dev = read_examples(data / "sst2" / "dev.tsv")[: sample or None]
    return evaluate(Classifier.load(directory, long_text="truncate"), dev)["accuracy"]


def run_one(name: str, work: Path, data: Path, device: str, sample: int | None, threads: int) -> dict:
    from distilsent.model.checkpoint import load_model
    from distilsent.training.train import train

    weights, changes, budget = CANDIDATES[name]
    config = replace(build_script.recipe(), device=device, threads=threads, **changes)
    parts = build_script.Build(work, data, sample).splits()
    model, tokenizer = load_model(SHIPPED_MODEL)
    started = time.perf_counter()
    summary = train(model.float(), tokenizer, parts["train"], parts["select"], config, work / name, weights=weights,
                    progress=False)
    seconds = time.perf_counter() - started
    best = summary["best"]
    return {"budget": budget, "weights": weights, "changes": changes, "steps": summary["steps"],
            "seconds": seconds, "best": {k: best[k] for k in ("step", "weights", "accuracy")},
            "select": best["per_source"], "select_mean": sum(best["per_source"].values()) / len(best["per_source"]),
            "sst2_dev": sst2_dev(work / name / "best", data, sample)}


def baseline(work: Path, data: Path, sample: int | None) -> dict:
    """The shipped model read as the train stage reads (the recipe's head_tail) on the same splits."""
    from distilsent import Classifier
    from distilsent.training.evaluate import evaluate

    shipped = build_script.recipe()
    parts = build_script.Build(work, data, sample).splits()
    clf = Classifier.load(SHIPPED_MODEL, long_text=shipped.long_text, max_length=shipped.max_length,
                          head=shipped.head)
    select = {k: m["accuracy"] for k, m in evaluate(clf, parts["select"])["per_source"].items()}
    return {"select": select, "select_mean": sum(select.values()) / len(select),
            "sst2_dev": sst2_dev(SHIPPED_MODEL, data, sample)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="one run folder per candidate and sweep.json")
    parser.add_argument("--data", type=Path, default=build_script.DATA)
    parser.add_argument("--only", nargs="+", choices=tuple(CANDIDATES), default=tuple(CANDIDATES))
    parser.add_argument("--jobs", type=int, default=4, help="candidates trained at once (default: %(default)s)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sample", type=int, default=None, metavar="N", help="a trial on N texts of each split")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    results = {}
    # spawn, not fork: each worker starts its own CUDA context
    with ProcessPoolExecutor(args.jobs + 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(baseline, args.work, args.data, args.sample): "shipped"}
        futures.update({pool.submit(run_one, name, args.work, args.data, args.device, args.sample, threads): name
                        for name in args.only})
        for future in as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except Exception as e:  # one failed candidate leaves the others' results
                results[futures[future]] = {"error": repr(e)}
            print(futures[future], json.dumps(results[futures[future]]), flush=True)
            (args.work / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    budget = [name for name in args.only if CANDIDATES[name][2] and "error" not in results[name]]
    if budget and "error" not in results["shipped"]:
        best = max(budget, key=lambda name: results[name]["select_mean"])
        print(f"best within the budget on the selection splits: {best} (mean {results[best]['select_mean']:.4f} "
              f"against the shipped model's {results['shipped']['select_mean']:.4f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
