"""Does distillation help, and does unlabelled text help it? A small, CPU-sized comparison.

    python benchmarks/distill_small.py [--labelled 1000] [--unlabelled 4000] [--epochs 2] [--work /tmp/distill-small]

Teacher: the shipped default model (SST-2 fine-tuned). Student: all-MiniLM-L6-v2, converted (what `train`
starts from). From SST-2 train, a validation split of 1,000 sentences is held out (seed 20261124), then
``--labelled`` sentences keep their labels and the next ``--unlabelled`` lose them. Three students, one
recipe (lr 5e-5, batch 32, warm-up 10%, max length 128, seed 42):

    plain            train on the labelled sentences (cross-entropy), ``--epochs`` epochs
    distilled        distill on the labelled sentences (T 2, soft 0.5, hard 0.5), as many steps
    plain, long      as plain, for as many steps as "+ unlabelled" takes (more epochs on the same data)
    distilled, long  as distilled, for as many steps as "+ unlabelled"
    + unlabelled     distill on the labelled + unlabelled sentences (the unlabelled ones: teacher only)

so the unlabelled text is compared at equal compute ("long"), not only against shorter runs.
Prints each student's accuracy on the held-out split and on SST-2 dev (reported, never used to choose),
the teacher's, and the gain of each over plain of the same number of steps, in points. The teacher was
trained on all of SST-2 train, held-out split included, so its own held-out figure is optimistic; the
students never see those sentences.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT.parent / "shared" / "data" / "sst2"
SPLIT_SEED = 20261124


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=1000)
    parser.add_argument("--unlabelled", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/distill-small", help="run directories and the logits cache")
    args = parser.parse_args()

    from distilsent.data.examples import Example, read_examples, split_examples
    from distilsent.model.checkpoint import default_model_dir
    from distilsent.runtime.classifier import Classifier
    from distilsent.training.distill import UNLABELLED, DistillConfig, distill
    from distilsent.training.evaluate import evaluate
    from distilsent.training.train import TrainConfig, initial_model, train

    rest, held_out = split_examples(read_examples(SST2 / "train.tsv"), 1000 / 67349, SPLIT_SEED)
    labelled = rest[: args.labelled]
    unlabelled = [Example(e.text, UNLABELLED) for e in rest[args.labelled : args.labelled + args.unlabelled]]
    dev = read_examples(SST2 / "dev.tsv")
    work = Path(args.work)
    base = TrainConfig(learning_rate=5e-5, batch_size=32, warmup_steps=0, epochs=args.epochs, max_length=128,
                       eval_every=0, seed=42, threads=args.threads)

    def config_for(steps: int) -> TrainConfig:
        # Enough epochs for ``steps``; the run stops there, warmed up over its first 10%.
        epochs = -(-steps * base.batch_size // len(labelled))
        return dataclasses.replace(base, epochs=epochs, max_steps=steps, warmup_steps=max(1, steps // 10))

    def accuracy(directory) -> tuple[float, float]:
        clf = Classifier.load(directory, threads=args.threads)
        return evaluate(clf, held_out)["accuracy"], evaluate(clf, dev)["accuracy"]

    short = -(-len(labelled) // base.batch_size) * args.epochs
    long = -(-(len(labelled) + len(unlabelled)) // base.batch_size) * args.epochs
    options = DistillConfig(temperature=2.0, alpha_soft=0.5, alpha_hard=0.5)
    runs = [  # (name, distilled?, examples, steps)
        ("plain", False, labelled, short),
        ("distilled", True, labelled, short),
        ("plain, long", False, labelled, long),
        ("distilled, long", True, labelled, long),
        ("+ unlabelled", True, labelled + unlabelled, long),
    ]
    results, seconds = {"teacher": accuracy(default_model_dir())}, {}
    for name, distilled, examples, steps in runs:
        out = work / name.replace("+ ", "plus-").replace(", ", "-")
        start = time.perf_counter()
        if distilled:
            distill("default", examples, out, config=config_for(steps), options=options,
                    logits_cache=work / "teacher-logits", progress=True)
        else:
            model, tokenizer = initial_model(None, ("NEGATIVE", "POSITIVE"), base.seed)
            train(model, tokenizer, examples, None, config_for(steps), out, progress=True)
        seconds[name] = time.perf_counter() - start
        results[name] = accuracy(out / "best")

    print(f"{'model':<16} {'steps':>6} {'held-out':>9} {'SST-2 dev':>10} {'vs plain of its steps':>22} {'seconds':>8}")
    steps_of = {name: steps for name, _, _, steps in runs}
    for name, (held, on_dev) in results.items():
        reference = results["plain" if steps_of.get(name) == short else "plain, long"]
        gain = "" if name == "teacher" or name.startswith("plain") else \
            f"{100 * (held - reference[0]):+.2f} / {100 * (on_dev - reference[1]):+.2f}"
        print(f"{name:<16} {steps_of.get(name, 0):>6} {held:>9.4f} {on_dev:>10.4f} {gain:>22} "
              f"{seconds.get(name, 0):>8.0f}")
    print(json.dumps({"labelled": len(labelled), "unlabelled": len(unlabelled), "epochs": args.epochs,
                      "results": results, "seconds": seconds}))


if __name__ == "__main__":
    main()
