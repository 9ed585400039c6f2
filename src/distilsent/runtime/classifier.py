"""``Classifier``: texts in, ``{"label", "score"}`` out, in the shapes of the Hugging Face pipeline.

Every caller (the library's ``clf(texts)`` and ``logits``, bulk scoring, evaluation, calibration, the
distillation teacher, the export's parity check, embeddings) runs one chain, in three parts, so that they
differ only in how they feed it (an async server runs ``prepare`` in a thread and awaits its batcher):

    prepare(texts, reading) -> Job: the texts tokenized and read (cut, head+tail or windows): the sequences
    runner(job.sequences)   -> logits: ``run`` (planned batches), a cross-request batcher, the teacher's cache
    complete(job, logits)   -> Inference: scores per window and per text (windows aggregated by the reading)

``infer(texts, reading)`` is the three together for synchronous callers, with a pluggable ``runner``, a
progress observer (``(done, total)`` in sequences) and, with ``embeddings=``, each text's embedding from
the same pass (one backend call per batch gives logits and the hidden state: ``run_embedded``). A text
read as several windows gets the token-weighted mean of its windows' vectors. ``reading=None`` is the
classifier's own (the model's, see :func:`model_reading`). ``clf(texts)`` is ``format(infer(texts).scores)``.

Below the runner, the steps are public too:

    encode(texts)        -> token id lists with [CLS]/[SEP], cut to the model's length
    plan(lengths)        -> batches of indices under a size and padded-token budget (the one planner)
    run_batch(sequences) -> one right-padded batch through the backend (its contract checked): logits
    run(sequences)       -> plan + run_batch over any number of sequences, logits in input order
    scores(logits)       -> softmax / sigmoid / raw
    format(scores)       -> Hugging Face pipeline or TEI shapes
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ..errors import CheckpointError, InputError
from ..model.checkpoint import default_model_dir, load_config, load_tokenizer, resolve
from ..model.config import DistilBertConfig
from ..model.tokenizer import Tokenizer
from .backends import BACKENDS, Backend, check_batch
from .batching import plan_batches
from .embeddings import Embeddings, embed, layer_index, normalize_rows, pool
from .formats import LEGACY, format_results
from .inference import Inference, Job, Observer, Runner
from .long_text import Reading, WindowPlan, check_strategy
from .long_text import read as read_windows

FUNCTIONS = ("softmax", "sigmoid", "none")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


class Classifier:
    """Sentiment (or any sequence) classifier over a DistilBERT checkpoint.

    >>> clf = Classifier.load()              # the embedded default model
    >>> clf("a gripping, beautiful film")
    [{'label': 'POSITIVE', 'score': 0.99...}]
    """

    def __init__(
        self,
        backend: Backend,
        tokenizer: Tokenizer,
        config: DistilBertConfig,
        *,
        name: str = "",
        # Measured with ONNX Runtime on 2 cores (benchmarks/speed.py): batches of ~2k padded tokens keep
        # activations in cache and beat larger ones by 10-15% on SST-2 dev and on 256-512-token texts.
        batch_size: int = 32,
        max_batch_tokens: int = 2048,
        max_length: int | None = None,
        long_text: str = "truncate",
        stride: int | None = None,
        head: int | None = None,
        aggregate: str = "mean",
        window: int | None = None,
    ):
        if batch_size < 1 or max_batch_tokens < 1:
            raise InputError("batch_size and max_batch_tokens must be positive")
        check_strategy(long_text, aggregate)
        # Defaults of every call: how texts longer than max_length are read (see distilsent.runtime.long_text).
        self.long_text, self.stride, self.head, self.aggregate = long_text, stride, head, aggregate
        self.window = window
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

        The long-text reading is the model's own when its ``config.json`` carries one (see
        :func:`model_reading`) unless ``long_text`` is given; ``options`` that are None are not given.

        ``backend`` is a name in :data:`distilsent.runtime.backends.BACKENDS`: ``"onnx"`` (ONNX Runtime, no torch)
        runs the directory's ``model.onnx`` (what ``distilsent export`` writes, float32 or int8), else a
        graph built from the weights once and cached; ``"torch"`` runs the PyTorch reference model.
        """
        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        directory = resolve(path_or_id)
        config = load_config(directory)
        tokenizer = load_tokenizer(directory, config)
        loaded = BACKENDS[backend].load(directory, config, threads)
        name = "distilsent-default" if directory == default_model_dir() else str(path_or_id)
        given = {k: v for k, v in options.items() if v is not None}
        if "long_text" not in given:  # the model's own reading, under whatever parts of one were given
            given = {**model_reading(config).options(), **given}
        return cls(loaded, tokenizer, config, name=name, **{k: v for k, v in given.items() if v is not None})

    @property
    def reading(self) -> Reading:
        """How this classifier reads long texts by default (see :mod:`distilsent.runtime.long_text`)."""
        return Reading(self.long_text, self.window, self.stride, self.head, self.aggregate)

    @property
    def labels(self) -> list[str]:
        return self.config.labels

    # ------------------------------------------------------------------ the steps

    def encode(
        self, texts: Sequence[str], *, truncation: bool = True, max_length: int | None = None
    ) -> list[list[int]]:
        """Token ids of each text with ``[CLS]``/``[SEP]``, at most ``max_length`` (default: the model's)
        tokens; with ``truncation=False`` a longer text is an :class:`InputError`."""
        limit = min(max_length or self.max_length, self.config.max_position_embeddings)
        return self.tokenizer.encode(texts, limit, truncation)

    def windows(
        self,
        texts: Sequence[str],
        *,
        long_text: str | None = None,
        stride: int | None = None,
        head: int | None = None,
        truncation: bool = True,
        max_length: int | None = None,
        window: int | None = None,
    ) -> WindowPlan:
        """The sequences to run for ``texts`` under a ``long_text`` strategy (default: the classifier's):
        one per text for ``"truncate"`` (:meth:`encode`, so ``truncation=False`` still refuses long texts)
        and ``"head_tail"``, one per window of ``window`` tokens (default ``max_length``) every ``stride``
        for ``"window"``. The arguments go over the classifier's reading one by one (see :meth:`prepare`)."""
        reading = self.reading.override(long_text=long_text, stride=stride, head=head, window=window)
        return self.prepare(texts, reading, truncation=truncation, max_length=max_length).windows

    def plan(
        self, lengths: Sequence[int], *, batch_size: int | None = None, max_batch_tokens: int | None = None
    ) -> list[list[int]]:
        """Indices of each batch for sequences of these lengths (see :func:`plan_batches`)."""
        return plan_batches(lengths, batch_size or self.batch_size, max_batch_tokens or self.max_batch_tokens)

    def run_batch(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits (B, labels) float32 of one batch of id lists, padded on the right to the longest.

        The backend contract (:class:`distilsent.runtime.backends.Backend`) is checked on the way in and out.
        """
        if not sequences:
            return np.empty((0, self.config.num_labels), dtype=np.float32)
        ids, mask = self._pad(sequences)
        return self._checked(self.backend.logits(ids, mask), len(sequences))

    def run(
        self, sequences: Sequence[Sequence[int]], *, batch_size: int | None = None, progress: Observer | None = None
    ) -> np.ndarray:
        """Logits (n, labels) float32 of any number of id lists, in input order, batched by :meth:`plan`:
        the default runner of :meth:`infer`. ``progress(done, total)`` hears of each batch."""
        out = np.empty((len(sequences), self.config.num_labels), dtype=np.float32)
        for batch in self._batches(sequences, batch_size, progress):
            out[batch] = self.run_batch([sequences[i] for i in batch])
        return out

    def _batches(self, sequences: Sequence[Sequence[int]], batch_size: int | None, progress: Observer | None):
        """The planned batches' indices; ``progress`` hears ``(0, total)`` first, then of each batch done."""
        done, total = 0, len(sequences)
        if progress is not None:
            progress(done, total)
        for batch in self.plan([len(s) for s in sequences], batch_size=batch_size):
            yield batch
            done += len(batch)
            if progress is not None:
                progress(done, total)

    def _checked(self, logits: np.ndarray, rows: int) -> np.ndarray:
        if logits.shape != (rows, self.config.num_labels):
            raise CheckpointError(
                f"the {getattr(self.backend, 'name', 'custom')} backend returned logits of shape {logits.shape} "
                f"for {rows} texts and {self.config.num_labels} labels"
            )
        return np.asarray(logits, dtype=np.float32)

    # ------------------------------------------------------------------ representations (see embeddings.py)

    def run_hidden(
        self, sequences: Sequence[Sequence[int]], layers: Sequence[int]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """The float32 (B, T, D) hidden state of each of ``layers`` (0 = embeddings ... ``n_layers``) for
        one batch of id lists, padded on the right as in :meth:`run_batch`, and the batch's (B, T) mask."""
        _, states, mask = self._forward(sequences, layers, with_logits=False)
        return states, mask

    def run_embedded(
        self,
        sequences: Sequence[Sequence[int]],
        embeddings: Embeddings,
        *,
        batch_size: int | None = None,
        progress: Observer | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Logits (n, labels) and pooled vectors (n, dim), float32, in input order, of any number of id
        lists, from one backend call per batch of :meth:`plan`. The logits are None when the backend gives
        hidden states only (no ``logits_and_hidden_states``): :meth:`infer` then runs them apart."""
        index = layer_index(embeddings.layer, self.config.n_layers)
        together = hasattr(self.backend, "logits_and_hidden_states")
        logits = np.empty((len(sequences), self.config.num_labels), dtype=np.float32) if together else None
        vectors = np.empty((len(sequences), self.config.dim), dtype=np.float32)
        for batch in self._batches(sequences, batch_size, progress):
            batch_logits, (hidden,), mask = self._forward([sequences[i] for i in batch], (index,), together)
            vectors[batch] = pool(hidden, mask, embeddings.pooling)
            if together:
                logits[batch] = batch_logits
        return logits, vectors

    def _forward(
        self, sequences: Sequence[Sequence[int]], layers: Sequence[int], with_logits: bool
    ) -> tuple[np.ndarray | None, list[np.ndarray], np.ndarray]:
        """One padded batch through the encoder: (logits or None, the hidden states of ``layers``, mask)."""
        together = getattr(self.backend, "logits_and_hidden_states", None) if with_logits else None
        hidden_states = getattr(self.backend, "hidden_states", None)
        if together is None and hidden_states is None:
            raise InputError(f"the {getattr(self.backend, 'name', 'custom')} backend does not give hidden states")
        ids, mask = self._pad(sequences)
        if together is None:
            return None, [np.asarray(h, dtype=np.float32) for h in hidden_states(ids, mask, list(layers))], mask
        logits, states = together(ids, mask, list(layers))
        return self._checked(logits, len(sequences)), [np.asarray(h, dtype=np.float32) for h in states], mask

    def _pad(self, sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) ids and mask padded on the right, checked against the backend contract."""
        ids, mask = self.tokenizer.pad(sequences)
        check_batch(ids, mask, self.config.max_position_embeddings)
        return ids, mask

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        pooling: str = "cls",
        layer: int = -1,
        normalize: bool = False,
        truncation: bool = True,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """One float32 vector per text, (n, dim), in input order, batched like classification.

        ``pooling``: ``"cls"`` (the first token, what the head reads) or ``"mean"`` (over real tokens);
        ``layer``: which of the ``n_layers + 1`` hidden states (0 = embeddings, -1 = the last block);
        ``normalize``: unit L2 length (cosine similarity becomes a dot product). For embeddings with the
        scores, in one pass and under any reading, see :meth:`infer`.
        """
        texts = [texts] if isinstance(texts, str) else texts
        return embed(self, texts, pooling=pooling, layer=layer, normalize=normalize, truncation=truncation,
                     max_length=max_length, batch_size=batch_size)

    def hidden_states(
        self, texts: str | Sequence[str], *, truncation: bool = True, max_length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every hidden state of ``texts`` as one batch: float32 (n_layers + 1, n, T, D), embeddings first
        (as ``transformers``' ``output_hidden_states``), and the int64 (n, T) attention mask; rows are
        padded on the right to the longest text, and padding positions carry no meaning."""
        texts = [texts] if isinstance(texts, str) else texts
        sequences = self.encode(texts, truncation=truncation, max_length=max_length)
        if not sequences:
            return (np.zeros((self.config.n_layers + 1, 0, 0, self.config.dim), dtype=np.float32),
                    np.zeros((0, 0), dtype=np.int64))
        states, mask = self.run_hidden(sequences, range(self.config.n_layers + 1))
        return np.stack(states), mask

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

    def format(
        self,
        scores: np.ndarray,
        *,
        style: Literal["hf", "tei"] = "hf",
        top_k: Any = LEGACY,
        single: bool = False,
        neutral_below: float | None = None,
    ) -> list:
        """Scores (n, labels) as the Hugging Face pipeline or Text Embeddings Inference returns them, with
        ``NEUTRAL`` below ``neutral_below`` (see :func:`distilsent.runtime.formats.format_results`)."""
        return format_results(scores, self.labels, style=style, top_k=top_k, single=single,
                              neutral_below=neutral_below)

    # ------------------------------------------------------------------ the whole chain

    def prepare(
        self,
        texts: Sequence[str],
        reading: Reading | None = None,
        *,
        truncation: bool = True,
        max_length: int | None = None,
        embeddings: str | Embeddings | None = None,
        window_limit: int | None = None,
    ) -> Job:
        """The :class:`~distilsent.runtime.inference.Job` of ``texts`` read as ``reading`` (None: the
        classifier's own): tokenized and cut to ``max_length`` (default: the model's) tokens per sequence,
        one sequence per text, or one per window. Runs no model; thread-safe.

        ``truncation=False`` refuses (:class:`InputError`) a text over ``max_length`` under ``"truncate"``;
        ``window_limit`` refuses (:class:`~distilsent.errors.WindowLimitError`) texts that ``"window"`` would
        read as more windows than that in all (counting only texts read as several), told from token counts
        before any window is built. ``embeddings`` (a pooling name or :class:`Embeddings`) are asked for
        with the scores."""
        reading = self.reading if reading is None else reading
        wanted = Embeddings.of(embeddings)
        if wanted is not None:
            layer_index(wanted.layer, self.config.n_layers)  # a bad layer is told before any work
        limit = min(max_length or self.max_length, self.config.max_position_embeddings)
        windows = read_windows(self.tokenizer, texts, reading.long_text, limit, stride=reading.stride,
                               head=reading.head, window=reading.window, truncation=truncation,
                               window_limit=window_limit)
        return Job(len(texts), reading, windows, wanted)

    def complete(
        self, job: Job, logits: np.ndarray, function_to_apply: str | None = None, *, vectors: np.ndarray | None = None
    ) -> Inference:
        """The :class:`~distilsent.runtime.inference.Inference` of a job from its sequences' ``logits``
        (and pooled ``vectors``, when its embeddings were asked for): scores by ``function_to_apply``
        (default: the model's), a text's windows combined by its reading's aggregation (its embedding:
        their token-weighted mean)."""
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (len(job.sequences), self.config.num_labels):
            raise InputError(f"the runner returned logits of shape {logits.shape} for {len(job.sequences)} "
                             f"sequences and {self.config.num_labels} labels")
        window_scores = self.scores(logits, function_to_apply)
        embeddings = None
        if job.embeddings is not None:
            if vectors is None:
                raise InputError("the job asks for embeddings: pass each sequence's vector with its logits")
            embeddings = job.per_text(vectors)
            embeddings = normalize_rows(embeddings) if job.embeddings.normalize else embeddings
        return Inference(job.per_text(window_scores, job.reading.aggregate), job.reading, job.windows, logits,
                         window_scores, embeddings)

    def infer(
        self,
        texts: Sequence[str],
        reading: Reading | None = None,
        *,
        runner: Runner | None = None,
        progress: Observer | None = None,
        embeddings: str | Embeddings | None = None,
        function_to_apply: str | None = None,
        truncation: bool = True,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> Inference:
        """:meth:`prepare`, the ``runner`` (default: :meth:`run`, the planned batches of ``batch_size``),
        :meth:`complete`: scores (and ``embeddings``, a pooling name or :class:`Embeddings`, from the same
        backend calls) of ``texts`` read as ``reading`` (None: the classifier's own).

        ``progress(done, total)`` hears of the sequences run: ``(0, total)`` first, then after each batch
        (after the runner returns, for a ``runner`` of the caller's). Embeddings come from the classifier's
        own batches, so they take no ``runner``."""
        if function_to_apply is not None and function_to_apply not in FUNCTIONS:
            raise InputError(f"function_to_apply must be one of {', '.join(FUNCTIONS)}, got {function_to_apply!r}")
        if embeddings is not None and runner is not None:
            raise InputError("embeddings come from the classifier's own batches: ask for them without a runner")
        job = self.prepare(texts, reading, truncation=truncation, max_length=max_length, embeddings=embeddings)
        sequences, vectors = job.sequences, None
        if job.embeddings is not None:
            logits, vectors = self.run_embedded(sequences, job.embeddings, batch_size=batch_size, progress=progress)
            if logits is None:  # a backend without logits_and_hidden_states: a second pass
                logits = self.run(sequences, batch_size=batch_size)
        elif runner is None:
            logits = self.run(sequences, batch_size=batch_size, progress=progress)
        else:
            if progress is not None:
                progress(0, len(sequences))
            logits = runner(sequences)
            if progress is not None:
                progress(len(sequences), len(sequences))
        return self.complete(job, logits, function_to_apply, vectors=vectors)

    def logits(
        self,
        texts: Sequence[str],
        *,
        truncation: bool = True,
        max_length: int | None = None,
        batch_size: int | None = None,
        long_text: str | None = None,
        stride: int | None = None,
        head: int | None = None,
        aggregate: str | None = None,
        window: int | None = None,
    ) -> np.ndarray:
        """Raw logits (n, labels) float32, in input order.

        With several windows per text (``long_text="window"``) there is no single logit vector: a text gets
        the log of its aggregated softmax probabilities, so that ``softmax`` of it gives them back.
        """
        reading = self.reading.override(long_text=long_text, window=window, stride=stride, head=head,
                                        aggregate=aggregate)
        result = self.infer(texts, reading, function_to_apply="softmax", truncation=truncation,
                            max_length=max_length, batch_size=batch_size)
        if result.one_each:  # one sequence per text: its logits are the text's
            return result.window_logits
        return np.log(np.maximum(result.scores, np.finfo(np.float32).tiny)).astype(np.float32)

    def __call__(
        self,
        inputs: str | Sequence[str],
        *,
        top_k: Any = LEGACY,
        function_to_apply: str | None = None,
        truncation: bool = True,
        max_length: int | None = None,
        batch_size: int | None = None,
        long_text: str | None = None,
        stride: int | None = None,
        head: int | None = None,
        aggregate: str | None = None,
        window: int | None = None,
        neutral_below: float | None = None,
        return_windows: bool = False,
    ) -> list | tuple[list, list]:
        """Classify like ``pipeline("text-classification")``.

        - ``clf("text")`` -> ``[{"label", "score"}]``; ``clf([a, b])`` -> ``[{...}, {...}]``
        - ``top_k=None`` (every label) or ``top_k=k``: a list of dicts sorted by score per text;
          for a single string that list itself, for a list of texts a list of such lists.
        - ``long_text``: ``"truncate"`` (the first ``max_length`` tokens), ``"head_tail"`` (the first
          ``head`` and the last ``max_length - 2 - head`` tokens) or ``"window"`` (every window of
          ``window`` tokens, default ``max_length``, one every ``stride`` tokens, scores aggregated per
          text by ``aggregate``: ``"mean"`` weighted by window tokens, or ``"max"``, the most confident
          window); see :mod:`distilsent.runtime.long_text`. Each goes over the classifier's reading
          (:attr:`reading`, the model's own unless it was loaded with another); :meth:`infer` takes a whole
          :class:`Reading` instead.
        - ``neutral_below=p`` (binary models): the label is ``NEUTRAL`` when the best score is below ``p``.
        - ``return_windows=True``: ``(results, windows)``, ``windows[i]`` listing text i's sequences as
          ``{"start", "tokens", "label", "score"}`` (``start``: offset of the first token in the text).
        """
        if top_k is not LEGACY and top_k is not None:
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
                raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
        single = isinstance(inputs, str)
        if not single and not isinstance(inputs, (list, tuple)):
            raise InputError(f"inputs must be a string or a list of strings, got {type(inputs).__name__}")
        reading = self.reading.override(long_text=long_text, window=window, stride=stride, head=head,
                                        aggregate=aggregate)
        result = self.infer([inputs] if single else list(inputs), reading, function_to_apply=function_to_apply,
                            truncation=truncation, max_length=max_length, batch_size=batch_size)
        results = self.format(result.scores, top_k=top_k, single=single, neutral_below=neutral_below)
        return (results, result.window_results(self.labels)) if return_windows else results


def model_reading(config: DistilBertConfig) -> Reading:
    """The reading a model carries in its config (``{"distilsent": {"reading": {...}}}``), or the pipeline's
    truncation for a model that carries none."""
    data = config.distilsent.get("reading")
    return Reading() if data is None else Reading.from_dict(data)
