"""Build the embedded default model: all-MiniLM-L6-v2 converted to DistilBERT layout, fine-tuned on SST-2.

    pip install torch==2.13.0 -e '.[train,build]'
    python scripts/build_default_model.py            # resumes if interrupted; writes src/distilsent/default_model

The run is evaluated on SST-2 dev every 250 steps (raw weights and their moving average) and keeps its
most accurate checkpoint. Intermediate checkpoints live in runs/default (outside the repository); the
shipped weights are float16 (half the size; loading casts back to float32), with their model card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "sst2"


def recipe():
    from distilsent.train import TrainConfig

    # A 384-dim student wants a larger step than the 1e-5 of the 768-dim recipe; the weight average
    # (EMA) is evaluated beside the raw weights because single evaluations swing by a point.
    return TrainConfig(
        learning_rate=5e-5, batch_size=32, warmup_steps=600, epochs=3, max_length=128,
        eval_every=250, save_every=250, ema_decay=0.999, seed=42, threads=2,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--out", type=Path, default=ROOT / "src" / "distilsent" / "default_model")
    args = parser.parse_args()

    import torch

    from distilsent.checkpoint import load_config, load_model, save_model
    from distilsent.classifier import Classifier
    from distilsent.convert import convert_bert, minilm_dir
    from distilsent.data import read_examples
    from distilsent.evaluate import evaluate, format_table
    from distilsent.modelcard import default_model_card
    from distilsent.train import train

    started = time.perf_counter()
    config = recipe()
    train_path, dev_path = args.data / "train.tsv", args.data / "dev.tsv"
    train_examples, dev_examples = read_examples(train_path), read_examples(dev_path)
    model, tokenizer = convert_bert(minilm_dir(), seed=config.seed)
    summary = train(model, tokenizer, train_examples, dev_examples, config, args.run_dir)

    # Save in float16 first, then measure what ships: the float16 weights read back as float32.
    best, tokenizer = load_model(args.run_dir / "best")
    save_model(best, tokenizer, args.out, dtype=torch.float16)
    metrics = evaluate(Classifier.load(args.out, backend="torch"), dev_examples)
    selected = summary["best"]
    selection = f"Shipped: step {selected['step']} of {summary['steps']}, {selected['weights']} weights."
    card = default_model_card(load_config(args.out), config, metrics, selection, [train_path, dev_path], dev_path)
    (args.out / "README.md").write_text(card, encoding="utf-8")
    build = {"seconds_this_run": time.perf_counter() - started, "selected": selected, "dev": metrics}
    (args.run_dir / "build.json").write_text(json.dumps(build, indent=2) + "\n")
    print(format_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
