"""Data: reading and writing tables (CSV, TSV, JSON lines, Parquet) and labelled examples with their splits.

May import :mod:`distilsent.model` (for label names) and the foundation; nothing above. The names of
:mod:`.examples` are importable from here, as they were from the flat layout's ``distilsent.data``.
"""

from .examples import (
    DROP,
    LABELS,
    Example,
    Source,
    columns,
    parse_label,
    parse_label_map,
    pick_column,
    read_examples,
    read_sources,
    read_texts,
    source_weights,
    split_examples,
)

__all__ = ["DROP", "LABELS", "Example", "Source", "columns", "parse_label", "parse_label_map", "pick_column",
           "read_examples", "read_sources", "read_texts", "source_weights", "split_examples"]
