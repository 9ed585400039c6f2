"""Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks"), folded into the weights.

One scalar ``T`` is fitted by minimising the negative log-likelihood of ``softmax(logits / T)`` on a
labelled file. The classification head is linear, so ``logits / T`` is exactly what the model computes
with ``classifier.weight / T`` and ``classifier.bias / T``: the calibrated model is an ordinary
checkpoint, and every backend (and ``transformers``) gives the calibrated scores with no new code path.
Accuracy cannot change (dividing by a positive scalar keeps the argmax).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from ..data.examples import read_examples
from ..errors import CheckpointError, InputError, MissingDependencyError
from ..model.checkpoint import (
    load_config,
    load_state_dict,  # a pickle checkpoint: only torch reads it safely
    resolve,
)
from ..model.directory import writing
from ..model.modelcard import sha256
from ..runtime.classifier import Classifier, softmax
from ..runtime.long_text import most_confident
from .evaluate import metrics

HEAD = ("classifier.weight", "classifier.bias")
TEMPERATURE_RANGE = (0.05, 20.0)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean of ``-log softmax(logits / T)[label]``."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    log_probs = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` that minimises the NLL of ``softmax(logits / T)``.

    The NLL is convex in ``1 / T``, hence unimodal in ``log T``: a bounded scalar search finds the optimum.
    """
    try:
        from scipy.optimize import minimize_scalar
    except ImportError:
        raise MissingDependencyError("calibration needs SciPy: pip install 'distilsent[calibrate]'") from None
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[1] < 2 or len(labels) != len(logits) or len(labels) == 0:
        raise InputError("temperature scaling needs (n, labels >= 2) logits and n labels, n > 0")
    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(low, high), method="bounded", options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


def fold_temperature(tensors: dict[str, np.ndarray], temperature: float) -> dict[str, np.ndarray]:
    """The same tensors with the classification head divided by ``temperature``, each in its own dtype."""
    if not temperature > 0:
        raise InputError(f"the temperature must be positive, got {temperature}")
    missing = [name for name in HEAD if name not in tensors]
    if missing:
        raise CheckpointError(f"no classification head to calibrate: missing {', '.join(missing)}")
    out = dict(tensors)
    for name in HEAD:
        out[name] = (tensors[name].astype(np.float64) / temperature).astype(tensors[name].dtype)
    return out


def _read_tensors(directory: Path) -> dict[str, np.ndarray]:
    path = directory / "model.safetensors"
    if path.is_file():
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    return {name: tensor.numpy() for name, tensor in load_state_dict(directory).items()}


