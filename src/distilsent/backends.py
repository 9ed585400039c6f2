"""Inference backends. Each one has a single method: ``logits(ids, mask) -> (B, labels) float32 array``.

Backends import their heavy dependency when they are created, so choosing one never pulls in another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from .config import DistilBertConfig
from .errors import CheckpointError, MissingDependencyError


class Backend(Protocol):
    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """int64 ``ids`` and ``mask`` (B, T) -> float32 logits (B, labels)."""


def require_torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "the torch backend needs PyTorch: pip install 'distilsent[torch]' (or use backend='onnx')"
        ) from None
    return torch


class TorchBackend:
    """The reference backend: the PyTorch model in ``inference_mode``."""

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
        from .checkpoint import load_weights

        return cls(load_weights(directory, config), threads)

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(ids), torch.from_numpy(mask))
        return out.float().numpy()


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
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types, not exported stably
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path} is not a loadable ONNX model ({first_line})") from None

    @classmethod
    def load(cls, directory: Path, config: DistilBertConfig, threads: int | None = None) -> "OnnxBackend":
        require_onnxruntime()
        from .export import onnx_path

        return cls(onnx_path(directory, config), threads)

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run(("logits",), {"input_ids": ids, "attention_mask": mask})[0]
