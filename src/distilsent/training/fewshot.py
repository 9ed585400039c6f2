"""Few-shot heads: a new ``classifier`` layer fitted on a frozen model's features, saved as an ordinary checkpoint.

A DistilBERT classifier computes ``classifier(ReLU(pre_classifier(h_CLS)))``. Keeping the encoder and
``pre_classifier`` and refitting only the last linear layer on the penultimate features
``ReLU(pre_classifier(h_CLS))`` makes the new head exactly what every loader already computes: the saved
directory differs from its base only in ``classifier.weight``/``classifier.bias`` and ``id2label``, so
distilsent (either backend, the service, ``eval``) and ``transformers`` load it unchanged, for any number of
labels. The features of a sentiment model are already shaped by sentiment, which is why 5-50 examples
per class go a long way.

The fit is an L2-regularised multinomial logistic regression (scikit-learn, L-BFGS). Its strength is
chosen by stratified cross-validation on the given examples alone (log-loss), so nothing held out is
looked at; with a single example of some label it falls back to C = 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, InputError, MissingDependencyError
from ..model.checkpoint import SAFETENSORS_NAME, check_state_dict, load_config, resolve
from ..model.directory import writing
from ..model.modelcard import model_card
from ..runtime.classifier import Classifier
from ..runtime.embeddings import embed
from ..runtime.onnx_graph import expected_shapes, read_tensors

# Inverse regularisation strengths tried by the cross-validation; features are ReLU outputs of order 1.
C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 13))
MAX_FOLDS = 5
HEAD_NAMES = ("classifier.weight", "classifier.bias")


def require_sklearn():
    try:
        import sklearn.linear_model  # noqa: F401
    except ImportError:
        raise MissingDependencyError("few-shot heads need scikit-learn: pip install 'distilsent[fewshot]'") from None


def penultimate_features(classifier, tensors: dict[str, np.ndarray], texts: Sequence[str], **options) -> np.ndarray:
    """``ReLU(pre_classifier(h_CLS))`` (n, dim) float32 for each text: the input of the ``classifier`` layer.

    ``tensors`` holds at least ``pre_classifier.weight``/``.bias`` of the classifier's checkpoint;
    ``options`` go to :func:`distilsent.runtime.embeddings.embed` (``max_length``, ``batch_size``...).
    """
    cls = embed(classifier, texts, pooling="cls", layer=-1, **options)  # (n, D)
    weight = np.asarray(tensors["pre_classifier.weight"], dtype=np.float32)
    bias = np.asarray(tensors["pre_classifier.bias"], dtype=np.float32)
    return np.maximum(cls @ weight.T + bias, 0.0)


@dataclass(frozen=True)
class Head:
    """A fitted ``classifier`` layer: logits = features @ weight.T + bias."""

    weight: np.ndarray  # (labels, dim) float32
    bias: np.ndarray  # (labels,) float32
    c: float  # the inverse L2 strength used
    chosen_by: str  # "cross-validation", "given", or "default" (too few examples to cross-validate)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias


def fit_head(features: np.ndarray, labels: Sequence[int], n_labels: int, *, c: float | None = None,
             seed: int = 0) -> Head:
    """Fit ``n_labels`` logits on (n, dim) ``features``; every label id in 0..n_labels-1 needs an example.

    ``c`` fixes the inverse L2 strength; ``None`` chooses it by cross-validation on these examples.
    """
    require_sklearn()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=n_labels) if y.size else np.zeros(n_labels, dtype=np.int64)
    if n_labels < 2 or len(counts) != n_labels or counts.min() < 1:
        raise InputError(f"a few-shot head needs an example of each of its {n_labels} labels; "
                         f"got counts {counts.tolist()}")
    x = np.asarray(features, dtype=np.float64)
    folds = min(MAX_FOLDS, int(counts.min()))
    if c is None and folds >= 2:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed)
        losses = [-cross_val_score(LogisticRegression(C=value, max_iter=2000), x, y, cv=splits,
                                   scoring="neg_log_loss").mean() for value in C_GRID]
        chosen, how = C_GRID[int(np.argmin(losses))], "cross-validation"  # ties: the stronger regularisation
    else:
        chosen, how = (1.0, "default") if c is None else (float(c), "given")
        if chosen <= 0:
            raise InputError(f"C must be positive, got {c}")
    model = LogisticRegression(C=chosen, max_iter=2000).fit(x, y)
    weight, bias = model.coef_, model.intercept_
    if n_labels == 2:
        # scikit-learn keeps one vector w for label 1; logits (-z/2, z/2) give softmax = sigmoid(z) exactly.
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    return Head(weight.astype(np.float32), bias.astype(np.float32), chosen, how)


def base_tensors(directory: Path, config) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as numpy, in their stored dtype (a float16 encoder stays float16)."""
    path = directory / SAFETENSORS_NAME
    if not path.is_file():
        return read_tensors(directory, config)
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:  # SafetensorError, OSError, or a dtype numpy lacks (bfloat16)
        raise CheckpointError(f"{path} cannot be read as float16/float32 safetensors ({e})") from None
    tensors = {k: v for k, v in tensors.items() if not k.endswith("position_ids")}
    check_state_dict(expected_shapes(config), tensors, str(directory))
    return tensors