def write_calibrated(source: str | os.PathLike, out: str | os.PathLike, temperature: float, card: str) -> Path:
    """Write the checkpoint directory ``source`` to ``out`` (which may be ``source``) with the temperature folded
    into its head.

    The weights keep their dtype (a float16 checkpoint stays float16 and the same size). A graph of the old
    weights is not carried over (see :mod:`distilsent.model.directory`): the ONNX backend builds one from the new.
    """
    source = Path(source)
    tensors = fold_temperature(_read_tensors(source), temperature)
    with writing(out) as written:
        written.write_config(load_config(source))
        written.write_weights(tensors)
        written.carry_tokenizer(source)
        written.write_card(card)
    return Path(out)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` fitted and measured (``before``/``after``: ECE, NLL, Brier, accuracy)."""

    temperature: float
    examples: int
    data: str
    before: dict
    after: dict
    out: str = ""

    def as_dict(self) -> dict:
        return {"temperature": self.temperature, "examples": self.examples, "data": self.data,
                "before": self.before, "after": self.after, "model": self.out}


def _figures(probs: np.ndarray, labels: np.ndarray, names) -> dict:
    result = metrics(labels, probs, names)
    return {key: result[key] for key in ("ece", "nll", "brier", "accuracy")}


def measure(logits: np.ndarray, labels: np.ndarray, names, data: str) -> Calibration:
    """Fit ``T`` on ``logits``/``labels`` and measure the calibration before and after it."""
    temperature = fit_temperature(logits, labels)
    logits = np.asarray(logits, dtype=np.float64)
    return Calibration(
        temperature=temperature, examples=len(labels), data=data,
        before=_figures(softmax(logits), labels, names), after=_figures(softmax(logits / temperature), labels, names),
    )


def card_section(calibration: Calibration, sha256: str | None = None, note: str = "") -> str:
    """The ``## Calibration`` section of a model card."""
    rows = [("ECE (15 bins)", "ece"), ("NLL", "nll"), ("Brier score", "brier"), ("accuracy", "accuracy")]
    data = f"`{calibration.data}`" + (f" (SHA-256 `{sha256}`)" if sha256 else "")
    lines = [
        "## Calibration",
        "",
        f"Temperature scaling: the logits are divided by T = {calibration.temperature:.4f}, fitted by minimising "
        f"the negative log-likelihood on {data}, {calibration.examples} examples. T is folded into "
        "`classifier.weight` and `classifier.bias` (relative to the weights it was fitted on), so every "
        "runtime, `transformers` included, gives the calibrated scores; the predicted labels are unchanged.",
        "",
        "| on the fitting data | before | after |",
        "|---|---|---|",
        *[f"| {label} | {calibration.before[key] + 0.0:.4f} | {calibration.after[key] + 0.0:.4f} |"
          for label, key in rows],
    ]
    if note:
        lines += ["", note]
    return "\n".join(lines)


def with_section(card: str, section: str) -> str:
    """``card`` with its ``## Calibration`` section replaced by ``section`` (or ``section`` appended)."""
    start = card.find("\n## Calibration\n")
    if start == -1:
        return card.rstrip("\n") + "\n\n" + section + "\n"
    end = card.find("\n## ", start + 1)
    rest = card[end:] if end != -1 else "\n"
    return card[:start] + "\n" + section + "\n" + rest


def fit(classifier, examples, data: str) -> Calibration:
    """Fit ``T`` for ``classifier`` on labelled ``examples`` read with its long-text strategy. With windows
    aggregated by ``"max"``, each text's most confident window is its example: the score the classifier
    reports is that window's (dividing by ``T`` keeps which window that is, exactly for two labels); with
    ``"mean"``, each window is one example with its text's label (``T`` belongs to the model, which scores
    one window at a time)."""
    if len(classifier.labels) < 2 or classifier.default_function != "softmax":
        raise InputError("temperature scaling calibrates softmax classifiers with two or more labels")
    inference = classifier.infer([e.text for e in examples], function_to_apply="softmax")
    logits, windows = inference.window_logits, inference.windows
    labels = np.array([e.label for e in examples])
    if inference.reading.aggregate == "max" and not inference.one_each:
        logits = logits[most_confident(inference.window_scores, windows, len(examples))]
    else:
        labels = labels[windows.owner]
    return measure(logits, labels, classifier.labels, data)


def calibrate(
    model: str | os.PathLike | None,
    file: str | os.PathLike,
    out: str | os.PathLike,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    fmt: str | None = None,
    backend: str = "onnx",
    threads: int | None = None,
    **options,
) -> Calibration:
    """Fit temperature scaling for ``model`` (a directory, Hub id, or ``None`` for the default model) on the
    labelled ``file`` and write the calibrated checkpoint to ``out``; returns what was fitted and measured.

    ``options`` go to :class:`~distilsent.runtime.classifier.Classifier` (e.g. ``long_text="head_tail"``), so the
    texts are read as the model will read them (see :func:`fit`)."""
    source = resolve(model)
    classifier = Classifier.load(source, backend=backend, threads=threads, **options)
    examples = read_examples(file, text_column=text_column, label_column=label_column, labels=classifier.labels,
                             fmt=fmt)
    fitted = fit(classifier, examples, Path(file).name if str(file) != "-" else "stdin")
    card_path = source / "README.md"
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else f"# {Path(out).name}\n"
    digest = sha256(file) if str(file) != "-" else None
    write_calibrated(source, out, fitted.temperature, with_section(card, card_section(fitted, digest)))
    return dataclasses.replace(fitted, out=str(out))
