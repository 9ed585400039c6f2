"""Why did a text get its label: per-word attributions for the predicted label.

Two methods, both in units of the predicted label's probability, so their numbers compare:

- ``occlusion`` (any backend, ONNX by default, no torch): a word's attribution is how much the
  probability drops when that word is left out of the text. n + 1 classifications for n words.
- ``ig`` (integrated gradients, PyTorch): the gradient of the probability with respect to the word
  embeddings, integrated along the straight line from a baseline (every word piece replaced by
  ``[PAD]``; ``[CLS]``/``[SEP]`` kept) to the text. The attributions add up to
  P(text) - P(baseline) up to the integration error, which is reported as ``delta``.

WordPiece pieces are summed back into the words that the tokenizer's own pre-tokenizer (BERT: split on
whitespace and punctuation) finds, so ``"unwatchable!"`` is two words, ``unwatchable`` and ``!``, however
many pieces the first one takes.
"""

from __future__ import annotations

import dataclasses
import html
import os
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..model.checkpoint import load_model
from ..runtime.backends import require_torch
from ..runtime.classifier import Classifier

METHODS = ("occlusion", "ig")
IG_STEPS = 50
IG_TOKENS_PER_PASS = 4096  # interpolation steps x tokens run in one forward/backward pass


@dataclasses.dataclass(frozen=True)
class Word:
    text: str
    start: int  # character offsets into the explained text
    end: int
    attribution: float  # toward the predicted label: positive supports it, negative argues against it


