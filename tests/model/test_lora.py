"""LoRA: adapters start as a no-op, merge exactly, train through ``train --lora-rank`` into an ordinary checkpoint."""

import json
import random

import pytest
import torch

from distilsent.data.examples import Example
from distilsent.errors import InputError
from distilsent.model.checkpoint import load_model
from distilsent.model.lora import TARGETS, LoRALinear, add_lora, merge_lora, merged_copy, trainable_parameters
from distilsent.training.train import TrainConfig, initial_model, train
from tests.conftest import TINY


def batch(tokenizer):
    ids, mask = tokenizer.pad(tokenizer.encode(["a great film", "the worst plot and the actors were bad", "fun"], 32))
    return torch.from_numpy(ids), torch.from_numpy(mask)


def test_adapters_start_as_the_base_model_and_count_their_parameters(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    ids, mask = batch(tokenizer)
    with torch.no_grad():
        before = model(ids, mask)
    trainable = add_lora(model, rank=4, alpha=8)
    d, f, layers, labels = TINY["dim"], TINY["hidden_dim"], TINY["n_layers"], 2
    per_block = 4 * 4 * (d + d) + 4 * (d + f) + 4 * (f + d)  # q, k, v, out: (d x d); lin1 (f x d); lin2 (d x f)
    head = d * d + d + labels * d + labels
    assert trainable == trainable_parameters(model) == layers * per_block + head
    assert not model.distilbert.embeddings.word_embeddings.weight.requires_grad
    assert not model.distilbert.transformer.layer[0].attention.q_lin.base.weight.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), before, atol=0, rtol=0)  # B = 0 at the start


def test_merged_model_equals_the_adapter_model(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    add_lora(model, rank=3, alpha=5, targets=("q_lin", "v_lin", "lin1"))
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_(std=0.5)  # a trained-looking, far from zero update
    ids, mask = batch(tokenizer)
    with torch.no_grad():
        adapted = model(ids, mask)
        base = model.distilbert.transformer.layer[0].attention.q_lin.base.weight.clone()
        saved = merged_copy(model)  # what train saves while the adapters keep training
        assert (saved(ids, mask) - adapted).abs().max() < 1e-5
    assert any(isinstance(m, LoRALinear) for m in model.modules())
    assert not any(isinstance(m, LoRALinear) for m in saved.modules())
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    with torch.no_grad():
        merged = model(ids, mask)
    assert (adapted - merged).abs().max() < 1e-5
    change = model.distilbert.transformer.layer[0].attention.q_lin.weight.detach() - base
    assert torch.linalg.matrix_rank(change) == 3 and change.abs().max() > 0.01
    fresh, _ = load_model(tiny_model_dir)
    assert set(model.state_dict()) == set(fresh.state_dict())  # the names of an ordinary checkpoint


@pytest.mark.parametrize("rank, targets", [(0, TARGETS), (2, ()), (2, ("q_lin", "query"))])
def test_bad_settings_are_input_errors(tiny_model_dir, rank, targets):
    model, _ = load_model(tiny_model_dir)
    with pytest.raises(InputError):
        add_lora(model, rank=rank, targets=targets)


def dataset(n, seed):
    rng = random.Random(seed)
    words = {0: ["bad", "awful", "boring", "worst"], 1: ["good", "great", "fun", "best"]}
    filler = ["the", "film", "movie", "plot", "was", "very", "a", "it"]
    out = []
    for _ in range(n):
        label = rng.randrange(2)
        text = rng.choices(filler, k=rng.randrange(1, 8)) + [rng.choice(words[label])]
        rng.shuffle(text)
        out.append(Example(" ".join(text), label))
    return out


def test_lora_training_saves_a_merged_low_rank_update(tiny_model_dir, tmp_path):
    config = TrainConfig(learning_rate=5e-3, batch_size=16, warmup_steps=2, epochs=2, max_length=32, eval_every=0,
                         seed=3, lora_rank=2, lora_targets=("q_lin", "lin2"), precision="fp32")
    model, tokenizer = initial_model(str(tiny_model_dir), ("NEGATIVE", "POSITIVE"), seed=3)
    summary = train(model, tokenizer, dataset(96, 0), dataset(32, 1), config, tmp_path, progress=False)
    assert summary["trainable_parameters"] == trainable_parameters(model) < model.num_parameters() // 5
    trained, _ = load_model(tmp_path / "best")  # strict load: plain parameter names, no adapters
    base, _ = load_model(tiny_model_dir)
    for name, weight in trained.state_dict().items():
        change = weight - base.state_dict()[name]
        if ".q_lin.weight" in name or ".lin2.weight" in name:
            assert 0 < torch.linalg.matrix_rank(change) <= 2, name
        elif name.startswith("distilbert."):
            assert torch.equal(change, torch.zeros_like(change)), name  # frozen, biases included
    assert not torch.equal(trained.classifier.weight, base.classifier.weight)


def test_train_verb_with_lora(tiny_model_dir, tmp_path, capsys):
    from distilsent.cli import main

    lines = ["sentence\tlabel"] + [f"{e.text}\t{e.label}" for e in dataset(64, 0)]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    code = main(["train", str(tmp_path / "train.tsv"), "--out", str(tmp_path / "run"), "--model", str(tiny_model_dir),
                 "--epochs", "1", "--lora-rank", "4", "--lora-alpha", "16", "--lora-targets", "q_lin,v_lin",
                 "--quiet"])
    assert code == 0
    json.loads(capsys.readouterr().out)
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert '"lora_rank": 4' in card and '"lora_alpha": 16.0' in card
    load_model(tmp_path / "run" / "best")
    assert main(["train", str(tmp_path / "train.tsv"), "--out", str(tmp_path / "bad"), "--model",
                 str(tiny_model_dir), "--lora-rank", "2", "--lora-targets", "query", "--quiet"]) == 1
    assert "LoRA targets" in capsys.readouterr().err
