"""The default model's MPNet teacher (scripts/mpnet_teacher.py), on a tiny random MPNet: it trains in
distilsent's loop, saves a directory transformers loads, and its logits are transformers' own."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distilsent.train import TrainConfig, train

from .test_train import FILLER, NEGATIVE, POSITIVE, dataset

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import mpnet_teacher as mt  # noqa: E402

LABELS = ("NEGATIVE", "POSITIVE")


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory) -> Path:
    """A random 2-layer MPNet with a word-level vocabulary and MPNet's <s> ... </s> template."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    directory = tmp_path_factory.mktemp("mpnet")
    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + FILLER + POSITIVE + NEGATIVE
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    backend.save(str(directory / "tokenizer.json"))
    torch.manual_seed(0)
    config = transformers.MPNetConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=66,
                                      pad_token_id=vocab["<pad>"])
    transformers.MPNetModel(config).save_pretrained(directory)
    return directory


def test_the_teacher_trains_in_distilsents_loop_and_loads_in_transformers(tiny_mpnet, tmp_path):
    tokenizer = mt.tokenizer(tiny_mpnet, max_length=64)
    ids = tokenizer.encode(["great film"])[0]
    assert (ids[0], ids[-1]) == (tokenizer.cls_id, tokenizer.sep_id) and tokenizer.pad_id == 1
    model = mt.initial(tiny_mpnet, LABELS, seed=3)
    config = TrainConfig(learning_rate=2e-3, batch_size=16, warmup_steps=5, epochs=3, max_length=32, eval_every=0,
                         seed=7, group_size=4, threads=1)
    train(model, tokenizer, dataset(320, 0), None, config, tmp_path / "run", progress=False)
    best = tmp_path / "run" / "best"

    from distilsent.evaluate import evaluate

    assert evaluate(mt.classifier(best, 32), dataset(100, 1))["accuracy"] >= 0.9
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(best).eval()
    assert type(theirs).__name__ == "MPNetForSequenceClassification" and theirs.config.id2label[1] == "POSITIVE"
    texts = [e.text for e in dataset(40, 2)] + ["great " * 40 + "awful"]  # one text over the 32 tokens
    ours = mt.logits(best, texts, 32, long_text="head_tail", head=4, parts=tmp_path / "parts")
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(best / "tokenizer.json"))
    cut = [ids[:1] + ids[1:5] + ids[-27:] if len(ids) > 32 else ids
           for ids in hf_tokenizer(texts)["input_ids"]]  # head_tail by hand: <s>, 4 first, 26 last, </s>
    assert len(cut[-1]) == 32 and cut[-1][-2] == hf_tokenizer.convert_tokens_to_ids("awful")
    with torch.no_grad():
        expected = np.concatenate([theirs(input_ids=torch.tensor([ids])).logits.numpy() for ids in cut])
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["0.npy"]
