"""Evaluation: accuracy, precision, recall, F1, confusion matrix, calibration error, length buckets.

``metrics`` is pure numpy over labels and probabilities; ``evaluate`` runs a classifier over examples
and adds its speed. ``plot`` draws a confusion matrix and a reliability diagram (matplotlib extra).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import MissingDependencyError

ECE_BINS = 15
LENGTH_BUCKETS = (16, 32, 64, 128, 256)  # upper bounds in tokens; the last bucket is open


def positive_index(labels: Sequence[str]) -> int:
    upper = [label.upper() for label in labels]
    return upper.index("POSITIVE") if "POSITIVE" in upper else len(labels) - 1


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        count = int(inside.sum())
        out.append({
            "low": float(lo),
            "high": float(hi),
            "count": count,
            "confidence": float(confidence[inside].mean()) if count else None,
            "accuracy": float(correct[inside].mean()) if count else None,
        })
    return out


def _prf(confusion: np.ndarray, k: int) -> tuple[float, float, float]:
    tp = confusion[k, k]
    predicted = confusion[:, k].sum()
    actual = confusion[k, :].sum()
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def metrics(
    labels: np.ndarray, probs: np.ndarray, names: Sequence[str], lengths: Sequence[int] | None = None
) -> dict:
    """Every figure of an evaluation; ``confusion[i][j]`` counts true ``names[i]`` predicted ``names[j]``."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    predicted = probs.argmax(axis=1)
    n_labels = len(names)
    confusion = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    correct = predicted == labels
    confidence = probs.max(axis=1)
    bins = calibration_bins(confidence, correct)
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / max(len(labels), 1)
    positive = positive_index(names)
    precision, recall, f1 = _prf(confusion, positive)
    per_class = [_prf(confusion, k) for k in range(n_labels)]
    result = {
        "examples": int(len(labels)),
        "accuracy": float(correct.mean()) if len(labels) else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "positive_label": names[positive],
        "macro_precision": float(np.mean([p for p, _, _ in per_class])),
        "macro_recall": float(np.mean([r for _, r, _ in per_class])),
        "macro_f1": float(np.mean([f for _, _, f in per_class])),
        "labels": list(names),
        "confusion_matrix": confusion.tolist(),
        "ece": float(ece),
        "calibration": bins,
    }
    if lengths is not None:
        lengths = np.asarray(lengths)
        buckets = []
        low = 0
        for high in (*LENGTH_BUCKETS, None):
            inside = (lengths > low) & (lengths <= high if high is not None else True)
            count = int(inside.sum())
            if count:
                buckets.append({
                    "tokens": f"{low + 1}-{high}" if high is not None else f">{low}",
                    "count": count,
                    "accuracy": float(correct[inside].mean()),
                })
            low = high if high is not None else low
        result["accuracy_by_length"] = buckets
    return result


def evaluate(classifier, examples, *, batch_size: int | None = None) -> dict:
    """Run ``classifier`` over labelled ``examples`` and measure it (softmax probabilities)."""
    texts = [e.text for e in examples]
    labels = np.array([e.label for e in examples])
    start = time.perf_counter()
    logits = classifier.logits(texts, batch_size=batch_size)
    seconds = time.perf_counter() - start
    lengths = [len(ids) for ids in classifier.tokenizer.encode(texts, classifier.max_length)]
    result = metrics(labels, classifier.scores(logits, "softmax"), classifier.labels, lengths)
    result["seconds"] = seconds
    result["examples_per_second"] = len(texts) / seconds if seconds > 0 else float("inf")
    return result


def format_table(result: dict) -> str:
    """The headline figures and the confusion matrix as aligned text."""
    lines = [
        f"examples     {result['examples']}",
        f"accuracy     {result['accuracy']:.4f}",
        f"precision    {result['precision']:.4f}  ({result['positive_label']})",
        f"recall       {result['recall']:.4f}",
        f"f1           {result['f1']:.4f}",
        f"macro f1     {result['macro_f1']:.4f}",
        f"ECE (15 bins) {result['ece']:.4f}",
    ]
    if "examples_per_second" in result:
        lines.append(f"examples/s   {result['examples_per_second']:.1f}")
    names = result["labels"]
    width = max(len(n) for n in names) + 2
    lines.append("")
    lines.append("true \\ predicted".ljust(width + 8) + "".join(n.rjust(width) for n in names))
    for name, row in zip(names, result["confusion_matrix"]):
        lines.append(name.ljust(width + 8) + "".join(str(c).rjust(width) for c in row))
    if result.get("accuracy_by_length"):
        lines.append("")
        lines.append("tokens     count  accuracy")
        for b in result["accuracy_by_length"]:
            lines.append(f"{b['tokens']:<10} {b['count']:>5}  {b['accuracy']:.4f}")
    return "\n".join(lines)


def plot(result: dict, directory: str | Path) -> list[Path]:
    """Write ``confusion_matrix.png`` and ``reliability.png``; returns their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("plots need matplotlib: pip install 'distilsent[train]'") from None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = result["labels"]
    confusion = np.array(result["confusion_matrix"])

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > confusion.max() / 2 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {result['accuracy']:.4f}")
    fig.tight_layout()
    confusion_path = directory / "confusion_matrix.png"
    fig.savefig(confusion_path, dpi=120)
    plt.close(fig)

    bins = [b for b in result["calibration"] if b["count"]]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins],
           width=1 / ECE_BINS, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color="C1",
            label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {result['ece']:.4f})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    reliability_path = directory / "reliability.png"
    fig.savefig(reliability_path, dpi=120)
    plt.close(fig)
    return [confusion_path, reliability_path]
