"""Which examples each epoch of a run trains on, and in which batches; the same for the same seed and epoch.

An epoch draws each source's examples by its weight (:func:`epoch_pool`: every example of a source before any
repeats), then cuts them into batches of similar length in random order (:func:`epoch_batches`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..data.examples import Example
from ..errors import InputError
from .config import TrainConfig


def source_ids(examples: Sequence[Example], weights: dict[str, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """``(source index of each example, weight of each source)`` for :func:`epoch_pool`; one source of weight 1
    when no weights are given. A weight for a source no example has, or a source without a weight, is an error."""
    if not weights:
        return np.zeros(len(examples), dtype=np.int64), np.ones(1)
    names = list(dict.fromkeys(e.source for e in examples))
    missing = [str(n) for n in names if n not in weights]
    unknown = [str(n) for n in weights if n not in names]
    if missing or unknown:
        raise InputError(f"sampling weights: no weight for {', '.join(missing) or '-'}; "
                         f"no examples from {', '.join(unknown) or '-'}")
    for name, w in weights.items():
        if not w > 0 or not math.isfinite(w):
            raise InputError(f"sampling weights: {name} has weight {w}, expected a positive number")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[e.source] for e in examples]), np.array([float(weights[n]) for n in names])


def epoch_size(source: np.ndarray, weight: np.ndarray) -> int:
    """Examples drawn per epoch: each source's count times its weight, rounded."""
    return int(sum(round(w * c) for w, c in zip(weight, np.bincount(source, minlength=len(weight)))))


def epoch_pool(source: np.ndarray, weight: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The example indices of one epoch: ``round(weight x count)`` of each source, every example of a source
    before any repeats, drawn without replacement within each pass (the same for the same seed and epoch)."""
    if len(weight) == 1 and weight[0] == 1.0:
        return np.arange(len(source))
    rng = np.random.default_rng([seed, epoch, 1])
    pool = []
    for k, w in enumerate(weight):
        members = np.flatnonzero(source == k)
        want = round(w * len(members))
        passes = [rng.permutation(members) for _ in range(-(-want // len(members)))]
        pool.append(np.concatenate(passes)[:want] if passes else members[:0])
    return np.concatenate(pool)


def epoch_batches(lengths: np.ndarray, config: TrainConfig, epoch: int) -> list[np.ndarray]:
    """This epoch's batches of example indices; the same for the same seed and epoch.

    With length grouping, a random chunk of ``group_size`` batches is sorted by length and cut, so a
    batch holds texts of similar length (little padding) while the batch order stays random.
    """
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(len(lengths))
    size = config.batch_size
    if not config.group_by_length:
        return [order[i : i + size] for i in range(0, len(order), size)]
    batches = []
    chunk = size * config.group_size
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i : i + size] for i in range(0, len(part), size))
    return [batches[i] for i in rng.permutation(len(batches))]
