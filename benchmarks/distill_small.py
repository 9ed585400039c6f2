"""Does distillation help, and does unlabelled text help it? A small, CPU-sized comparison.

    python benchmarks/distill_small.py [--labelled 1000] [--unlabelled 4000] [--epochs 2] [--work /tmp/distill-small]

Teacher: the shipped default model (SST-2 fine-tuned). Student: all-MiniLM-L6-v2, converted (what `train`
starts from). From SST-2 train, a validation split of 1,000 sentences is held out (seed 20261124), then
``--labelled`` sentences keep their labels and the next ``--unlabelled`` lose them. Three students, one
recipe (lr 5e-5, batch 32, warm-up 10%, max length 128, seed 42):

    plain            train on the labelled sentences (cross-entropy)
    distilled        distill on the labelled sentences (T 2, soft 0.5, hard 0.5)
    + unlabelled     distill on the labelled + unlabelled sentences (the unlabelled ones: teacher only)

Prints each student's accuracy on the held-out split and on SST-2 dev (reported, never used to choose),
the teacher's, and the gain of each over plain in points. The teacher was trained on all of SST-2 train,
held-out split included, so its own held-out figure is optimistic; the students never see those sentences.
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

    from distilsent.checkpoint import default_model_dir
    from distilsent.classifier import Classifier
    from distilsent.data import Example, read_examples, split_examples
    from distilsent.distill import UNLABELLED, DistillConfig, distill
    from distilsent.evaluate import evaluate
    from distilsent.train import TrainConfig, initial_model, train

    rest, held_out = split_examples(read_examples(SST2 / "train.tsv"), 1000 / 67349, SPLIT_SEED)
    labelled = rest[: args.labelled]
    unlabelled = [Example(e.text, UNLABELLED) for e in rest[args.labelled : args.labelled + args.unlabelled]]
    dev = read_examples(SST2 / "dev.tsv")
    work = Path(args.work)
    base = TrainConfig(learning_rate=5e-5, batch_size=32, warmup_steps=0, epochs=args.epochs, max_length=128,
                       eval_every=0, seed=42, threads=args.threads)

    def config_for(n: int) -> TrainConfig:
        steps = -(-n // base.batch_size) * base.epochs
        return dataclasses.replace(base, warmup_steps=max(1, steps // 10))

    def accuracy(directory) -> tuple[float, float]:
        clf = Classifier.load(directory, threads=args.threads)
        return evaluate(clf, held_out)["accuracy"], evaluate(clf, dev)["accuracy"]

    results = {"teacher": accuracy(default_model_dir())}
    seconds = {}
    start = time.perf_counter()
    model, tokenizer = initial_model(None, ("NEGATIVE", "POSITIVE"), base.seed)
    train(model, tokenizer, labelled, None, config_for(len(labelled)), work / "plain", progress=True)
    seconds["plain"] = time.perf_counter() - start
    results["plain"] = accuracy(work / "plain" / "best")
    options = DistillConfig(temperature=2.0, alpha_soft=0.5, alpha_hard=0.5)
    for name, examples in (("distilled", labelled), ("+ unlabelled", labelled + unlabelled)):
        start = time.perf_counter()
        out = work / name.replace("+ ", "plus-")
        distill("default", examples, out, config=config_for(len(examples)), options=options,
                logits_cache=work / "teacher-logits", progress=True)
        seconds[name] = time.perf_counter() - start
        results[name] = accuracy(out / "best")

    print(f"{'model':<14} {'held-out':>9} {'SST-2 dev':>10} {'vs plain, points':>18} {'seconds':>8}")
    for name, (held, on_dev) in results.items():
        gain = "" if name in ("teacher", "plain") else \
            f"{100 * (held - results['plain'][0]):+.2f} / {100 * (on_dev - results['plain'][1]):+.2f}"
        print(f"{name:<14} {held:>9.4f} {on_dev:>10.4f} {gain:>18} {seconds.get(name, 0):>8.0f}")
    print(json.dumps({"labelled": len(labelled), "unlabelled": len(unlabelled), "epochs": args.epochs,
                      "results": results, "seconds": seconds}))


if __name__ == "__main__":
    main()
