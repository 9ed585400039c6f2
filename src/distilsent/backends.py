"""Inference backends. Each one has a single method: ``logits(ids, mask) -> (B, labels) float32 array``.

Backends import their heavy dependency when they are created, so choosing one never pulls in another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from .config import DistilBertConfig
from .errors import MissingDependencyError


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
