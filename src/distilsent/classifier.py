"""``Classifier``: texts in, ``{"label", "score"}`` out, in the shapes of the Hugging Face pipeline.

Texts are tokenized once, sorted by length, cut into batches under a token budget (padding is counted,
so similar lengths travel together), run through a backend, and put back in input order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import DistilBertConfig
from .errors import InputError
from .tokenizer import Tokenizer

FUNCTIONS = ("softmax", "sigmoid", "none")
BACKENDS = ("onnx", "torch")
_LEGACY = object()  # top_k not given: the pipeline's original one-best shape


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices of each batch: longest first, at most ``batch_size`` texts and ``max_batch_tokens``
    padded tokens per batch (a single text longer than the budget gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            width = lengths[batch[0]]  # the longest, as the order is descending
            if len(batch) < batch_size and (len(batch) + 1) * width <= max_batch_tokens:
                batch.append(i)
                continue
        batches.append([i])
    return batches


class Classifier:
    """Sentiment (or any sequence) classifier over a DistilBERT checkpoint.

    >>> clf = Classifier.load()              # the embedded default model
    >>> clf("a gripping, beautiful film")
    [{'label': 'POSITIVE', 'score': 0.99...}]
    """

    def __init__(
        self,
        backend,
        tokenizer: Tokenizer,
        config: DistilBertConfig,
        *,
        name: str = "",
        # Measured with ONNX Runtime on 2 cores (benchmarks/speed.py): batches of ~2k padded tokens keep
        # activations in cache and beat larger ones by 10-15% on SST-2 dev and on 256-512-token texts.
        batch_size: int = 32,
        max_batch_tokens: int = 2048,
        max_length: int | None = None,
    ):
        if batch_size < 1 or max_batch_tokens < 1:
            raise InputError("batch_size and max_batch_tokens must be positive")
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_length = min(max_length or tokenizer.max_length, config.max_position_embeddings)

    @classmethod
    def load(
        cls,
        path_or_id: str | os.PathLike | None = None,
        *,
        backend: str = "onnx",
        threads: int | None = None,
        **options: Any,
    ) -> "Classifier":
        """Load a checkpoint directory, a Hub id, or (``None``) the embedded default model.

        ``backend="onnx"`` (ONNX Runtime, no torch) runs the directory's ``model.onnx`` (what
        ``distilsent export`` writes, float32 or int8), else a graph built from the weights once and cached;
        ``backend="torch"`` runs the PyTorch reference model.
        """
        from .checkpoint import load_config, load_tokenizer, resolve

        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        directory = resolve(path_or_id)
        config = load_config(directory)
        tokenizer = load_tokenizer(directory, config)
        from .backends import OnnxBackend, TorchBackend

        runner = (OnnxBackend if backend == "onnx" else TorchBackend).load(directory, config, threads)
        name = str(path_or_id) if path_or_id is not None else "distilsent-default"
        return cls(runner, tokenizer, config, name=name, **options)

    @property
    def labels(self) -> list[str]:
        return self.config.labels

    def logits(
        self,
        texts: Sequence[str],
        *,
        truncation: bool = True,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Raw logits (n, labels) float32, in input order."""
        limit = min(max_length or self.max_length, self.config.max_position_embeddings)
        sequences = self.tokenizer.encode(texts, limit, truncation)
        out = np.empty((len(sequences), self.config.num_labels), dtype=np.float32)
        lengths = [len(s) for s in sequences]
        for batch in plan_batches(lengths, batch_size or self.batch_size, self.max_batch_tokens):
            ids, mask = self.tokenizer.pad([sequences[i] for i in batch])
            out[batch] = self.backend.logits(ids, mask)
        return out

    def scores(self, logits: np.ndarray, function_to_apply: str | None = None) -> np.ndarray:
        function = function_to_apply or self.default_function
        if function == "softmax":
            return softmax(logits)
        if function == "sigmoid":
            return sigmoid(logits)
        if function == "none":
            return logits
        raise InputError(f"function_to_apply must be one of {', '.join(FUNCTIONS)}, got {function!r}")

    @property
    def default_function(self) -> str:
        if self.config.problem_type == "multi_label_classification" or self.config.num_labels == 1:
            return "sigmoid"
        return "softmax"

    def __call__(
        self,
        inputs: str | Sequence[str],
        *,
        top_k: Any = _LEGACY,
        function_to_apply: str | None = None,
        truncation: bool = True,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> list:
        """Classify like ``pipeline("text-classification")``.

        - ``clf("text")`` -> ``[{"label", "score"}]``; ``clf([a, b])`` -> ``[{...}, {...}]``
        - ``top_k=None`` (every label) or ``top_k=k``: a list of dicts sorted by score per text;
          for a single string that list itself, for a list of texts a list of such lists.
        """
        if top_k is not _LEGACY and top_k is not None:
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
                raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
        if function_to_apply is not None and function_to_apply not in FUNCTIONS:
            raise InputError(f"function_to_apply must be one of {', '.join(FUNCTIONS)}, got {function_to_apply!r}")
        single = isinstance(inputs, str)
        if not single and not isinstance(inputs, (list, tuple)):
            raise InputError(f"inputs must be a string or a list of strings, got {type(inputs).__name__}")
        texts = [inputs] if single else list(inputs)
        scores = self.scores(
            self.logits(texts, truncation=truncation, max_length=max_length, batch_size=batch_size),
            function_to_apply,
        )
        return format_scores(scores, self.labels, top_k, single)


def format_scores(scores: np.ndarray, labels: Sequence[str], top_k: Any = _LEGACY, single: bool = False) -> list:
    """Scores (n, labels) in the pipeline's shapes: the one best label per text when ``top_k`` is not
    given, else every label (``None``) or the ``top_k`` best, sorted by score (a stable sort: ties keep
    label order), one list per text, or that list itself for a single text."""
    if top_k is _LEGACY:
        best = scores.argmax(axis=-1)
        return [{"label": labels[b], "score": row[b].item()} for row, b in zip(scores, best)]
    results = []
    for row in scores:
        ranked = sorted(
            ({"label": labels[i], "score": s.item()} for i, s in enumerate(row)),
            key=lambda d: d["score"],
            reverse=True,
        )
        results.append(ranked if top_k is None else ranked[:top_k])
    return results[0] if single else results
