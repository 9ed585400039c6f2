"""Build the embedded default model: all-MiniLM-L6-v2 converted to DistilBERT layout, fine-tuned on SST-2.

    pip install -e '.[torch,build]'
    python scripts/build_default_model.py            # resumes if interrupted; writes src/distilsent/default_model

Intermediate checkpoints live in runs/default (outside the repository); the best dev model is stored in
float16 (half the size; loading casts back to float32) with its model card.
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
    # (EMA) smooths the dev accuracy that otherwise swings by a point between evaluations.
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

    from distilsent.checkpoint import load_model, save_model
    from distilsent.convert import convert_bert, minilm_dir
    from distilsent.data import read_examples

    started = time.perf_counter()
    config = recipe()
    train_path, dev_path = args.data / "train.tsv", args.data / "dev.tsv"
    train_examples, dev_examples = read_examples(train_path), read_examples(dev_path)
    model, tokenizer = convert_bert(minilm_dir(), seed=config.seed)

    from distilsent.train import train

    summary = train(model, tokenizer, train_examples, dev_examples, config, args.run_dir)
    best, tokenizer = load_model(args.run_dir / "best")

    from distilsent.modelcard import default_model_card

    card = default_model_card(best.config, config, summary, [train_path, dev_path], dev_path)
    save_model(best, tokenizer, args.out, card=card, dtype=torch.float16)
    (args.run_dir / "build.json").write_text(json.dumps({
        "seconds_this_run": time.perf_counter() - started, "best": summary["best"],
    }, indent=2) + "\n")
    print(json.dumps(summary["best"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