def save_head(directory: Path, config, tensors: dict[str, np.ndarray], head: Head, labels: Sequence[str],
              out: str | os.PathLike, card: str | None = None) -> Path:
    """Write the base checkpoint with ``head`` as its ``classifier`` and ``labels`` as its id2label.

    The head is stored in float32 whatever the encoder's dtype: a float16 head would move its decisions.
    """
    out = Path(out)
    if out.resolve() == directory.resolve():
        raise InputError(f"the few-shot model must go to a new directory, not over its base {directory}")
    with writing(out) as written:
        written.write_config(config.replace(id2label=dict(enumerate(labels))))
        written.write_weights({**tensors, "classifier.weight": head.weight, "classifier.bias": head.bias})
        written.carry_tokenizer(directory)
        if card is not None:
            written.write_card(card)
    return out


def fewshot(
    base: str | os.PathLike | None,
    texts: Sequence[str],
    labels: Sequence[int],
    label_names: Sequence[str],
    out: str | os.PathLike,
    *,
    c: float | None = None,
    backend: str = "onnx",
    max_length: int | None = None,
    data_files: Sequence[str | os.PathLike] = (),
) -> dict:
    """Fit a few-shot head for ``label_names`` on ``texts``/``labels`` (ids) over the frozen ``base``
    (a path, Hub id, or ``None``/``"default"`` for the embedded model) and save it to ``out``.

    Returns a summary: the directory, examples per label, the chosen C and the accuracy on the examples.
    """
    label_names = tuple(label_names)
    if len(set(label_names)) != len(label_names) or len(label_names) < 2:
        raise InputError(f"a few-shot head needs two or more distinct labels, got {list(label_names)}")
    if len(texts) != len(labels):
        raise InputError(f"{len(texts)} texts but {len(labels)} labels")
    require_sklearn()
    directory = resolve(base)
    config = load_config(directory)
    tensors = base_tensors(directory, config)
    classifier = Classifier.load(directory, backend=backend)
    options = {"max_length": max_length} if max_length else {}
    features = penultimate_features(classifier, tensors, texts, **options)
    head = fit_head(features, labels, len(label_names), c=c)
    counts = np.bincount(np.asarray(labels), minlength=len(label_names)).tolist()
    accuracy = float((head.logits(features).argmax(1) == np.asarray(labels)).mean())
    name = Path(out).name
    card = model_card(
        name, config.replace(id2label=dict(enumerate(label_names))), data_files=list(data_files),
        extra=(
            f"Few-shot head: the encoder and `pre_classifier` of `{base or 'distilsent-default'}` unchanged; "
            f"`classifier` refitted by L2-regularised logistic regression (C = {head.c:g}, {head.chosen_by}) "
            f"on {len(texts)} examples "
            f"({', '.join(f'{n}: {k}' for n, k in zip(label_names, counts))})."
        ),
    )
    save_head(directory, config, tensors, head, label_names, out, card)
    return {"model": str(out), "labels": list(label_names), "examples_per_label": counts, "C": head.c,
            "train_accuracy": accuracy}


__all__ = ["Head", "base_tensors", "fewshot", "fit_head", "penultimate_features", "save_head"]
