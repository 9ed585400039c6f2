"""Texts longer than the model's window: which tokens to run, and how to combine per-window results.

Three strategies, chosen per call (``Classifier(..., long_text=...)``):

- ``"truncate"``: the first ``max_length`` tokens (what the Hugging Face pipeline does).
- ``"head_tail"``: the first ``head`` and the last ``max_length - 2 - head`` tokens of the text, joined;
  for reviews the verdict is often at the end (Sun et al. 2019, "How to fine-tune BERT for text
  classification", found 128 + 382 the best single 512-token window on IMDb). ``head`` defaults to a
  quarter of the window: 128 of 510 at 512 positions.
- ``"window"``: windows of ``window`` tokens (default ``max_length``) starting every ``stride`` tokens,
  the last one aligned to the end of the text, so every token is seen and every window is full; each
  window is one more sequence for the classifier's batches, and the per-window scores are aggregated per
  text: ``"mean"`` (weighted by the tokens each window holds) or ``"max"`` (the most confident window).
  Windows narrower than the model's limit suit a model trained on short texts (the default model was
  trained on SST-2 at 128 tokens, and reads reviews best as 128-token windows: benchmarks/long_text.py).

A model may carry the reading it was made for (:class:`Reading`, stored in its ``config.json``); it is then the
default of ``Classifier.load`` and of every verb, and explicit arguments still win.

Everything here works on token id lists that start with ``[CLS]`` and end with ``[SEP]``, as
``Tokenizer.encode(..., truncation=False)`` returns them, and on numpy score arrays; no model is run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, InputError, WindowLimitError

STRATEGIES = ("truncate", "head_tail", "window")
AGGREGATIONS = ("mean", "max")
UNLIMITED = 2**31 - 1  # "no length limit" for the tokenizer, when the whole text must be planned


def check_strategy(strategy: str, aggregate: str = "mean") -> None:
    if strategy not in STRATEGIES:
        raise InputError(f"long_text must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if aggregate not in AGGREGATIONS:
        raise InputError(f"aggregate must be one of {', '.join(AGGREGATIONS)}, got {aggregate!r}")


@dataclass(frozen=True)
class Reading:
    """How texts longer than the model's window are read: a strategy with its window, stride, head and
    aggregation, as the ``Classifier`` arguments of the same names take them (None: their defaults)."""

    long_text: str = "truncate"
    window: int | None = None
    stride: int | None = None
    head: int | None = None
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        check_strategy(self.long_text, self.aggregate)
        for name in ("window", "stride", "head"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise InputError(f"{name} must be a whole number of tokens, got {value!r}")
        if self.window is not None and self.window < 3:
            raise InputError(f"window must leave room for [CLS], a token and [SEP], got {self.window}")

    def override(self, **parts) -> "Reading":
        """This reading with the ``parts`` that are given (not None) in its place: how a call's ``long_text``,
        ``window``, ``stride``, ``head`` and ``aggregate`` go over a classifier's reading, one by one."""
        return dataclasses.replace(self, **{k: v for k, v in parts.items() if v is not None})

    def options(self) -> dict:
        """The ``Classifier`` keyword arguments of this reading."""
        return {"long_text": self.long_text, "window": self.window, "stride": self.stride, "head": self.head,
                "aggregate": self.aggregate}

    def to_dict(self) -> dict:
        """What ``config.json`` stores: the strategy and the settings that are not left to their defaults."""
        return {k: v for k, v in self.options().items() if v is not None}

    @classmethod
    def from_dict(cls, data) -> "Reading":
        if not isinstance(data, dict) or set(data) - set(cls().options()):
            raise ConfigError(f"config: the distilsent reading must be an object with keys among "
                              f"{', '.join(cls().options())}, got {data!r}")
        try:
            return cls(**data)
        except InputError as e:
            raise ConfigError(f"config: the distilsent reading: {e}") from None


def truncate(ids: Sequence[int], max_length: int) -> list[int]:
    """The first ``max_length`` tokens, still ending with the text's final ``[SEP]``."""
    if len(ids) <= max_length:
        return list(ids)
    return list(ids[: max_length - 1]) + [ids[-1]]


def default_head(max_length: int) -> int:
    """A quarter of the window's content tokens: 128 (and 382 for the tail) at 512 positions."""
    return round((max_length - 2) / 4)


