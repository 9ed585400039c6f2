"""The adaptation ladder, measured: default model as is -> few-shot heads -> LoRA -> full fine-tuning.

    python benchmarks/transfer.py features   # embed once; default model, few-shot heads, embedding throughput
    python benchmarks/transfer.py finetune   # LoRA and full fine-tuning on 1,000 examples (one child process each)
    python benchmarks/transfer.py report     # benchmarks/RESULTS.md section and benchmarks/transfer_fewshot.png

Every stage reads and updates benchmarks/transfer.json, so the stages can run apart (each under
``flock /work/coord/heavy.lock`` on the shared machine).

Data and splits (fixed, seed 0; nothing is selected on a test split):

- ``../shared/data/amazon_domains/reviews.csv``, per domain: each label's rows shuffled with
  ``numpy.random.default_rng(0)``; the first 500 of each label are the training pool (1,000), the next 250
  of each label the test set (500). The remaining 500 rows per domain are not used (a time reduction).
- ``../shared/data/yelp_stars/reviews.csv``: all rows shuffled with ``default_rng(0)``; the first 1,000 are
  the training pool, the last 1,000 the held-out test set. 3 classes: 1-2 stars negative, 3 neutral,
  4-5 positive; 5 classes: the stars.

Few-shot heads: k examples per class drawn from the pool (5 draws, seeds 0-4), the library's fit
(``distilsent.training.fewshot.fit_head``: L2 logistic regression, C cross-validated on the k examples), on the
penultimate features of the default model, each text embedded once and reused by every draw; also a head
on the whole pool. Fine-tuning: ``distilsent.training.train`` from the default model on the whole pool, max length
128, batch 16, 1 epoch, warm-up 6 steps, no dev evaluation; full fine-tuning at lr 5e-5, LoRA rank 8,
alpha 16 on all six projections (plus the head) at lr 5e-4. Every model is scored with the ONNX backend
at max length 128. Peak memory is the training process's maximum resident set size (one fresh process
per run, so the runs do not share it).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
AMAZON = DATA / "amazon_domains" / "reviews.csv"
YELP = DATA / "yelp_stars" / "reviews.csv"
RESULTS_JSON = Path(__file__).resolve().parent / "transfer.json"
PLOT = Path(__file__).resolve().parent / "transfer_fewshot.png"
FEATURES = Path(tempfile.gettempdir()) / "distilsent-transfer-features.npz"
MAX_LENGTH = 128
KS = (5, 10, 25, 50)
DRAWS = 5
FINETUNE = {
    "full": dict(learning_rate=5e-5),
    "lora": dict(learning_rate=5e-4, lora_rank=8, lora_alpha=16.0),
}
TRAIN = dict(batch_size=16, warmup_steps=6, epochs=1, max_length=MAX_LENGTH, eval_every=0, save_every=10_000, seed=0)
YELP_TASKS = {
    "yelp-3": (("negative", "neutral", "positive"), {1: 0, 2: 0, 3: 1, 4: 2, 5: 2}),
    "yelp-5": (("1 star", "2 stars", "3 stars", "4 stars", "5 stars"), {s: s - 1 for s in range(1, 6)}),
}


def tasks() -> dict[str, dict]:
    """name -> {labels, train_texts, train_labels, test_texts, test_labels}."""
    out = {}
    rows = list(csv.DictReader(AMAZON.open(encoding="utf-8")))
    for domain in sorted({r["domain"] for r in rows}):
        train, test = [], []
        for label in (0, 1):
            mine = [r for r in rows if r["domain"] == domain and int(r["label"]) == label]
            order = np.random.default_rng(0).permutation(len(mine))
            train += [(mine[i]["text"], label) for i in order[:500]]
            test += [(mine[i]["text"], label) for i in order[500:750]]
        out[f"amazon-{domain}"] = dict(labels=("NEGATIVE", "POSITIVE"), train=train, test=test)
    rows = list(csv.DictReader(YELP.open(encoding="utf-8")))
    order = np.random.default_rng(0).permutation(len(rows))
    for name, (labels, mapping) in YELP_TASKS.items():
        pick = lambda idx, mapping=mapping: [(rows[i]["text"], mapping[int(rows[i]["stars"])]) for i in idx]  # noqa: E731
        out[name] = dict(labels=labels, train=pick(order[:1000]), test=pick(order[-1000:]))
    return out


def load_results() -> dict:
    return json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}


def save_results(results: dict) -> None:
    RESULTS_JSON.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def scores(labels: np.ndarray, logits: np.ndarray, names) -> dict:
    from distilsent.runtime.classifier import softmax
    from distilsent.training.evaluate import metrics

    m = metrics(labels, softmax(logits.astype(np.float64)), names)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def draw(labels: np.ndarray, k: int, n_labels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False) for c in range(n_labels)])


def stage_features(results: dict) -> None:
    from distilsent import Classifier
    from distilsent.model.checkpoint import default_model_dir, load_config
    from distilsent.training.fewshot import base_tensors, fit_head, penultimate_features

    clf = Classifier.load(None, max_length=MAX_LENGTH)
    tensors = base_tensors(default_model_dir(), load_config(default_model_dir()))
    head_w, head_b = tensors["classifier.weight"].astype(np.float32), tensors["classifier.bias"].astype(np.float32)
    all_tasks = tasks()
    cache = dict(np.load(FEATURES)) if FEATURES.is_file() else {}
    started = time.perf_counter()
    for name, task in all_tasks.items():
        for part in ("train", "test"):
            key = f"{name.replace('yelp-5', 'yelp-3')}/{part}"  # both Yelp tasks share the texts
            if key not in cache:
                cache[key] = penultimate_features(clf, tensors, [t for t, _ in task[part]])
                np.savez(FEATURES, **cache)
    results["embedding_seconds"] = time.perf_counter() - started
    fewshot = results.setdefault("fewshot", {})
    default = results.setdefault("default", {})
    for name, task in all_tasks.items():
        key = name.replace("yelp-5", "yelp-3")
        x_train, x_test = cache[f"{key}/train"], cache[f"{key}/test"]
        y_train = np.array([label for _, label in task["train"]])
        y_test = np.array([label for _, label in task["test"]])
        names, n = task["labels"], len(task["labels"])
        if n == 2:
            default[name] = scores(y_test, x_test @ head_w.T + head_b, names)
        rows = {}
        for k in KS:
            runs = []
            for seed in range(DRAWS):
                pick = draw(y_train, k, n, seed)
                head = fit_head(x_train[pick], y_train[pick], n, seed=seed)
                runs.append(scores(y_test, head.logits(x_test), names))
            rows[str(k)] = {m: [r[m] for r in runs] for m in ("accuracy", "macro_f1")}
        head = fit_head(x_train, y_train, n)
        rows["all"] = scores(y_test, head.logits(x_test), names)
        rows["all"]["examples"] = int(len(y_train))
        fewshot[name] = rows
        print(name, "default", default.get(name), f"few-shot k={KS[-1]}", np.mean(rows[str(KS[-1])]["accuracy"]),
              "all", rows["all"], flush=True)
    results["throughput"] = throughput(clf, [t for t, _ in all_tasks["yelp-3"]["test"][:500]])
    print("throughput", results["throughput"], flush=True)


def throughput(clf, texts: list[str]) -> dict:
    """texts/s of classification and of embedding the same texts (ONNX, max length 128), after a warm-up."""
    clf.logits(texts[:32])
    clf.embed(texts[:32])
    out = {"texts": len(texts)}
    for name, call in (("classify", lambda: clf.logits(texts)), ("embed_cls", lambda: clf.embed(texts)),
                       ("embed_mean", lambda: clf.embed(texts, pooling="mean"))):
        start = time.perf_counter()
        call()
        out[name] = len(texts) / (time.perf_counter() - start)
    return out


def _finetune_child(task: dict, method: str, out_dir: str) -> dict:
    import distilsent.model.lora
    from distilsent.data.examples import Example
    from distilsent.model.checkpoint import default_model_dir
    from distilsent.training.train import TrainConfig, initial_model, train

    # The peak of the training steps alone: read just before train() saves the final model.
    steps_peak_kb = []
    merged_copy = distilsent.model.lora.merged_copy

    def measured_merged_copy(model):
        steps_peak_kb.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        return merged_copy(model)

    distilsent.model.lora.merged_copy = measured_merged_copy
    config = TrainConfig(**TRAIN, **FINETUNE[method])
    model, tokenizer = initial_model(str(default_model_dir()), task["labels"], seed=0)
    total = model.num_parameters()
    loaded_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    examples = [Example(text, label) for text, label in task["train"]]
    summary = train(model, tokenizer, examples, None, config, out_dir, progress=False)
    return {
        "trainable_parameters": summary["trainable_parameters"],
        "total_parameters": total,
        "steps": summary["steps"],
        "seconds_per_step": summary["seconds_this_run"] / summary["steps"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_loading_mb": loaded_kb / 1024,
        "training_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - loaded_kb) / 1024,
        "steps_peak_mb": steps_peak_kb[0] / 1024,
    }


def stage_finetune(results: dict, only: list[str] | None) -> None:
    from distilsent import Classifier

    finetune = results.setdefault("finetune", {})
    context = multiprocessing.get_context("spawn")
    every = tasks()
    for name in only or every:  # in the order asked, so that a cut-short run has what mattered first
        task = every[name]
        for method in FINETUNE:
            if method in finetune.get(name, {}):
                continue
            with tempfile.TemporaryDirectory() as out:
                # A fresh process per run, so that its peak resident memory is this run's alone.
                with ProcessPoolExecutor(1, mp_context=context) as pool:
                    record = pool.submit(_finetune_child, task, method, out).result()
                clf = Classifier.load(Path(out) / "best", max_length=MAX_LENGTH)
                logits = clf.logits([t for t, _ in task["test"]])
            record.update(scores(np.array([label for _, label in task["test"]]), logits, task["labels"]))
            finetune.setdefault(name, {})[method] = record
            save_results(results)
            print(name, method, record, flush=True)


def stage_report(results: dict) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import cpu_flags, cpu_name, write_section

    fewshot, default, finetune = results["fewshot"], results.get("default", {}), results.get("finetune", {})
    lines = [
        "## Transfer: default model, few-shot heads, LoRA, full fine-tuning (`benchmarks/transfer.py`)",
        "",
        "Accuracy (macro-F1 for Yelp) on fixed held-out splits (see the script's docstring). Few-shot: mean ± "
        f"standard deviation over {DRAWS} draws of k examples per class; 'head on 1,000': the same fit on the "
        "whole pool. LoRA (rank 8) and full fine-tuning: 1 epoch on the 1,000-example pool, max length 128.",
        "",
        "| task | default as is | " + " | ".join(f"k={k}" for k in KS) + " | head on 1,000 | LoRA | full FT |",
        "|---|---|" + "---|" * (len(KS) + 3),
    ]
    for name, rows in fewshot.items():
        metric = "accuracy" if name.startswith("amazon") else "macro_f1"
        cells = [f"{100 * default[name][metric]:.1f}" if name in default else "n/a"]
        cells += [f"{100 * np.mean(rows[str(k)][metric]):.1f} ± {100 * np.std(rows[str(k)][metric]):.1f}"
                  for k in KS]
        cells.append(f"{100 * rows['all'][metric]:.1f}")
        cells += [f"{100 * finetune[name][m][metric]:.1f}" if m in finetune.get(name, {}) else "-"
                  for m in ("lora", "full")]
        label = name if metric == "accuracy" else f"{name} (macro-F1)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    yelp = [n for n in fewshot if n.startswith("yelp")]
    if yelp:
        lines += ["", "Yelp accuracy: " + "; ".join(
            f"{n}: k={KS[-1]} {100 * np.mean(fewshot[n][str(KS[-1])]['accuracy']):.1f}, head on 1,000 "
            f"{100 * fewshot[n]['all']['accuracy']:.1f}"
            + "".join(f", {m} {100 * finetune[n][m]['accuracy']:.1f}"
                      for m in ("lora", "full") if m in finetune.get(n, {}))
            for n in yelp) + "."]
    costs = [(n, m, r) for n, methods in finetune.items() for m, r in methods.items()]
    if costs:
        lines += ["", "| training cost (1,000 examples, batch 16, max length 128) | LoRA r=8 | full FT | ratio |",
                  "|---|---|---|---|"]
        for key, label, fmt in (("trainable_parameters", "trainable parameters", "{:,.0f}"),
                                ("seconds_per_step", "seconds per step (mean over tasks)", "{:.2f}"),
                                ("peak_rss_mb", "peak resident memory, MB (max over tasks)", "{:.0f}"),
                                ("training_mb", "of which training (peak - after loading the model), MB", "{:.0f}"),
                                ("steps_peak_mb", "peak of the training steps alone (before saving), MB", "{:.0f}")):
            agg = np.mean if key == "seconds_per_step" else max
            lora = [r[key] for _, m, r in costs if m == "lora" and key in r]
            full = [r[key] for _, m, r in costs if m == "full" and key in r]
            if not lora or not full:
                continue
            lora, full = agg(lora), agg(full)
            if key == "steps_peak_mb":
                label += f" ({', '.join(sorted({n for n, _, r in costs if key in r}))})"
            lines.append(f"| {label} | {fmt.format(lora)} | {fmt.format(full)} | {lora / full:.2f} |")
    if "throughput" in results:
        t = results["throughput"]
        lines += ["", f"Embedding throughput on {t['texts']} Yelp texts (ONNX fp32, max length 128): classify "
                  f"{t['classify']:.1f} texts/s, embed (CLS) {t['embed_cls']:.1f} texts/s "
                  f"({t['embed_cls'] / t['classify']:.2f}x), embed (mean) {t['embed_mean']:.1f} texts/s "
                  f"({t['embed_mean'] / t['classify']:.2f}x)."]
    vnni = " with avx512_vnni" if "avx512_vnni" in cpu_flags() else ""
    lines += ["", f"{os.cpu_count()} cores of {cpu_name()}{vnni}, shared with other jobs. Reproduce: "
              "`python benchmarks/transfer.py features && python benchmarks/transfer.py finetune && "
              "python benchmarks/transfer.py report`."]
    write_section("transfer", "\n".join(lines))
    print("\n".join(lines))
    plot(results)


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, rows) in enumerate(results["fewshot"].items()):
        metric = "accuracy" if name.startswith("amazon") else "macro_f1"
        means = [100 * np.mean(rows[str(k)][metric]) for k in KS]
        spread = [100 * np.std(rows[str(k)][metric]) for k in KS]
        ax.errorbar(KS, means, yerr=spread, marker="o", capsize=3, color=f"C{i}",
                    label=name.replace("amazon-", "").replace("_&_", " & ")
                    + ("" if metric == "accuracy" else " (macro-F1)"))
        if name in results.get("default", {}):
            ax.axhline(100 * results["default"][name][metric], color=f"C{i}", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.set_xlabel("examples per class (k)")
    ax.set_ylabel("% on the held-out split")
    ax.set_title("few-shot heads (dotted: default model as is)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("features", "finetune", "report"))
    parser.add_argument("--tasks", nargs="*", default=None, help="finetune only these tasks")
    args = parser.parse_args()
    if not AMAZON.is_file() or not YELP.is_file():
        sys.exit(f"data not found under {DATA}")
    results = load_results()
    if args.stage == "features":
        stage_features(results)
    elif args.stage == "finetune":
        stage_finetune(results, args.tasks)
    else:
        stage_report(results)
    if args.stage != "report":
        save_results(results)


if __name__ == "__main__":
    main()
