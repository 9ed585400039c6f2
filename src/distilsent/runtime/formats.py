"""The shapes of answers: scores (n, labels) as the Hugging Face ``text-classification`` pipeline or Text
Embeddings Inference (TEI) returns them, and the ``NEUTRAL`` label of an unsure binary prediction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError

STYLES = ("hf", "tei")
LEGACY = object()  # top_k not given: the pipeline's original one-best shape
NEUTRAL = "NEUTRAL"  # the label of a binary prediction less sure than neutral_below


def format_results(scores: np.ndarray, labels: Sequence[str], *, style: str = "hf", top_k: Any = LEGACY,
                   single: bool = False, neutral_below: float | None = None) -> list:
    """Scores (n, labels) as the Hugging Face pipeline (``style="hf"``, see :func:`format_scores`) or
    Text Embeddings Inference (``style="tei"``: every label best first as ``{"score", "label"}``, one
    list per text, or that list itself when ``single``) returns them.

    ``neutral_below`` (binary models, one-best answers): a text whose best score is below it gets the
    label ``NEUTRAL``, with that best score."""
    if neutral_below is not None:
        results = format_results(scores, labels, style=style, top_k=top_k, single=single)
        return _neutral(results, labels, neutral_below, style, top_k)
    if style == "hf":
        return format_scores(scores, labels, top_k, single)
    if style != "tei":
        raise InputError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if top_k is not LEGACY:
        raise InputError("top_k is a Hugging Face parameter; TEI returns every label")
    ranked = format_scores(scores, labels, None)
    tei = [[{"score": d["score"], "label": d["label"]} for d in row] for row in ranked]  # TEI's key order
    return tei[0] if single else tei


def _neutral(results: list, labels: Sequence[str], threshold: float, style: str, top_k: Any) -> list:
    if len(labels) != 2:
        raise InputError(f"neutral_below is for binary models; this one has {len(labels)} labels")
    if style != "hf" or top_k not in (LEGACY, 1):
        raise InputError("neutral_below answers one label per text: use it without top_k (or top_k=1)")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise InputError(f"neutral_below must be a probability between 0 and 1, got {threshold!r}")
    for result in results:
        best = result if isinstance(result, dict) else result[0]
        if best["score"] < threshold:
            best["label"] = NEUTRAL
    return results


def format_scores(scores: np.ndarray, labels: Sequence[str], top_k: Any = LEGACY, single: bool = False) -> list:
    """Scores (n, labels) in the pipeline's shapes: the one best label per text when ``top_k`` is not
    given, else every label (``None``) or the ``top_k`` best, sorted by score (a stable sort: ties keep
    label order), one list per text, or that list itself for a single text."""
    if top_k is LEGACY:
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
