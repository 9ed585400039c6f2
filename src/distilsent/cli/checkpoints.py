"""The verbs that write or tidy model files: ``convert`` (a BERT checkpoint into this layout), ``export`` (an
ONNX model directory) and ``cache`` (the ONNX graphs built from checkpoints)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from ..data.examples import read_examples
from ..errors import MissingDependencyError
from ..model.checkpoint import save_model
from ..model.config import LABELS
from ..model.convert import convert_bert
from ..model.modelcard import model_card
from ..runtime.cache import cache_entries, clear_cache
from ..runtime.export import PARITY_TEXTS, export
from .options import add_verb, data_format, label_names, quiet

CONVERT_EXAMPLES = """examples:
  distilsent convert ./all-MiniLM-L6-v2 ./minilm-distilbert
  distilsent convert ./bert-base-uncased ./bert-as-distilbert --labels neg,neu,pos"""


def add_convert(verbs) -> None:
    p = add_verb(verbs, "convert", "turn a BERT checkpoint into a DistilBERT-layout classifier (exact encoder)",
                 CONVERT_EXAMPLES)
    p.add_argument("bert_dir", metavar="BERT_DIR")
    p.add_argument("out", metavar="OUT_DIR")
    p.add_argument("--labels", type=label_names, default=LABELS)
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained head")
    p.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> None:
    model, tokenizer = convert_bert(args.bert_dir, args.labels, args.seed)
    card = model_card(Path(args.out).name, model.config,
                      extra=f"Converted from the BERT checkpoint `{args.bert_dir}`; the classification head is "
                            "untrained.")
    save_model(model, tokenizer, args.out, card=card)
    print(json.dumps({"model": str(args.out), "parameters": model.num_parameters()}))


EXPORT_EXAMPLES = """examples:
  distilsent export default ./onnx-default --parity-data ../shared/data/sst2/dev.tsv
  distilsent export ./my-model ./my-model-int8 --int8 && distilsent predict --model ./my-model-int8 "great movie"
  distilsent export default ./default-int8 --int8"""


def add_export(verbs) -> None:
    p = add_verb(verbs, "export", "write a self-contained ONNX model directory (graph, tokenizer, config, card)",
                 EXPORT_EXAMPLES)
    p.add_argument("model", metavar="MODEL", help="checkpoint directory or Hub id; 'default' for the embedded model")
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (created if missing)")
    p.add_argument("--int8", action="store_true",
                   help="dynamic int8 quantization of the encoder's weights (embeddings stay float32)")
    p.add_argument("--parity-data", metavar="FILE", default=None,
                   help="labelled file (TSV/CSV/JSONL/Parquet) to compare the export with the PyTorch model on: "
                        "max |logit difference|, label agreement, accuracy (default: a dozen built-in sentences)")
    data_format(p)
    quiet(p)
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    texts, labels = list(PARITY_TEXTS), None
    if args.parity_data:
        try:  # a comparison asked for that cannot run is an error, not a skipped line after the export
            import torch  # noqa: F401
        except ImportError:
            raise MissingDependencyError("--parity-data compares the export with the PyTorch model, which needs "
                                         "torch: pip install 'distilsent[torch]'") from None

        examples = read_examples(args.parity_data, fmt=args.format)
        texts, labels = [e.text for e in examples], [e.label for e in examples]
    result = export(args.model, args.out_dir, int8=args.int8, texts=texts, labels=labels, progress=not args.quiet)
    print(f"wrote {args.out_dir}")
    if result is not None:
        print(result.report())
    else:
        print("parity: skipped, the PyTorch reference needs torch: pip install 'distilsent[torch]'")


CACHE_EXAMPLES = """examples:
  distilsent cache list                                # one JSON line per cached ONNX graph
  distilsent cache clear                               # remove them all; rebuilt on next use
  DISTILSENT_CACHE=/big/disk distilsent predict "fine"  # keep the cache elsewhere"""


def add_cache(verbs) -> None:
    p = add_verb(verbs, "cache", "list or clear the ONNX graphs built from checkpoints' weights "
                                 "($DISTILSENT_CACHE, default ~/.cache/distilsent)", CACHE_EXAMPLES)
    p.add_argument("action", choices=("list", "clear"), help="list: one JSON line per graph; clear: remove them")
    p.set_defaults(run=run_cache)


def run_cache(args: argparse.Namespace) -> None:
    if args.action == "clear":
        removed, freed = clear_cache()
        print(json.dumps({"removed": removed, "bytes": freed}))
        return
    for entry in cache_entries():
        built = datetime.fromtimestamp(entry.built, timezone.utc).isoformat(timespec="seconds")
        print(json.dumps({"path": str(entry.path), "bytes": entry.bytes, "built": built,
                          "checkpoint": entry.checkpoint}))