def head_tail(ids: Sequence[int], max_length: int, head: int) -> list[int]:
    """``[CLS]`` + the first ``head`` + the last ``max_length - 2 - head`` content tokens + ``[SEP]``.

    ``head`` is clipped to the room there is, so ``head >= max_length - 2`` is plain truncation and
    ``head=0`` keeps only the end of the text.
    """
    if head < 0:
        raise InputError(f"head must be zero or more tokens, got {head}")
    if len(ids) <= max_length:
        return list(ids)
    room = max_length - 2
    head = min(head, room)
    tail = room - head
    content = ids[1:-1]
    return [ids[0], *content[:head], *(content[len(content) - tail:] if tail else []), ids[-1]]


def window_starts(content_length: int, width: int, stride: int) -> list[int]:
    """Start offsets (in content tokens) of windows of ``width`` tokens every ``stride`` tokens; the
    last window is moved back to end with the text, so no window is short and no token is missed."""
    if width < 1:
        raise InputError(f"windows need room for at least one token, got a width of {width}")
    if not 1 <= stride <= width:
        # A stride wider than the window would skip the tokens between windows.
        raise InputError(f"stride must be between 1 and the window's {width} tokens, got {stride}")
    if content_length <= width:
        return [0]
    starts = list(range(0, content_length - width + 1, stride))
    if starts[-1] + width < content_length:
        starts.append(content_length - width)
    return starts


@dataclass(frozen=True)
class WindowPlan:
    """The sequences to run for a list of texts, which text each one belongs to, and where it starts."""

    sequences: list[list[int]]
    owner: np.ndarray  # (n_sequences,) index of the text each sequence came from
    starts: np.ndarray  # (n_sequences,) offset of its first token in the text (after [CLS]); 0 but for windows

    @classmethod
    def one_each(cls, sequences: list[list[int]]) -> "WindowPlan":
        return cls(sequences, np.arange(len(sequences)), np.zeros(len(sequences), dtype=np.int64))


def plan(
    sequences: Sequence[Sequence[int]],
    strategy: str,
    max_length: int,
    *,
    stride: int | None = None,
    head: int | None = None,
    window: int | None = None,
) -> WindowPlan:
    """The sequences to run for full-length token ids: one per text, except ``"window"`` which gives
    as many as each text needs. ``stride`` defaults to half a window, ``head`` to a quarter of it;
    ``window`` (the tokens of one window with ``[CLS]`` and ``[SEP]``) to ``max_length``, and a wider one is
    cut to it, as ``max_length`` itself is cut to the model's positions."""
    check_strategy(strategy)
    if max_length < 3:
        raise InputError(f"max_length must leave room for [CLS], a token and [SEP], got {max_length}")
    if strategy == "truncate":
        return WindowPlan.one_each([truncate(s, max_length) for s in sequences])
    if strategy == "head_tail":
        head = default_head(max_length) if head is None else head
        return WindowPlan.one_each([head_tail(s, max_length, head) for s in sequences])
    width, step = _window_shape(max_length, stride, window)
    out: list[list[int]] = []
    owner: list[int] = []
    starts: list[int] = []
    for i, s in enumerate(sequences):
        content = s[1:-1]
        offsets = window_starts(len(content), width, step)
        out.extend([s[0], *content[start:start + width], s[-1]] for start in offsets)
        owner.extend([i] * len(offsets))
        starts.extend(offsets)
    return WindowPlan(out, np.asarray(owner, dtype=np.int64), np.asarray(starts, dtype=np.int64))


def _window_shape(max_length: int, stride: int | None, window: int | None) -> tuple[int, int]:
    """(content tokens per window, tokens between window starts) as :func:`plan` cuts them."""
    if window is not None and window < 3:
        raise InputError(f"window must leave room for [CLS], a token and [SEP], got {window}")
    width = min(window or max_length, max_length) - 2
    step = stride if stride is not None else width // 2
    if not 1 <= step <= width:
        # A stride wider than the window would skip the tokens between windows.
        raise InputError(f"stride must be between 1 and the window's {width} tokens, got {step}")
    return width, step


