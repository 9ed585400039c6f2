"""Trainer speed: distilsent's training loop against a plain transformers loop, same model, same batch size.

    python benchmarks/train_speed.py [--examples 3200] [--threads 2]
    python benchmarks/train_speed.py --precision [--examples 3200]   # bf16 autocast against float32

Both start from all-MiniLM-L6-v2 converted to DistilBERT layout and train on the same SST-2 examples
for one pass with batch 32 and max length 128. The reference is what a plain fine-tune does: random
batches padded to their longest text, torch's default AdamW, transformers' DistilBERT. Prints
examples/s of each and the ratio, and writes the ``train`` section of benchmarks/RESULTS.md; run it
on an idle machine.

``--precision`` runs distilsent's loop twice on the same short run, float32 and bf16 autocast (``train
--precision``), as the default model's build trains: from the embedded default model, half SST-2 sentences
and half IMDb reviews cut to their first 32 and last 94 tokens, batch 32, max length 128, one pass, the
same seed. Prints examples/s of each, their ratio, and the accuracy each run reaches on SST-2 dev (IMDb
reviews are no test here: the default model was trained on them); writes the ``train_precision`` section of
RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from results import cpu_name, write_section  # benchmarks/results.py

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"


def reference_loop(model_dir: Path, examples, batch_size: int, max_length: int, seed: int) -> float:
    import numpy as np
    import torch
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).train()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    order = np.random.default_rng(seed).permutation(len(examples))
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        batch = [examples[j] for j in order[i : i + batch_size]]
        encoded = tokenizer([e.text for e in batch], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
        labels = torch.tensor([e.label for e in batch])
        loss = model(**encoded, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return len(examples) / (time.perf_counter() - start)


def compare_precisions(args) -> None:
    from distilsent import Classifier
    from distilsent.data.examples import read_examples
    from distilsent.model.checkpoint import load_model
    from distilsent.training.evaluate import evaluate
    from distilsent.training.train import TrainConfig, cpu_flags, train

    shared = ROOT.parent / "shared" / "data"
    half = args.examples // 2
    imdb = read_examples(shared / "imdb" / "train.csv")
    examples = read_examples(args.data)[:half] + imdb[:half]
    dev = read_examples(shared / "sst2" / "dev.tsv")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            config = TrainConfig(learning_rate=3e-5, batch_size=32, warmup_steps=10, epochs=1, max_length=128,
                                 long_text="head_tail", head=32, eval_every=0, save_every=10**9, seed=42,
                                 threads=args.threads, precision=precision)
            model, tokenizer = load_model(ROOT / "src" / "distilsent" / "default_model")
            summary = train(model.float(), tokenizer, examples, None, config, Path(tmp) / precision, progress=False)
            clf = Classifier.load(Path(tmp) / precision / "best", long_text="window", window=128, aggregate="max")
            rows[precision] = {"examples_per_second": round(summary["examples_per_second"], 1),
                               "sst2_dev": round(evaluate(clf, dev)["accuracy"], 4)}
            print(precision, json.dumps(rows[precision]), flush=True)
    ratio = rows["bf16"]["examples_per_second"] / rows["fp32"]["examples_per_second"]
    flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")))) or "no AVX-512"
    print(json.dumps({"ratio_bf16_over_fp32": round(ratio, 2), "flags": flags}))
    write_section("train_precision", "\n".join([
        "## Training precision (`python benchmarks/train_speed.py --precision`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu_name()} ({flags}), "
        f"{args.threads} threads: the default model trained one pass over {len(examples):,} examples (half SST-2 "
        "train, half IMDb reviews cut to 32 + 94 tokens), batch 32, max length 128, seed 42; accuracy read as "
        "128-token windows, the surest deciding.",
        "",
        "| precision | examples/s | SST-2 dev |",
        "|---|---:|---:|",
        *[f"| {p} | {r['examples_per_second']:.1f} | {r['sst2_dev']:.4f} |" for p, r in rows.items()],
        f"| bf16 / fp32 | {ratio:.2f}x | |",
    ]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=3200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--precision", action="store_true", help="compare bf16 autocast with float32 instead")
    args = parser.parse_args()
    if args.precision:
        compare_precisions(args)
        return

    import torch

    from distilsent.data.examples import read_examples
    from distilsent.model.checkpoint import save_model
    from distilsent.model.convert import convert_bert, minilm_dir
    from distilsent.training.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    examples = read_examples(args.data)[: args.examples]
    config = TrainConfig(learning_rate=5e-5, batch_size=32, warmup_steps=10, epochs=1, max_length=128,
                         eval_every=0, save_every=10**9, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = convert_bert(minilm_dir())
        save_model(model, tokenizer, Path(tmp) / "base")
        reference = reference_loop(Path(tmp) / "base", examples, config.batch_size, config.max_length, config.seed)
        summary = train(model, tokenizer, examples, None, config, Path(tmp) / "run", progress=False)
    ours = summary["examples_per_second"]
    result = {"examples": len(examples), "batch_size": 32, "threads": args.threads,
              "transformers_loop_examples_per_second": round(reference, 1),
              "distilsent_examples_per_second": round(ours, 1), "ratio": round(ours / reference, 2)}
    print(json.dumps(result, indent=2))
    write_section("train", "\n".join([
        "## Trainer speed (`python benchmarks/train_speed.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, {args.threads} threads: all-MiniLM-L6-v2 (converted), {len(examples)} SST-2 "
        "train examples, one pass, batch 32, max length 128.",
        "",
        "| loop | examples/s |",
        "|---|---:|",
        f"| plain transformers loop (random batches padded to their longest, default AdamW) | {reference:.1f} |",
        f"| distilsent `train` (length-grouped batches, fused AdamW) | {ours:.1f} |",
        f"| ratio | {ours / reference:.2f}x |",
    ]))


if __name__ == "__main__":
    main()
