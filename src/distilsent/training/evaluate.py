"""Evaluation: accuracy, precision, recall, F1, confusion matrix, calibration (ECE, NLL, Brier), length buckets.

``metrics`` is pure numpy over labels and probabilities; ``evaluate`` runs a classifier over examples
and adds its speed. ``plot`` draws a confusion matrix, a reliability diagram and a risk-coverage curve
(matplotlib extra).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError
from ..progress import ProgressBar

ECE_BINS = 15
LENGTH_BUCKETS = (16, 32, 64, 128, 256)  # upper bounds in tokens; the last bucket is open


def positive_index(labels: Sequence[str]) -> int:
    upper = [label.upper() for label in labels]
    return upper.index("POSITIVE") if "POSITIVE" in upper else len(labels) - 1


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each confidence: bin k holds ``(k / bins, (k + 1) / bins]`` (0 falls in the first)."""
    return np.clip(np.ceil(np.asarray(confidence) * bins).astype(np.int64) - 1, 0, bins - 1)


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    where = _bin_index(confidence, bins)
    out = []
    for k in range(bins):
        inside = where == k
        count = int(inside.sum())
        out.append({
            "low": k / bins,
            "high": (k + 1) / bins,
            "count": count,
            "confidence": float(confidence[inside].mean()) if count else None,
            "accuracy": float(correct[inside].mean()) if count else None,
        })
    return out


