"""The IMDb recipe of the original fine-tune, applied to the default model, measured on our IMDb validation split.

    python benchmarks/imdb_preset.py [--work ../runs/imdb-preset] [--max-steps N]   # resumable: run it again

The `imdb` preset (`distilsent train --preset imdb`: lr 2e-5, batch 16, warm-up 100, 3 epochs, max length
512, seed 42) starts from the embedded default model and trains on `imdb/train.csv` minus the validation
split that every long-review figure uses (`split_examples(..., 0.1, seed=9)`, 2,396 reviews). No checkpoint
is chosen: the last weights are measured, on the validation split, with truncation (the preset's reading)
and with head_tail. On 2 CPU cores a step of 16 x 512 tokens takes about 5 s: the 4,044 steps are hours,
so the run keeps its resume file in --work and goes on where it stopped.

Reference figures it is set against: the original model card's claimed 98.04% (its card does not say on
which reviews it was measured) and the DistilBERT paper's 92.82% (IMDb test, DistilBERT-base, 66M parameters).
Writes the `imdb_preset` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from results import write_section

ROOT = Path(__file__).resolve().parent.parent
IMDB = ROOT.parent / "shared" / "data" / "imdb" / "train.csv"
SPLIT = (0.1, 9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "imdb-preset")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop the schedule after N steps (a shorter trial; the figure then says so)")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="a trial of the script: N training and N validation reviews (nothing is written "
                             "to RESULTS.md)")
    args = parser.parse_args()

    from distilsent.data.examples import read_examples, split_examples
    from distilsent.runtime.classifier import Classifier
    from distilsent.training.evaluate import evaluate
    from distilsent.training.train import PRESETS, initial_model, train

    config = dataclasses.replace(PRESETS["imdb"], eval_every=0, save_every=50, threads=2, max_steps=args.max_steps)
    rest, validation = split_examples(read_examples(IMDB), *SPLIT)
    if args.sample:
        rest, validation = rest[: args.sample], validation[: args.sample]
    model, tokenizer = initial_model("default", ("NEGATIVE", "POSITIVE"), config.seed)
    started = time.perf_counter()
    summary = train(model, tokenizer, rest, None, config, args.work)
    figures = {}
    for strategy in ("truncate", "head_tail"):
        clf = Classifier.load(args.work / "best", long_text=strategy, threads=2)
        figures[strategy] = evaluate(clf, validation)["accuracy"]
    report = {"steps": summary["steps"], "train_examples": len(rest), "validation": len(validation),
              "accuracy": figures, "seconds_this_run": time.perf_counter() - started}
    print(json.dumps(report))
    if args.sample:
        return
    write_section("imdb_preset", (
        "## The IMDb preset on the default model (`python benchmarks/imdb_preset.py`)\n\n"
        f"`--preset imdb` (lr 2e-5, batch 16, warm-up 100, 3 epochs, max length 512, seed 42), {summary['steps']} "
        f"steps on {len(rest):,} reviews of `imdb/train.csv` (the rest after the validation split, 10% with seed 9), "
        "starting from the embedded default model; last weights, no selection.\n\n"
        "| validation split, 2,396 reviews | accuracy |\n|---|---|\n"
        f"| read with truncation (first 512 tokens) | {figures['truncate']:.4f} |\n"
        f"| read with head_tail (first 128 + last 382) | {figures['head_tail']:.4f} |\n"
        "| original model card's claim (data not stated) | 0.9804 |\n"
        "| DistilBERT paper, DistilBERT-base on IMDb test | 0.9282 |\n"
    ))


if __name__ == "__main__":
    main()
