import json
import random

import numpy as np
import pytest
import torch

import distilsent.training.train as train_module
from distilsent.data.examples import Example
from distilsent.errors import DistilsentError, DistilsentWarning, InputError
from distilsent.model.checkpoint import load_model
from distilsent.training.train import PRESETS, TrainConfig, epoch_batches, initial_model, learning_rate, train

POSITIVE = ["good", "great", "fun", "best", "love"]
NEGATIVE = ["bad", "awful", "boring", "worst", "hate"]
FILLER = ["the", "film", "movie", "plot", "story", "actors", "was", "very", "a", "it"]


def dataset(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        label = rng.randrange(2)
        words = rng.choices(FILLER, k=rng.randrange(1, 12)) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        examples.append(Example(" ".join(words), label))
    return examples


FAST = TrainConfig(learning_rate=2e-3, batch_size=16, warmup_steps=5, epochs=3, max_length=32,
                   eval_every=10, save_every=4, seed=7, group_size=4, precision="fp32",
                   device="cpu")  # the same on every machine


def fresh(tiny_model_dir):
    return initial_model(str(tiny_model_dir), ("NEGATIVE", "POSITIVE"), seed=FAST.seed)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_learns_keeps_best_and_writes_metrics(tiny_model_dir, tmp_path):
    model, tokenizer = fresh(tiny_model_dir)
    summary = train(model, tokenizer, dataset(320, 0), dataset(100, 1), FAST, tmp_path, progress=False,
                    card=lambda config, metrics: f"# card\naccuracy {metrics['accuracy']}\n")
    assert summary["steps"] == 60
    assert summary["best"]["accuracy"] >= 0.9
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [10, 20, 30, 40, 50, 60]
    assert json.loads((tmp_path / "metrics.json").read_text())["best"] == summary["best"]
    best, _ = load_model(tmp_path / "best")
    assert f"accuracy {summary['best']['accuracy']}" in (tmp_path / "best" / "README.md").read_text()
    from distilsent import Classifier

    clf = Classifier.load(tmp_path / "best")
    assert [r["label"] for r in clf(["a great film", "the worst plot"])] == ["POSITIVE", "NEGATIVE"]


def test_head_tail_training_learns_a_verdict_at_the_end_of_long_texts(tiny_model_dir, tmp_path):
    def reviews(n, seed):  # 30 filler words, then the only word that tells the label
        rng = random.Random(seed)
        return [Example(" ".join(rng.choices(FILLER, k=30) + [rng.choice(POSITIVE if label else NEGATIVE)]), label)
                for label in (rng.randrange(2) for _ in range(n))]

    accuracy = {}
    for strategy in ("truncate", "head_tail"):
        config = TrainConfig(**{**FAST.__dict__, "max_length": 16, "long_text": strategy, "head": 4, "epochs": 6})
        model, tokenizer = fresh(tiny_model_dir)
        summary = train(model, tokenizer, reviews(320, 0), reviews(100, 1), config, tmp_path / strategy,
                        progress=False)
        accuracy[strategy] = summary["best"]["accuracy"]
    # The first 16 tokens never hold the verdict; head + tail does (and the dev set is read the same way).
    assert accuracy["truncate"] < 0.7 and accuracy["head_tail"] >= 0.9


def test_windows_are_not_a_training_cut():
    with pytest.raises(InputError, match="truncate, head_tail"):
        TrainConfig(long_text="window")


def test_seeded_runs_are_identical(tiny_model_dir, tmp_path):
    results = []
    for run in ("a", "b"):
        model, tokenizer = fresh(tiny_model_dir)
        train(model, tokenizer, dataset(96, 0), None, FAST, tmp_path / run, progress=False)
        results.append(weights(model))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_resume_after_interruption_gives_the_same_model(tiny_model_dir, tmp_path, monkeypatch):
    config = TrainConfig(**{**FAST.__dict__, "ema_decay": 0.9})
    model, tokenizer = fresh(tiny_model_dir)
    train(model, tokenizer, dataset(96, 0), dataset(40, 1), config, tmp_path / "straight", progress=False)
    expected = weights(model)

    interrupt_at_step(11, monkeypatch)  # as if the process were killed after step 11 (last save: step 8)
    model, tokenizer = fresh(tiny_model_dir)
    with pytest.raises(KeyboardInterrupt):
        train(model, tokenizer, dataset(96, 0), dataset(40, 1), config, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed" / "resume.pt").is_file()
    monkeypatch.undo()
    model, tokenizer = fresh(tiny_model_dir)  # a new process starts from scratch and finds resume.pt
    summary = train(model, tokenizer, dataset(96, 0), dataset(40, 1), config, tmp_path / "resumed", progress=False)
    assert summary["steps"] == 18
    assert not (tmp_path / "resumed" / "resume.pt").exists()  # finished: the 4x-model-size state is gone
    assert all(torch.equal(expected[k], model.state_dict()[k]) for k in expected)
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    resumed = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert resumed[-len(straight) + 2:] == straight[2:]  # evaluations after the restart agree


def test_stop_after_makes_the_mid_schedule_checkpoint_and_the_run_continues(tiny_model_dir, tmp_path):
    config = TrainConfig(**{**FAST.__dict__, "ema_decay": 0.9})  # 6 steps an epoch, 18 in all
    model, tokenizer = fresh(tiny_model_dir)
    train(model, tokenizer, dataset(96, 0), dataset(40, 1), config, tmp_path / "straight", progress=False)
    expected = weights(model)
    # The step-12 weights of the whole 18-step schedule (not the end of a 12-step one), epoch end included.
    stepped = []
    original = train_module.learning_rate

    def spy(step, total, schedule):
        stepped.append((step, total))
        return original(step, total, schedule)

    train_module.learning_rate = spy
    try:
        for stop in (7, 12, 12):  # a stop, one at an epoch's end, and again at once: nothing more is trained
            model, tokenizer = fresh(tiny_model_dir)
            summary = train(model, tokenizer, dataset(96, 0), dataset(40, 1), config, tmp_path / "sliced",
                            progress=False, stop_after=stop)
            assert summary["stopped"] and summary["steps"] == stop and summary["total_steps"] == 18
            assert (tmp_path / "sliced" / "resume.pt").is_file()
    finally:
        train_module.learning_rate = original
    assert stepped == [(step, 18) for step in range(12)]
    at_12 = weights(model)
    model, tokenizer = fresh(tiny_model_dir)
    summary = train(model, tokenizer, dataset(96, 0), dataset(40, 1), config, tmp_path / "sliced", progress=False)
    assert summary["steps"] == 18 and "stopped" not in summary
    assert all(torch.equal(expected[k], model.state_dict()[k]) for k in expected)
    assert not all(torch.equal(expected[k], at_12[k]) for k in expected)
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert (tmp_path / "sliced" / "metrics.jsonl").read_text().splitlines() == straight


def interrupt_at_step(step: int, monkeypatch) -> None:
    """Make training stop with KeyboardInterrupt once ``step`` optimizer steps are done."""
    original = train_module.learning_rate

    def learning_rate(current, *args):
        if current == step:
            raise KeyboardInterrupt
        return original(current, *args)

    monkeypatch.setattr(train_module, "learning_rate", learning_rate)


def test_resume_refuses_other_settings(tiny_model_dir, tmp_path, monkeypatch):
    model, tokenizer = fresh(tiny_model_dir)
    interrupt_at_step(5, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(model, tokenizer, dataset(96, 0), None, FAST, tmp_path, progress=False)
    monkeypatch.undo()
    with pytest.raises(DistilsentError, match=r"resume.pt belongs to a run with other settings or data; use a new"):
        train(model, tokenizer, dataset(96, 0), None, TrainConfig(**{**FAST.__dict__, "learning_rate": 1e-4}),
              tmp_path, progress=False)


def test_finished_run_leaves_no_resume_state_and_is_not_overwritten(tiny_model_dir, tmp_path):
    model, tokenizer = fresh(tiny_model_dir)
    summary = train(model, tokenizer, dataset(32, 0), None, FAST, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "metrics.json"]
    saved = (tmp_path / "best" / "model.safetensors").read_bytes()
    # The same command again finds the run finished and does nothing; other settings are refused.
    again = train(model, tokenizer, dataset(32, 0), None, FAST, tmp_path, progress=False)
    assert again == json.loads((tmp_path / "metrics.json").read_text()) and again["steps"] == summary["steps"]
    with pytest.raises(InputError, match="holds a finished run with other settings or data; use a new output"):
        train(model, tokenizer, dataset(32, 0), None, TrainConfig(**{**FAST.__dict__, "seed": 8}), tmp_path,
              progress=False)
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == saved


def test_a_warm_up_as_long_as_the_run_is_cut_and_the_model_learns(tiny_model_dir, tmp_path):
    """600 warm-up steps on a 60-step run would train at <= 10% of the peak rate: dev accuracy stays near
    chance (0.56 measured); cut to 6 steps it reaches 0.86."""
    config = TrainConfig(**{**FAST.__dict__, "warmup_steps": 600, "eval_every": 0})
    model, tokenizer = fresh(tiny_model_dir)
    with pytest.warns(DistilsentWarning, match=r"warm-up of 600 steps is not shorter than the run \(60 steps\)"):
        summary = train(model, tokenizer, dataset(320, 0), dataset(100, 1), config, tmp_path, progress=False)
    assert summary["warmup_steps"] == 6  # 10% of 60 steps
    assert summary["best"]["accuracy"] >= 0.8


def test_max_steps_stops_the_run_and_the_schedule_ends_there(tiny_model_dir, tmp_path):
    config = TrainConfig(**{**FAST.__dict__, "max_steps": 7, "eval_every": 0})
    model, tokenizer = fresh(tiny_model_dir)
    summary = train(model, tokenizer, dataset(96, 0), dataset(40, 1), config, tmp_path, progress=False)
    assert summary["steps"] == 7  # 6 steps per epoch: evaluated at the end of epoch 1 and at the stop
    assert [h["step"] for h in summary["history"]] == [6, 7]
    assert learning_rate(7, 7, config) == 0.0
    with pytest.raises(InputError, match="max_steps must be positive, got 0"):
        TrainConfig(max_steps=0)


def test_progress_lines_when_stderr_is_not_a_terminal(tiny_model_dir, tmp_path, capsys):
    model, tokenizer = fresh(tiny_model_dir)
    train(model, tokenizer, dataset(32, 0), dataset(16, 1), FAST, tmp_path, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("train: 6/6 steps (100%) ") and " steps/s, loss " in err[-1] and " in 0:00:" in err[-1]
    assert any(line.startswith("step 6 raw: dev accuracy ") for line in err)


def test_learning_rate_warms_up_then_decays_to_zero():
    config = TrainConfig(learning_rate=1.0, warmup_steps=10)
    assert learning_rate(0, 110, config) == pytest.approx(0.1)
    assert learning_rate(9, 110, config) == pytest.approx(1.0)
    assert learning_rate(60, 110, config) == pytest.approx(0.5)
    assert learning_rate(110, 110, config) == 0.0


def test_length_grouping_cuts_padding_and_covers_every_example():
    lengths = np.random.default_rng(0).integers(3, 60, size=5000)
    grouped = epoch_batches(lengths, TrainConfig(batch_size=32), epoch=0)
    plain = epoch_batches(lengths, TrainConfig(batch_size=32, group_by_length=False), epoch=0)
    for plan in (grouped, plain):
        assert sorted(np.concatenate(plan).tolist()) == list(range(5000))
    padded = lambda plan: sum(len(b) * lengths[b].max() for b in plan)  # noqa: E731
    assert padded(grouped) < 0.6 * padded(plain)
    again = epoch_batches(lengths, TrainConfig(batch_size=32), epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(grouped, again))
    other = epoch_batches(lengths, TrainConfig(batch_size=32), epoch=1)
    assert not all(np.array_equal(a, b) for a, b in zip(grouped, other))


def test_presets_are_the_published_recipes():
    assert (PRESETS["sst2"].learning_rate, PRESETS["sst2"].batch_size, PRESETS["sst2"].warmup_steps,
            PRESETS["sst2"].max_length, PRESETS["sst2"].epochs) == (1e-5, 32, 600, 128, 3)
    assert (PRESETS["imdb"].learning_rate, PRESETS["imdb"].batch_size, PRESETS["imdb"].warmup_steps,
            PRESETS["imdb"].epochs, PRESETS["imdb"].seed) == (2e-5, 16, 100, 3, 42)


def test_new_labels_get_a_new_head(tiny_model_dir):
    model, _ = initial_model(str(tiny_model_dir), ("neg", "neu", "pos"))
    original, _ = load_model(tiny_model_dir)
    assert model.classifier.weight.shape == (3, 32)
    assert torch.equal(model.distilbert.embeddings.word_embeddings.weight,
                       original.distilbert.embeddings.word_embeddings.weight)


def test_train_verb(tiny_model_dir, tmp_path, capsys):
    from distilsent.cli import main

    lines = ["sentence\tlabel"] + [f"{e.text}\t{e.label}" for e in dataset(64, 0)]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    code = main(["train", str(tmp_path / "train.tsv"), "--dev", str(tmp_path / "train.tsv"), "--out",
                 str(tmp_path / "run"), "--model", str(tiny_model_dir), "--preset", "sst2", "--lr", "1e-3",
                 "--epochs", "1", "--quiet"])
    assert code == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["best"]["step"] == 2  # 64 examples, batch 32, evaluated at the end of the epoch
    # the preset's 600 warm-up steps on this 2-step run: cut, and said in one line
    assert err == ("distilsent: warning: warm-up of 600 steps is not shorter than the run (2 steps), so the "
                   "learning rate would stay near zero; warming up over 1 steps instead (10% of the run; pass "
                   "--warmup-steps or --max-steps to choose)\n")
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert '"learning_rate": 0.001' in card and "train.tsv" in card
    code = main(["train", str(tmp_path / "train.tsv"), "--dev", str(tmp_path / "train.tsv"), "--out",
                 str(tmp_path / "short"), "--model", str(tiny_model_dir), "--batch-size", "8", "--max-steps", "3",
                 "--warmup-steps", "1", "--quiet"])
    assert code == 0 and json.loads(capsys.readouterr().out)["best"]["step"] == 3


def test_every_extra_that_trains_requires_a_torch_with_fused_cpu_adamw():
    """train() builds AdamW(fused=True) on CPU tensors, which torch supports from 2.4 on."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    from ..conftest import ROOT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    torches = [Requirement(r) for reqs in extras.values() for r in reqs if Requirement(r).name == "torch"]
    assert torches
    for requirement in torches:
        assert not requirement.specifier.contains("2.3.1"), f"{requirement} allows a torch without fused CPU AdamW"


def test_epoch_pool_samples_each_source_by_its_weight():
    from distilsent.training.train import epoch_pool, epoch_size, source_ids

    examples = [Example(f"a{i}", 0, "a") for i in range(10)] + [Example(f"b{i}", 1, "b") for i in range(4)]
    source, weight = source_ids(examples, {"a": 0.5, "b": 2.5})
    assert epoch_size(source, weight) == 5 + 10
    pool = epoch_pool(source, weight, seed=1, epoch=0)
    counts = np.bincount(pool, minlength=14)
    assert (counts[:10] > 0).sum() == 5 and counts[:10].max() == 1  # half of a, each at most once
    assert sorted(counts[10:]) == [2, 2, 3, 3]  # every b twice before any third time
    assert np.array_equal(pool, epoch_pool(source, weight, seed=1, epoch=0))
    assert not np.array_equal(pool, epoch_pool(source, weight, seed=1, epoch=1))  # another half next epoch
    assert np.array_equal(epoch_pool(*source_ids(examples, None), seed=1, epoch=0), np.arange(14))
    with pytest.raises(InputError, match="no weight for b"):
        source_ids(examples, {"a": 1.0})
    with pytest.raises(InputError, match="no examples from c"):
        source_ids(examples, {"a": 1.0, "b": 1.0, "c": 1.0})
    with pytest.raises(InputError, match="positive"):
        source_ids(examples, {"a": 0.0, "b": 1.0})


def test_weighted_sources_train_and_are_reported_one_by_one(tiny_model_dir, tmp_path):
    data = dataset(96, seed=3)
    train_set = [Example(e.text, e.label, "big" if i % 4 else "small") for i, e in enumerate(data)]
    dev = [Example(e.text, e.label, "big" if i % 2 else "small") for i, e in enumerate(dataset(40, seed=4))]
    model, tokenizer = fresh(tiny_model_dir)
    config = TrainConfig(**{**FAST.__dict__, "epochs": 2, "eval_every": 0})
    summary = train(model, tokenizer, train_set, dev, config, tmp_path / "run", progress=False,
                    weights={"big": 0.5, "small": 2.0})
    assert summary["examples_per_epoch"] == 36 + 48 and summary["steps"] == 2 * 6  # ceil(84 / 16) per epoch
    assert set(summary["best"]["per_source"]) == {"small", "big"}
    assert summary["weights"] == {"big": 0.5, "small": 2.0}
    with pytest.raises(InputError, match="other settings or data"):  # the same directory, other weights
        train(model, tokenizer, train_set, dev, config, tmp_path / "run", progress=False,
              weights={"big": 1.0, "small": 2.0})


def test_precision_auto_follows_the_cpu_and_bf16_trains(tiny_model_dir, tmp_path):
    from distilsent.training.train import resolve_precision

    assert resolve_precision("auto", {"avx2", "avx512f"}) == "fp32"
    assert resolve_precision("auto", {"avx512f", "avx512_bf16"}) == "bf16"
    assert resolve_precision("auto", {"amx_bf16"}) == "bf16"
    assert resolve_precision("fp32", {"avx512_bf16"}) == "fp32"
    with pytest.raises(InputError, match="precision must be one of"):
        TrainConfig(precision="fp16")
    model, tokenizer = fresh(tiny_model_dir)
    config = TrainConfig(**{**FAST.__dict__, "precision": "bf16"})
    summary = train(model, tokenizer, dataset(320, 0), dataset(100, 1), config, tmp_path / "bf16", progress=False)
    assert summary["precision"] == "bf16" and summary["best"]["accuracy"] >= 0.9  # as the float32 run above
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights float32


def test_device_auto_takes_a_gpu_when_there_is_one_and_a_missing_gpu_is_an_input_error(monkeypatch):
    from distilsent.training.train import resolve_device, resolve_precision

    for wrong in ("gpu", "cuda:x", "cpu:0", ""):
        with pytest.raises(InputError, match="device must be auto, cpu, cuda or cuda:N"):
            TrainConfig(device=wrong)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(InputError, match="PyTorch sees 0 CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(InputError, match="PyTorch sees 1 CUDA device"):
        resolve_device("cuda:1")
    # precision auto on a GPU asks the GPU, not the CPU's flags
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", {"avx512_bf16"}, device="cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", {"avx2"}, device="cuda:0") == "bf16"


def test_train_verb_without_a_gpu_refuses_device_cuda_in_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from distilsent.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    data = dataset(32, 0)
    (tmp_path / "a.tsv").write_text("sentence\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in data))
    args = ["train", str(tmp_path / "a.tsv"), "--model", str(tiny_model_dir), "--batch-size", "16", "--epochs", "1",
            "--warmup-steps", "1", "--precision", "fp32", "--quiet", "--out", str(tmp_path / "run")]
    assert main(args + ["--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device 'cuda': PyTorch sees 0 CUDA device" in err and "--device cpu" in err
    assert not (tmp_path / "run").exists()
    assert main(args + ["--device", "auto"]) == 0  # auto falls back to the CPU
    assert json.loads(capsys.readouterr().out)["device"] == "cpu"


def test_train_verb_mixes_files_with_weights_and_a_label_map(tiny_model_dir, tmp_path, capsys):
    from distilsent.cli import main

    data = dataset(64, 0)
    (tmp_path / "a.tsv").write_text("sentence\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in data[:32]))
    stars = "".join(f"{e.text},{5 if e.label else 1}\n" for e in data[32:]) + "so so,3\n"
    (tmp_path / "stars.csv").write_text("text,stars\n" + stars)
    args = ["train", f"{tmp_path / 'a.tsv'}:2", str(tmp_path / "stars.csv"), "--dev", str(tmp_path / "a.tsv"),
            "--model", str(tiny_model_dir), "--batch-size", "16", "--epochs", "1", "--warmup-steps", "1",
            "--precision", "fp32", "--quiet"]
    mapping = ["--label-map", f"{tmp_path / 'stars.csv'}=1=NEGATIVE;3=-;5=POSITIVE"]
    assert main(args + mapping + ["--out", str(tmp_path / "run")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["best"]["step"] == 6 and report["precision"] == "fp32"  # (2 x 32 + 32) / 16
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["weights"] == {"a.tsv": 2.0, "stars.csv": 1.0} and metrics["train_examples"] == 64
    # without the map, the file's 3-star row is the error, with its file and line
    assert main(args + ["--out", str(tmp_path / "other")]) == 1
    line = 2 + [e.label for e in data[32:]].index(1)  # the first 5-star row, after the header
    assert capsys.readouterr().err == (
        f"distilsent: error: {tmp_path / 'stars.csv'}:{line}: label id 5 is outside 0..1\n")
    assert main(args + ["--label-map", "nothere.csv=1=NEGATIVE", "--out", str(tmp_path / "x")]) == 1
    assert "--label-map names nothere.csv, which is not a training file" in capsys.readouterr().err
