"""Sentence embeddings and hidden states of a classifier's encoder, and writing them to files.

Texts go through the same chain as classification (``Classifier.prepare`` and the one batch planner), but
each batch asks the backend for a hidden state with its logits (``Classifier.run_embedded``), so scores
and embeddings asked for together cost one pass (``Classifier.infer(..., embeddings=...)``). Hidden state
0 is the embedding layer's output, state i the output of block i (``n_layers + 1`` in all, as
``transformers``' ``output_hidden_states``). Pooling turns a (B, T, D) state into (B, D):

- ``"cls"``: the first token's vector, what the classification head reads;
- ``"mean"``: the mean over the real tokens ([CLS] and [SEP] included, padding excluded), as
  sentence-transformers pools all-MiniLM-L6-v2.

A text read as several windows gets the mean of its windows' vectors weighted by the tokens each window
holds (as ``aggregate="mean"`` weighs their scores), then, with ``normalize``, unit length.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingDependencyError
from ..progress import ProgressBar
from .long_text import Reading

POOLINGS = ("cls", "mean")
FORMATS = ("npy", "parquet")


@dataclass(frozen=True)
class Embeddings:
    """The embedding computed for each text in the pass that scores it (``Classifier.infer(embeddings=...)``):
    ``pooling`` of hidden state ``layer`` (0 = embeddings ... ``n_layers``, negative from the end), of unit
    length when ``normalize``."""

    pooling: str = "cls"
    layer: int = -1
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")

    @classmethod
    def of(cls, value: "str | Embeddings | None") -> "Embeddings | None":
        """``value`` as embeddings to compute: a pooling name is that pooling of the last layer."""
        if value is None or isinstance(value, Embeddings):
            return value
        if isinstance(value, str):
            return cls(value)
        raise InputError(f"embeddings must be a pooling name or an Embeddings, got {value!r}")


def layer_index(layer: int, n_layers: int) -> int:
    """``layer`` in 0..n_layers, or counted from the end when negative (-1 is the last block)."""
    count = n_layers + 1
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -count <= layer < count:
        raise InputError(f"layer must be an integer in {-count}..{n_layers} (hidden states 0..{n_layers}), "
                         f"got {layer!r}")
    return int(layer) % count


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """(B, T, D) hidden state and (B, T) mask -> (B, D) float32."""
    if pooling == "cls":
        return np.ascontiguousarray(hidden[:, 0], dtype=np.float32)
    if pooling == "mean":
        weights = mask.astype(np.float32)[:, :, None]  # (B, T, 1)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def embed(
    classifier,
    texts: Sequence[str],
    *,
    pooling: str = "cls",
    layer: int = -1,
    normalize: bool = False,
    truncation: bool = True,
    max_length: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """One float32 vector (n, dim) per text, in input order; see :meth:`distilsent.Classifier.embed`.
    ``progress`` shows the texts done on stderr (see :mod:`distilsent.progress`).

    The texts' first ``max_length`` tokens (or the model's) are read, one sequence each, and no scores are
    asked for: a backend that gives hidden states without logits runs once per batch all the same."""
    wanted = Embeddings(pooling, layer, normalize)
    job = classifier.prepare(texts, Reading(), truncation=truncation, max_length=max_length, embeddings=wanted)
    with ProgressBar("embed", unit="text", enabled=progress) as bar:
        vectors = classifier.run_embedded(job.sequences, wanted, batch_size=batch_size, progress=bar)[1]
    return normalize_rows(vectors) if normalize else vectors


def output_format(path: str | os.PathLike) -> str:
    """``npy`` or ``parquet`` from the file extension, else an InputError (checked before any work)."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InputError(f"{path}: write embeddings to a .npy or .parquet file")
    return fmt


def write_embeddings(vectors: np.ndarray, path: str | os.PathLike, texts: Sequence[str] | None = None) -> Path:
    """Write (n, dim) vectors to ``.npy`` (float32 array) or ``.parquet`` (one row per text: ``text`` when
    given, and ``embedding``, a fixed-size list of float32), chosen by the file extension."""
    path = Path(path)
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        np.save(path, np.asarray(vectors, dtype=np.float32))
        return path
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("writing Parquet needs pyarrow: pip install 'distilsent[train]'") from None
    flat = pa.array(np.asarray(vectors, dtype=np.float32).reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    columns = {"text": pa.array(list(texts), pa.string())} if texts is not None else {}
    pq.write_table(pa.table({**columns, "embedding": column}), path)
    return path


__all__ = ["POOLINGS", "Embeddings", "embed", "layer_index", "normalize_rows", "pool", "write_embeddings"]
