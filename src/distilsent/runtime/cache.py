"""The cache of ONNX graphs that the ONNX backend builds from checkpoints' weights: what it holds, clearing it.

A checkpoint without its own ``model.onnx`` has its graph built on first use and kept under
``$DISTILSENT_CACHE`` (default ``~/.cache/distilsent``) in ``onnx/<sha256 of config and weights>/``: about
90 MB for the embedded default model, about 260 MB for DistilBERT-base. A new or retrained checkpoint gets
a new entry and nothing is ever removed on its own; ``distilsent cache list`` shows the entries and
``distilsent cache clear`` removes them (they are rebuilt on next use).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .onnx_graph import ONNX_NAME, SOURCE_NAME, cache_dir

# Only directories named like a digest are ever removed, so a DISTILSENT_CACHE pointed at a directory that
# holds anything else (a home directory, by mistake) loses nothing but graphs.
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CacheEntry:
    path: Path  # the entry's directory
    bytes: int
    built: float  # when the graph was written, seconds since the epoch
    checkpoint: str | None  # the checkpoint directory it was built from, when recorded


def _graphs() -> list[Path]:
    root = cache_dir() / "onnx"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _DIGEST.fullmatch(p.name))


def cache_entries() -> list[CacheEntry]:
    """Every cached graph, oldest first."""
    entries = []
    for directory in _graphs():
        graph = directory / ONNX_NAME
        if not graph.is_file():  # a build in progress or interrupted: nothing usable yet
            continue
        source = directory / SOURCE_NAME
        entries.append(CacheEntry(
            path=directory,
            bytes=sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()),
            built=graph.stat().st_mtime,
            checkpoint=source.read_text(encoding="utf-8").strip() if source.is_file() else None,
        ))
    return sorted(entries, key=lambda e: e.built)


def clear_cache() -> tuple[int, int]:
    """Remove every cached graph; returns (entries removed, bytes freed)."""
    removed = freed = 0
    for directory in _graphs():
        size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        shutil.rmtree(directory, ignore_errors=True)
        if not directory.exists():
            removed += 1
            freed += size
    return removed, freed
