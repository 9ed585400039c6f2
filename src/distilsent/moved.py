"""The module paths of the flat layout (distilsent 0.1), still importable: ``import distilsent.calibration``
gives the module that is now :mod:`distilsent.training.calibration`, the same object, so code and README
examples written against the old paths keep working.

``distilsent.data``, ``distilsent.model`` and ``distilsent.bulk`` are packages now; ``data`` and ``model`` hand
on their old module's names themselves.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util

MOVED = {
    "backends": "runtime.backends",
    "batcher": "serving.batcher",
    "cache": "runtime.cache",
    "calibration": "training.calibration",
    "checkpoint": "model.checkpoint",
    "classifier": "runtime.classifier",
    "config": "model.config",
    "convert": "model.convert",
    "distill": "training.distill",
    "embeddings": "runtime.embeddings",
    "evaluate": "training.evaluate",
    "explain": "insight.explain",
    "export": "runtime.export",
    "fewshot": "training.fewshot",
    "long_text": "runtime.long_text",
    "lora": "model.lora",
    "modelcard": "model.modelcard",
    "onnx_graph": "runtime.onnx_graph",
    "probe": "insight.probe",
    "ray_engine": "bulk.ray_engine",
    "service": "serving.app",
    "service_settings": "serving.settings",
    "tables": "data.tables",
    "tokenizer": "model.tokenizer",
    "train": "training.train",
    "ui": "serving.page",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        """The module ran when it was imported under its own name."""


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds ``distilsent.<old>`` for every old path in :data:`MOVED`, after the regular finders found nothing."""

    def find_spec(self, fullname: str, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != "distilsent" or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(f"distilsent.{MOVED[name]}"))
