"""Inference backends: the :class:`Backend` protocol, its two implementations and the registry that names them.

Backends import their heavy dependency when they are loaded, so choosing one never pulls in another.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from ..errors import CheckpointError, InputError, MissingDependencyError
from ..model.checkpoint import load_weights
from ..model.config import DistilBertConfig
from .onnx_graph import hidden_state_name, onnx_path, with_hidden_states


class Backend(Protocol):
    """Runs a DistilBERT classifier on one padded batch.

    The contract every backend relies on and :func:`check_batch` enforces before each call:

    - ``ids`` and ``mask`` are int64 arrays of the same shape (B, T), B >= 1;
    - padding is on the right: each row of ``mask`` is ones, then zeros, and starts with a one (the
      ONNX graph takes the number of ones as each row's length, so a left-padded row would be read wrong);
    - T <= ``config.max_position_embeddings`` (there is no position embedding beyond it);
    - ``logits`` returns float32 (B, ``config.num_labels``), row i for row i of the batch.

    Optional: ``hidden_states(ids, mask, layers)`` returns the float32 (B, T, D) hidden state of each of
    ``layers`` (0 = embeddings ... ``n_layers``), for ``Classifier.embed`` and ``Classifier.hidden_states``;
    ``logits_and_hidden_states(ids, mask, layers)`` returns ``(logits, hidden states)`` of one run of the
    encoder, so that scores and embeddings asked for together cost one pass (both built-in backends have it;
    ``Classifier`` prefers it to ``hidden_states``).
    """

    name: ClassVar[str]

    @classmethod
    def load(cls, directory: Path, config: DistilBertConfig, threads: int | None = None) -> "Backend":
        """The backend of a checkpoint directory, using at most ``threads`` threads (None: the runtime's choice)."""

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """int64 ``ids`` and ``mask`` (B, T), right-padded -> float32 logits (B, labels)."""


def check_batch(ids: np.ndarray, mask: np.ndarray, max_positions: int) -> None:
    """Raise :class:`InputError` unless ``ids``/``mask`` meet the :class:`Backend` contract (O(B*T), no copies)."""
    if ids.dtype != np.int64 or mask.dtype != np.int64 or ids.ndim != 2 or ids.shape != mask.shape:
        raise InputError(
            f"a batch must be int64 ids and mask of one (B, T) shape, got {ids.dtype} {ids.shape} "
            f"and {mask.dtype} {mask.shape}"
        )
    if ids.shape[1] > max_positions:
        raise InputError(f"a batch of {ids.shape[1]} tokens is longer than the model's {max_positions} positions")
    # Right padding: no row goes from padding (0) back to a token (1), and every row has its first token.
    if ids.size and (not mask[:, 0].all() or (mask[:, 1:] > mask[:, :-1]).any()):
        raise InputError("a batch must be padded on the right (attention_mask ones, then zeros); got left padding "
                         "or holes")


def require_torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "the torch backend needs PyTorch: pip install 'distilsent[torch]' (or use backend='onnx')"
        ) from None
    return torch


class TorchBackend:
    """The reference backend: the PyTorch model in ``inference_mode``, on the device its weights are on."""

    name = "torch"

    def __init__(self, model, threads: int | None = None):
        torch = require_torch()
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.model = model.eval()

    @classmethod
    def load(cls, directory: Path, config: DistilBertConfig, threads: int | None = None) -> "TorchBackend":
        require_torch()
        return cls(load_weights(directory, config), threads)

    def _tensors(self, ids: np.ndarray, mask: np.ndarray) -> tuple:
        device = next(self.model.parameters()).device
        return self._torch.from_numpy(ids).to(device), self._torch.from_numpy(mask).to(device)

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(*self._tensors(ids, mask))
        return out.float().cpu().numpy()

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray, layers) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            states = self.model.distilbert(*self._tensors(ids, mask))
        return [states[i].float().cpu().numpy() for i in layers]

    def logits_and_hidden_states(self, ids: np.ndarray, mask: np.ndarray, layers) -> tuple[np.ndarray, list]:
        """The encoder run once; the head reads its last state, as :meth:`logits` does."""
        torch = self._torch
        with torch.inference_mode():
            logits, states = self.model.forward_with_hidden_states(*self._tensors(ids, mask))
        return logits.float().cpu().numpy(), [states[i].float().cpu().numpy() for i in layers]


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "the onnx backend needs ONNX Runtime: pip install onnxruntime (or use backend='torch')"
        ) from None
    return onnxruntime


class OnnxBackend:
    """ONNX Runtime on the CPU: one session per model, reused by every call; no torch needed."""

    name = "onnx"

    def __init__(self, path: Path, threads: int | None = None):
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # 0 lets ONNX Runtime use one thread per physical core, which beats counting hyper-threads.
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1  # the graph is a chain: parallel branches would only add threads
        # No memory arena: it grows to the largest batch ever run and keeps it (16 x 512 tokens left the
        # default model's process at 719 MiB instead of 240); without it, SST-2 dev ran as fast here.
        options.enable_cpu_mem_arena = False
        self.path, self.options = path, options
        self._hidden_session = None  # made on the first hidden_states call
        self._hidden_lock = threading.Lock()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types, not exported stably
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path} is not a loadable ONNX model ({first_line})") from None

    @classmethod
    def load(cls, directory: Path, config: DistilBertConfig, threads: int | None = None) -> "OnnxBackend":
        require_onnxruntime()
        return cls(onnx_path(directory, config), threads)

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run(("logits",), {"input_ids": ids, "attention_mask": mask})[0]

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray, layers) -> list[np.ndarray]:
        """From a second session over the same graph with the hidden states as outputs (see
        :func:`distilsent.runtime.onnx_graph.with_hidden_states`), made on first use: no torch needed."""
        names = [hidden_state_name(i) for i in layers]
        return self._hidden().run(names, {"input_ids": ids, "attention_mask": mask})

    def logits_and_hidden_states(self, ids: np.ndarray, mask: np.ndarray, layers) -> tuple[np.ndarray, list]:
        """The hidden-state session keeps ``logits`` among its outputs: one run gives both."""
        names = ["logits", *(hidden_state_name(i) for i in layers)]
        logits, *states = self._hidden().run(names, {"input_ids": ids, "attention_mask": mask})
        return logits, states

    def _hidden(self):
        with self._hidden_lock:
            if self._hidden_session is None:
                import onnxruntime as ort

                model = with_hidden_states(self.path)
                self._hidden_session = ort.InferenceSession(
                    model.SerializeToString(), self.options, providers=["CPUExecutionProvider"]
                )
        return self._hidden_session


# Every backend by the name users pass (``Classifier.load(backend=...)``, ``--backend``); the first is the default.
BACKENDS: dict[str, type[Backend]] = {"onnx": OnnxBackend, "torch": TorchBackend}