def window_token_limit(max_windows: int, max_length: int, *, stride: int | None = None,
                       window: int | None = None) -> int:
    """The most tokens (``[CLS]`` and ``[SEP]`` included) that :func:`plan` reads as at most ``max_windows``
    windows: the first window holds ``width`` content tokens, each further one ``stride`` more."""
    width, step = _window_shape(max_length, stride, window)
    return width + (max_windows - 1) * step + 2


def count_windows(lengths: Sequence[int], max_length: int, *, stride: int | None = None,
                  window: int | None = None) -> int:
    """How many windows :func:`plan` makes of the texts with these token counts (``[CLS]`` and ``[SEP]``
    included) that it reads as more than one, counted without building them."""
    width, step = _window_shape(max_length, stride, window)
    total = 0
    for length in lengths:
        content = length - 2
        if content > width:
            starts = (content - width) // step + 1
            total += starts + ((starts - 1) * step + width < content)  # the last window, aligned to the end
    return total


def over_window_limit(tokenizer, texts: Sequence[str], max_windows: int, max_length: int, *,
                      stride: int | None = None, window: int | None = None) -> list[int]:
    """Indices of the ``texts`` that ``"window"`` reading would cut into more than ``max_windows`` windows.

    Told from a bounded prefix of each text (the tokenizer stops once it has one token more than the limit),
    before anything is built: tokenizing a 10 MB line whole takes ~20 s and 1.6 GB, its ~35,000 windows
    then minutes of model time."""
    limit = window_token_limit(max_windows, max_length, stride=stride, window=window)
    return [i for i, ids in enumerate(tokenizer.encode(texts, limit + 1)) if len(ids) > limit]


def read(tokenizer, texts: Sequence[str], strategy: str, max_length: int, *, stride: int | None = None,
         head: int | None = None, window: int | None = None, truncation: bool = True,
         window_limit: int | None = None) -> WindowPlan:
    """Tokenize ``texts`` and :func:`plan` them: ``"truncate"`` reads a bounded prefix of each text (and with
    ``truncation=False`` refuses a longer one), the other strategies need every token of it.

    ``window_limit``: with ``"window"``, the most windows the texts read as several may make in all; more is
    a :class:`~distilsent.errors.WindowLimitError`, raised before any window is built."""
    check_strategy(strategy)
    if strategy == "truncate":
        return WindowPlan.one_each(tokenizer.encode(texts, max_length, truncation))
    ids = tokenizer.encode(texts, UNLIMITED)
    if window_limit is not None and strategy == "window":
        windows = count_windows([len(s) for s in ids], max_length, stride=stride, window=window)
        if windows > window_limit:
            raise WindowLimitError(windows, window_limit)
    return plan(ids, strategy, max_length, stride=stride, head=head, window=window)


def aggregate(scores: np.ndarray, window_plan: WindowPlan, n_texts: int, how: str = "mean") -> np.ndarray:
    """Per-text scores (n_texts, labels) from per-window ``scores`` (n_sequences, labels).

    ``"mean"``: the average over a text's windows weighted by the tokens each window holds (a short
    single window still counts fully for its text). ``"max"``: the scores of the window whose top
    score is highest, i.e. the one the model is most sure about.
    """
    check_strategy("window", how)
    scores = np.asarray(scores)
    owner = window_plan.owner
    if len(owner) == n_texts and np.array_equal(owner, np.arange(n_texts)):
        return scores.copy()
    out = np.zeros((n_texts, scores.shape[1]), dtype=np.float64)
    if how == "mean":
        weights = np.array([len(s) for s in window_plan.sequences], dtype=np.float64)
        np.add.at(out, owner, scores * weights[:, None])
        totals = np.bincount(owner, weights=weights, minlength=n_texts)
        out /= totals[:, None]
    else:
        out = scores[most_confident(scores, window_plan, n_texts)].astype(np.float64)
    return out.astype(scores.dtype)


def most_confident(scores: np.ndarray, window_plan: WindowPlan, n_texts: int) -> np.ndarray:
    """(n_texts,) the index of each text's window whose top score is highest (what ``"max"`` reports)."""
    owner = window_plan.owner
    # Sorted by text, then by confidence: each text's most confident window is the last of its run.
    order = np.lexsort((np.asarray(scores).max(axis=1), owner))
    return order[np.cumsum(np.bincount(owner, minlength=n_texts)) - 1]