@dataclasses.dataclass(frozen=True)
class Explanation:
    text: str
    label: str
    score: float  # probability of ``label``
    method: str
    words: tuple[Word, ...]
    delta: float | None = None  # ig only: sum of attributions - (P(text) - P(baseline))

    def to_dict(self) -> dict:
        out = {
            "text": self.text, "label": self.label, "score": self.score, "method": self.method,
            "words": [w.text for w in self.words], "attributions": [w.attribution for w in self.words],
            "spans": [[w.start, w.end] for w in self.words],
        }
        if self.delta is not None:
            out["delta"] = self.delta
        return out

    def _pieces(self):
        """(text between words, word or None) pairs that rebuild the original text exactly."""
        position = 0
        for word in self.words:
            yield self.text[position:word.start], word
            position = word.end
        yield self.text[position:], None

    def _strength(self, word: Word) -> float:
        peak = max((abs(w.attribution) for w in self.words), default=0.0)
        return abs(word.attribution) / peak if peak > 0 else 0.0

    def terminal(self, colour: bool = True) -> str:
        """The text with each word's background green (supports the label) or red (against it), deeper
        for stronger attributions; without colour, each word followed by its attribution."""
        parts = []
        for gap, word in self._pieces():
            parts.append(gap)
            if word is None:
                continue
            if not colour:
                parts.append(f"{word.text}[{word.attribution:+.3f}]")
                continue
            r, g, b = _rgb(word.attribution, self._strength(word))
            parts.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{word.text}\x1b[0m")
        header = f"{self.label} {self.score:.4f} ({self.method})"
        return header + "\n" + "".join(parts)

    def html_fragment(self) -> str:
        spans = []
        for gap, word in self._pieces():
            spans.append(html.escape(gap))
            if word is not None:
                r, g, b = _rgb(word.attribution, self._strength(word))
                spans.append(
                    f'<span style="background:rgb({r},{g},{b})" title="{word.attribution:+.4f}">'
                    f"{html.escape(word.text)}</span>"
                )
        return "".join(spans)

    def html(self) -> str:
        """A self-contained page (inline style, no scripts, nothing fetched)."""
        rows = "".join(
            f"<tr><td>{html.escape(w.text)}</td><td>{w.attribution:+.4f}</td></tr>"
            for w in sorted(self.words, key=lambda w: -abs(w.attribution))
        )
        return (
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>distilsent explain</title>"
            "<style>body{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}"
            ".text{font-size:1.3rem;line-height:2.2rem}.text span{padding:.1rem .15rem;border-radius:.2rem}"
            "table{border-collapse:collapse;margin-top:1.5rem}td{padding:.15rem .8rem;border-bottom:1px solid #ddd}"
            "</style></head><body>"
            f"<h1>{html.escape(self.label)} <small>{self.score:.4f}</small></h1>"
            f"<p>Attributions by {'integrated gradients' if self.method == 'ig' else 'occlusion'} toward "
            f"{html.escape(self.label)}: <span style=\"background:rgb(120,200,120)\">green supports it</span>, "
            "<span style=\"background:rgb(235,120,120)\">red argues against it</span>.</p>"
            f"<p class=\"text\">{self.html_fragment()}</p>"
            f"<table><tr><th>word</th><th>attribution</th></tr>{rows}</table></body></html>\n"
        )


def _rgb(attribution: float, strength: float) -> tuple[int, int, int]:
    """White blended toward green (support) or red (against) by ``strength`` in [0, 1]."""
    target = (120, 200, 120) if attribution >= 0 else (235, 120, 120)
    return tuple(round(255 + (c - 255) * strength) for c in target)  # type: ignore[return-value]


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Words as the BERT pre-tokenizer cuts them (whitespace and punctuation), with character spans."""
    from tokenizers.pre_tokenizers import BertPreTokenizer

    return [(word, start, end) for word, (start, end) in BertPreTokenizer().pre_tokenize_str(text)]


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise InputError(f"explain takes a text (a string), got {type(text).__name__}")
    if not text.strip():
        raise InputError("explain needs a non-empty text")
    return text


def occlusion(classifier, text: str) -> Explanation:
    """Leave each word out in turn; its attribution is the drop in the predicted label's probability."""
    text = _check_text(text)
    words = split_words(text)
    variants = [text] + [text[:start] + text[end:] for _, start, end in words]
    probabilities = classifier.scores(classifier.logits(variants), "softmax")
    label = int(probabilities[0].argmax())
    full = float(probabilities[0, label])
    drops = full - probabilities[1:, label]
    return Explanation(
        text, classifier.labels[label], full, "occlusion",
        tuple(Word(w, s, e, float(d)) for (w, s, e), d in zip(words, drops)),
    )


class GradientExplainer:
    """Integrated gradients over a PyTorch DistilBERT classifier (``model.py``), tokenizer and labels.

    The interpolated embeddings replace the word-embedding layer's output through a forward hook, so the
    model itself is used as it is.
    """

    def __init__(self, model, tokenizer, labels: Sequence[str], *, steps: int = IG_STEPS):
        self.torch = require_torch()
        if steps < 1:
            raise InputError(f"steps must be positive, got {steps}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.steps = steps
        self.max_length = min(tokenizer.max_length, model.config.max_position_embeddings)

    @classmethod
    def load(cls, path_or_id=None, *, threads: int | None = None, steps: int = IG_STEPS) -> "GradientExplainer":
        torch = require_torch()
        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = load_model(path_or_id)
        return cls(model, tokenizer, model.config.labels, steps=steps)

    def _ids(self, words: list[tuple[str, int, int]]) -> tuple[list[int], list[int]]:
        """Ids of ``[CLS] pieces [SEP]`` (cut to the maximum length) and the word index of each piece
        (-1 for the special tokens)."""
        pieces = self.tokenizer.encode([w for w, _, _ in words]) if words else []
        ids, owners = [self.tokenizer.cls_id], [-1]
        for index, sequence in enumerate(pieces):
            for piece in sequence[1:-1]:  # drop each word's own [CLS] and [SEP]
                ids.append(piece)
                owners.append(index)
        ids, owners = ids[: self.max_length - 1], owners[: self.max_length - 1]
        return ids + [self.tokenizer.sep_id], owners + [-1]

    def __call__(self, text: str) -> Explanation:
        torch = self.torch
        text = _check_text(text)
        words = split_words(text)
        ids, owners = self._ids(words)
        input_ids = torch.tensor([ids])  # (1, T)
        special = torch.tensor([o < 0 for o in owners])
        baseline_ids = torch.where(special, input_ids[0], self.tokenizer.pad_id)[None]  # (1, T)
        embedding = self.model.distilbert.embeddings.word_embeddings
        with torch.no_grad():
            probabilities = torch.softmax(self.model(input_ids), -1)[0]
            label = int(probabilities.argmax())
            baseline_p = float(torch.softmax(self.model(baseline_ids), -1)[0, label])
            x = embedding(input_ids)  # (1, T, D)
            base = embedding(baseline_ids)  # (1, T, D)
        alphas = (torch.arange(self.steps, dtype=torch.float32) + 0.5) / self.steps  # midpoint rule
        gradient = torch.zeros_like(x[0])  # (T, D)
        chunk = max(1, IG_TOKENS_PER_PASS // len(ids))
        for first in range(0, self.steps, chunk):
            a = alphas[first:first + chunk, None, None]  # (S, 1, 1)
            scaled = (base + a * (x - base)).requires_grad_(True)  # (S, T, D)
            # the default binds this pass's tensor (the hook is removed before the next pass)
            handle = embedding.register_forward_hook(lambda module, inputs, output, scaled=scaled: scaled)
            try:
                p = torch.softmax(self.model(input_ids.expand(len(a), -1)), -1)[:, label]  # (S,)
            finally:
                handle.remove()
            gradient += torch.autograd.grad(p.sum(), scaled)[0].sum(0)
        per_token = ((x - base)[0] * gradient / self.steps).sum(-1)  # (T,)
        per_word = np.zeros(len(words))
        for owner, value in zip(owners, per_token.tolist()):
            if owner >= 0:
                per_word[owner] += value
        full = float(probabilities[label])
        return Explanation(
            text, self.labels[label], full, "ig",
            tuple(Word(w, s, e, float(a)) for (w, s, e), a in zip(words, per_word)),
            delta=float(per_token.sum()) - (full - baseline_p),
        )


def explain(
    text: str,
    model: str | os.PathLike | None = None,
    *,
    method: str = "occlusion",
    threads: int | None = None,
    steps: int = IG_STEPS,
) -> Explanation:
    """Explain one text with a checkpoint (``None``: the embedded default model): occlusion on ONNX
    Runtime, or integrated gradients (``method="ig"``) on PyTorch.

    >>> e = explain("a gripping, beautiful film")
    >>> e.label, [(w.text, round(w.attribution, 3)) for w in e.words]
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "ig":
        return GradientExplainer.load(model, threads=threads, steps=steps)(text)
    return occlusion(Classifier.load(model, threads=threads), text)


__all__ = ["Explanation", "GradientExplainer", "METHODS", "Word", "explain", "occlusion", "split_words"]