def ece_floor(confidence: np.ndarray, bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> float:
    """The ECE that a perfectly calibrated model with these confidences scores on this many texts, on average.

    ECE is measured on a finite sample, so it is not 0 even when every score is exactly right: each bin's
    accuracy is a frequency with its own sampling error. Here each prediction is drawn right with the
    probability its confidence states (``draws`` times, seeded) and the ECE of each draw is averaged: an
    ECE near this figure cannot be told apart from perfect calibration on this data (on SST-2 dev's 872
    texts it is about 0.02).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    if not len(confidence):
        return 0.0
    where = _bin_index(confidence, bins)
    stated = np.bincount(where, weights=confidence, minlength=bins)
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(draws):
        right = np.bincount(where, weights=rng.random(len(confidence)) < confidence, minlength=bins)
        total += np.abs(right - stated).sum() / len(confidence)
    return float(total / draws)


def negative_log_likelihood(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean ``-log p(true label)``; probabilities are floored at 1e-15 so one certain mistake stays finite."""
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-15)).mean()) if len(labels) else 0.0


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Brier's original score: squared error of the probability vector against the one-hot label, summed
    over labels and averaged over examples (0 is perfect; for two labels it is twice the ``(p - y)^2`` form)."""
    if not len(labels):
        return 0.0
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def risk_coverage(confidence: np.ndarray, correct: np.ndarray, floor: float) -> list[dict]:
    """Accuracy on the texts answered, and their share, when texts below a confidence threshold abstain
    (``neutral_below``): one point per threshold from ``floor`` (1 / labels, where nothing abstains) to 0.99."""
    points = []
    for threshold in np.round(np.arange(np.floor(floor * 100) / 100, 1.0, 0.01), 2):
        answered = confidence >= threshold
        count = int(answered.sum())
        points.append({
            "threshold": float(threshold),
            "coverage": count / len(confidence) if len(confidence) else 0.0,
            "accuracy": float(correct[answered].mean()) if count else None,
        })
    return points


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
        "per_class": [
            {"label": name, "precision": p, "recall": r, "f1": f, "support": int(confusion[k].sum())}
            for k, (name, (p, r, f)) in enumerate(zip(names, per_class))
        ],
        "labels": list(names),
        "confusion_matrix": confusion.tolist(),
        "ece": float(ece),
        "ece_floor": ece_floor(confidence),
        "nll": negative_log_likelihood(labels, probs),
        "brier": brier_score(labels, probs),
        "calibration": bins,
        "risk_coverage": risk_coverage(confidence, correct, 1 / n_labels),
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


def evaluate(classifier, examples, *, batch_size: int | None = None, progress: bool = False) -> dict:
    """Run ``classifier`` over labelled ``examples``, read as it reads texts (its reading), and measure it
    (softmax probabilities: the scores ``classifier(texts, function_to_apply="softmax")`` gives).

    ``progress`` shows the sequences done on stderr (see :mod:`distilsent.progress`).
    """
    texts = [e.text for e in examples]
    labels = np.array([e.label for e in examples])
    start = time.perf_counter()
    with ProgressBar("eval", unit="sequence", enabled=progress) as bar:
        inference = classifier.infer(texts, function_to_apply="softmax", batch_size=batch_size, progress=bar)
    probs, windows = inference.scores, inference.windows
    seconds = time.perf_counter() - start
    text_lengths = np.zeros(len(texts), dtype=np.int64)  # tokens of each text that were read
    read = windows.starts + np.array([len(ids) for ids in windows.sequences], dtype=np.int64)
    np.maximum.at(text_lengths, windows.owner, read)
    result = metrics(labels, probs, classifier.labels, text_lengths)
    sources = np.array([e.source or "" for e in examples], dtype=object)
    if sources.any():  # examples that know their file: the figures of each file too
        result["per_source"] = {}
        for name in dict.fromkeys(sources.tolist()):
            inside = sources == name
            result["per_source"][name] = metrics(labels[inside], probs[inside], classifier.labels)
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
        f"ECE (15 bins) {result['ece']:.4f}  (perfect calibration would score {result['ece_floor']:.4f} here)",
        f"NLL          {result['nll']:.4f}",
        f"Brier        {result['brier']:.4f}",
    ]
    if "examples_per_second" in result:
        lines.append(f"examples/s   {result['examples_per_second']:.1f}")
    names = result["labels"]
    width = max(len(n) for n in names) + 2
    lines.append("")
    lines.append("true \\ predicted".ljust(width + 8) + "".join(n.rjust(width) for n in names))
    for name, row in zip(names, result["confusion_matrix"]):
        lines.append(name.ljust(width + 8) + "".join(str(c).rjust(width) for c in row))
    if result.get("per_class"):
        lines.append("")
        lines.append("label".ljust(width) + "precision  recall      f1  support")
        for c in result["per_class"]:
            lines.append(f"{c['label']:<{width}}{c['precision']:>9.4f}{c['recall']:>8.4f}{c['f1']:>8.4f}{c['support']:>9}")
    if result.get("per_source"):
        lines.append("")
        width = max(len("source"), *(len(name) for name in result["per_source"])) + 2
        lines.append("source".ljust(width) + "examples  accuracy      f1     ECE")
        for name, m in result["per_source"].items():
            lines.append(f"{name:<{width}}{m['examples']:>8}{m['accuracy']:>10.4f}{m['f1']:>8.4f}{m['ece']:>8.4f}")
    if result.get("accuracy_by_length"):
        lines.append("")
        lines.append("tokens     count  accuracy")
        for b in result["accuracy_by_length"]:
            lines.append(f"{b['tokens']:<10} {b['count']:>5}  {b['accuracy']:.4f}")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot drawing to files; callers that plot after long work ask for it first, so that a
    missing matplotlib is reported before the work rather than after it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        # eval runs on ONNX Runtime: matplotlib alone is enough, where the train extra also brings PyTorch.
        raise MissingDependencyError(
            "plots need matplotlib: pip install matplotlib (or 'distilsent[train]', which also installs PyTorch)"
        ) from None
    return plt


def plot(result: dict, directory: str | Path) -> list[Path]:
    """Write ``confusion_matrix.png``, ``reliability.png`` and ``risk_coverage.png``; returns their paths."""
    plt = pyplot()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = result["labels"]
    confusion = np.array(result["confusion_matrix"])

    # Sized to the labels: about an inch per label beyond two, long names turned so they do not overlap.
    side = 4 + 0.9 * max(0, len(names) - 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > confusion.max() / 2 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45 if max(map(len, names)) * len(names) > 30 else 0,
                  ha="right" if max(map(len, names)) * len(names) > 30 else "center")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {result['accuracy']:.4f}")
    fig.tight_layout()
    confusion_path = directory / "confusion_matrix.png"
    fig.savefig(confusion_path, dpi=120)
    plt.close(fig)

    # The confidence of the predicted label is never below 1 / labels (0.5 for two), so the axis starts at
    # the bin edge below that instead of leaving that part of the plot empty.
    floor = np.floor(ECE_BINS / len(names)) / ECE_BINS
    bins = [b for b in result["calibration"] if b["count"]]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([floor, 1], [floor, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.bar(centres, [b["accuracy"] for b in bins], width=1 / ECE_BINS, edgecolor="black", alpha=0.7,
           label="accuracy in the bin")
    ax.scatter(centres, [b["confidence"] for b in bins], marker="D", color="C3", zorder=3,
               label="mean confidence in the bin")
    ax.set_xlim(floor, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {result['ece']:.4f})")
    ax.legend(loc="upper left", fontsize=8)
    counts.bar(centres, [b["count"] / result["examples"] for b in bins], width=1 / ECE_BINS, edgecolor="black",
               color="grey")
    counts.set_xlabel("confidence of the predicted label")
    counts.set_ylabel("share of texts")
    fig.tight_layout()
    reliability_path = directory / "reliability.png"
    fig.savefig(reliability_path, dpi=120)
    plt.close(fig)

    points = [p for p in result["risk_coverage"] if p["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([p["coverage"] for p in points], [p["accuracy"] for p in points], marker=".", color="C0")
    for p in points:
        if round(p["threshold"] * 100) % 10 == 0:  # label every 0.1 of threshold
            ax.annotate(f"{p['threshold']:.1f}", (p["coverage"], p["accuracy"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("coverage (share of texts answered)")
    ax.set_ylabel("accuracy on the texts answered")
    ax.set_title("risk-coverage (labels: neutral_below)")
    fig.tight_layout()
    risk_path = directory / "risk_coverage.png"
    fig.savefig(risk_path, dpi=120)
    plt.close(fig)
    return [confusion_path, reliability_path, risk_path]
