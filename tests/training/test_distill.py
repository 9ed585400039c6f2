import json
import random

import numpy as np
import pytest
import torch

import distilsent.training.distill as distill_module
from distilsent.data.examples import Example
from distilsent.errors import DistilsentError, InputError
from distilsent.model.checkpoint import load_model
from distilsent.runtime.classifier import Classifier
from distilsent.training.distill import (
    UNLABELLED,
    DistillConfig,
    PrecomputedTeacher,
    distill,
    distillation_loss,
    hard_loss,
    hidden_loss,
    read_distill_examples,
    soft_loss,
    taught_loss,
)
from distilsent.training.train import TrainConfig, initial_model, train

from ..conftest import make_tiny_model
from .test_train import FILLER, NEGATIVE, POSITIVE, dataset, interrupt_at_step

# One thread: tiny models gain nothing from two, and lose several times over on a machine shared with others.
FAST = TrainConfig(learning_rate=3e-3, batch_size=16, warmup_steps=2, epochs=4, max_length=32, eval_every=0,
                   save_every=4, seed=7, group_size=4, threads=1, precision="fp32",
                   device="cpu")  # the same on every machine
SOFT_ONLY = DistillConfig(temperature=2.0, alpha_soft=1.0, alpha_hard=0.0)


def trained(directory, vocab_file, examples, labels):
    """A tiny model fine-tuned on ``examples``: a teacher whose predictions follow the texts' sentiment
    (random tiny models give most of these texts one label)."""
    base = make_tiny_model(directory / "init", vocab_file, seed=1, id2label=dict(enumerate(labels)))
    model, tokenizer = initial_model(str(base), labels, seed=1)
    config = TrainConfig(learning_rate=2e-3, batch_size=16, warmup_steps=5, epochs=3, max_length=32, eval_every=0,
                         seed=1, group_size=4, threads=1, precision="fp32", device="cpu")
    train(model, tokenizer, examples, None, config, directory / "run", progress=False)
    return directory / "run" / "best"


def three_class(n: int, seed: int) -> list[Example]:
    """negative / neutral / positive: a negative word, none, or a positive word among filler."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        label = rng.randrange(3)
        words = (rng.choices(FILLER, k=rng.randrange(1, 10))
                 + [[rng.choice(NEGATIVE)], [], [rng.choice(POSITIVE)]][label])
        rng.shuffle(words)
        examples.append(Example(" ".join(words), label))
    return examples


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, vocab_file):
    return trained(tmp_path_factory.mktemp("teacher"), vocab_file, dataset(320, 5), ("NEGATIVE", "POSITIVE"))


@pytest.fixture(scope="module", autouse=True)
def torch_threads():
    """train() sets torch's (process-wide) thread count from FAST.threads; other test files get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "logits-cache"


def agreement(model_dir, teacher_dir, texts) -> float:
    student = Classifier.load(model_dir, backend="torch", threads=1).logits(texts).argmax(1)
    teacher = Classifier.load(teacher_dir, backend="torch", threads=1).logits(texts).argmax(1)
    return float((student == teacher).mean())


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------- the loss


def test_soft_loss_is_the_kl_of_softened_distributions_times_t_squared():
    student = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    teacher = torch.tensor([[2.0, 0.0, -1.0], [1.0, 1.0, 1.5]])
    for t in (1.0, 2.0, 4.0):
        p = torch.softmax(teacher / t, -1).numpy()
        q = torch.softmax(student / t, -1).numpy()
        by_hand = t * t * np.mean(np.sum(p * np.log(p / q), axis=1))
        assert soft_loss(student, teacher, t).item() == pytest.approx(by_hand, rel=1e-5)
    assert soft_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-7)  # student == teacher


def test_t_squared_keeps_the_soft_gradient_of_one_size_across_temperatures():
    """Hinton et al.: the soft term's gradient is (q - p) / T, about (student - teacher) / (labels * T^2) when
    T is large against the logits, so without T^2 a higher temperature would silence the teacher."""
    teacher = torch.tensor([[0.4, -0.3, 0.1]])
    sizes = []
    for t in (2.0, 8.0):
        student = torch.tensor([[-0.2, 0.5, 0.0]], requires_grad=True)
        (soft_loss(student, teacher, t) / (t * t)).backward()  # the KL alone shrinks as 1/T^2 ...
        bare = student.grad.norm().item()
        student.grad = None
        soft_loss(student, teacher, t).backward()  # ... which T^2 gives back
        sizes.append((bare, student.grad.norm().item()))
    assert sizes[1][0] < sizes[0][0] / 10  # 16x smaller at 4x the temperature
    assert sizes[1][1] == pytest.approx(sizes[0][1], rel=0.05)


def test_the_weights_mix_the_terms_and_unlabelled_rows_have_no_hard_loss():
    student = torch.tensor([[1.0, -1.0], [0.2, 0.3], [-2.0, 2.0]])
    teacher = torch.tensor([[0.5, 0.5], [2.0, -1.0], [-1.0, 1.0]])
    labels = torch.tensor([0, UNLABELLED, 1])
    soft, hard = soft_loss(student, teacher, 3.0), hard_loss(student, labels)
    assert hard.item() == pytest.approx(torch.nn.functional.cross_entropy(student[[0, 2]], labels[[0, 2]]).item())
    options = DistillConfig(temperature=3.0, alpha_soft=0.7, alpha_hard=0.2)
    assert distillation_loss(student, teacher, labels, options).item() == pytest.approx(
        0.7 * soft.item() + 0.2 * hard.item(), rel=1e-6)
    assert hard_loss(student, torch.full((3,), UNLABELLED)).item() == 0.0


def test_hidden_loss_counts_real_tokens_only():
    hidden = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    other = hidden.clone()
    other[0, 2] = -hidden[0, 2]  # a padding position: ignored
    assert hidden_loss(hidden, other, mask).item() == pytest.approx(0.0, abs=1e-6)
    other[1, 0] = -hidden[1, 0]  # one of three real tokens points the other way: 1 - cos = 2
    assert hidden_loss(hidden, other, mask).item() == pytest.approx(2 / 3, rel=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(InputError, match="temperature must be positive"):
        DistillConfig(temperature=0)
    with pytest.raises(InputError, match="not all zero"):
        DistillConfig(alpha_soft=0, alpha_hard=0)
    with pytest.raises(InputError, match="non-negative"):
        DistillConfig(alpha_hard=-1)


def test_rows_without_a_teacher_learn_from_their_label_with_the_same_weight():
    student = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-0.4, 0.9], [0.0, 0.1]])
    teacher = torch.tensor([[2.0, -1.0], [float("nan"), float("nan")], [-0.5, 1.5], [float("nan"), float("nan")]])
    labels = torch.tensor([0, 1, 1, 0])
    by_hand = (2 * soft_loss(student[[0, 2]], teacher[[0, 2]], 2.0)  # batchmean over the 2 taught rows
               + torch.nn.functional.cross_entropy(student[[1, 3]], labels[[1, 3]], reduction="sum")) / 4
    assert torch.allclose(taught_loss(student, teacher, labels, 2.0), by_hand)
    full = torch.tensor([[2.0, -1.0], [0.1, 0.2], [-0.5, 1.5], [1.0, 0.0]])
    assert torch.equal(taught_loss(student, full, labels, 2.0), soft_loss(student, full, 2.0))
    untaught = torch.full((4, 2), float("nan"))
    assert torch.allclose(taught_loss(student, untaught, labels, 3.0),
                          torch.nn.functional.cross_entropy(student, labels))


# ----------------------------------------------------------------------------------- the logits cache


def test_teacher_logits_are_computed_once_and_a_changed_file_invalidates_them(
        teacher_dir, vocab_file, tmp_path, cache, monkeypatch, capsys):
    calls = []
    original = distill_module.teacher_logits

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(distill_module, "teacher_logits", counting)
    student = make_tiny_model(tmp_path / "student", vocab_file, seed=0)
    config = TrainConfig(**{**FAST.__dict__, "max_steps": 2, "warmup_steps": 1})
    first = distill(teacher_dir, dataset(32, 0), tmp_path / "a", student=student, config=config,
                    logits_cache=cache, progress=True)
    assert any(line.startswith("teacher: 32/32 texts (100%)") for line in capsys.readouterr().err.splitlines())
    expected = Classifier.load(teacher_dir).run(Classifier.load(teacher_dir).encode([e.text for e in dataset(32, 0)],
                                                                                    max_length=32))
    assert np.allclose(np.load(first["teacher_logits"]), expected, atol=1e-5)
    # Another run (other weights of the loss) on the same data: the teacher is not asked again.
    distill(teacher_dir, dataset(32, 0), tmp_path / "b", student=student, config=config, logits_cache=cache,
            options=SOFT_ONLY, progress=True)
    assert calls == [32] and "teacher:" not in capsys.readouterr().err
    changed = dataset(32, 0)
    changed[5] = Example(changed[5].text + " great", changed[5].label)  # one row of the file edited
    again = distill(teacher_dir, changed, tmp_path / "c", student=student, config=config, logits_cache=cache,
                    progress=False)
    assert calls == [32, 32] and again["teacher_logits"] != first["teacher_logits"]
    shorter = TrainConfig(**{**config.__dict__, "max_length": 8})  # another cut of the texts: other logits
    distill(teacher_dir, changed, tmp_path / "d", student=student, config=shorter, logits_cache=cache, progress=False)
    assert calls == [32, 32, 32] and len(list(cache.glob("*.npy"))) == 3


def test_teacher_logits_read_texts_as_the_student_trains_on_them(teacher_dir, cache):
    from distilsent.training.distill import cached_teacher_logits

    texts = [" ".join([e.text] * 6) for e in dataset(16, 0)]  # longer than 16 tokens
    teacher = Classifier.load(teacher_dir)
    truncated = cached_teacher_logits(teacher_dir, texts, 16, cache=cache, progress=False)[0]
    head_tail, path = cached_teacher_logits(teacher_dir, texts, 16, long_text="head_tail", head=4, cache=cache,
                                            progress=False)
    expected = teacher.run(teacher.windows(texts, long_text="head_tail", head=4, max_length=16).sequences)
    assert np.allclose(head_tail, expected, atol=1e-5)
    assert not np.allclose(head_tail, truncated, atol=1e-3)
    assert len(list(cache.glob("*.npy"))) == 2 and path.is_file()


def test_an_interrupted_teacher_resumes_at_its_last_whole_chunk(teacher_dir, cache, monkeypatch):
    from distilsent.training.distill import cached_teacher_logits

    texts = [e.text for e in dataset(40, 0)]
    expected = cached_teacher_logits(teacher_dir, texts, 32, cache=cache.parent / "straight", progress=False)[0]
    monkeypatch.setattr(distill_module, "TEACHER_CHUNK", 8)  # 5 chunks
    ran = []
    original = Classifier.run_batch

    def run_batch(self, sequences):
        if sum(ran) >= 16:  # killed as the third chunk starts, after two were saved
            raise KeyboardInterrupt
        ran.append(len(sequences))
        return original(self, sequences)

    monkeypatch.setattr(Classifier, "run_batch", run_batch)
    with pytest.raises(KeyboardInterrupt):
        cached_teacher_logits(teacher_dir, texts, 32, cache=cache, progress=False)
    assert sorted(p.name for p in next(cache.glob("*.parts")).iterdir()) == ["0.npy", "1.npy"]
    counted = []
    monkeypatch.setattr(Classifier, "run_batch", lambda self, seqs: counted.append(len(seqs)) or original(self, seqs))
    logits, path = cached_teacher_logits(teacher_dir, texts, 32, cache=cache, progress=False)
    assert sum(counted) == 24  # chunks 2, 3 and 4 only
    assert np.allclose(logits, expected, atol=1e-6)
    assert [p.name for p in cache.iterdir()] == [path.name]  # the parts are gone once the whole file is written


# -------------------------------------------------------------------------------------------- training


def test_distilling_unlabelled_text_moves_the_student_to_the_teacher(teacher_dir, vocab_file, tmp_path, cache):
    texts = [e.text for e in dataset(160, 0)]
    (tmp_path / "texts.csv").write_text("text\n" + "\n".join(texts) + "\n")
    examples = read_distill_examples(tmp_path / "texts.csv")
    assert {e.label for e in examples} == {UNLABELLED}
    student = make_tiny_model(tmp_path / "student", vocab_file, seed=0)
    before = agreement(student, teacher_dir, texts)
    summary = distill(teacher_dir, examples, tmp_path / "run", student=student, config=FAST, options=SOFT_ONLY,
                      logits_cache=cache, progress=False)
    after = agreement(tmp_path / "run" / "best", teacher_dir, texts)
    assert before < 0.5 and after > before + 0.5, (before, after)
    assert summary["objective"]["temperature"] == 2.0
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert f"Distilled from the teacher `{teacher_dir}`" in card and "160 of 160 training texts had no label" in card


def test_precomputed_logits_teach_as_the_teacher_itself_does(teacher_dir, vocab_file, tmp_path, cache):
    examples = dataset(64, 0)
    student = make_tiny_model(tmp_path / "student", vocab_file, seed=0)
    config = TrainConfig(**{**FAST.__dict__, "epochs": 2})
    direct = distill(teacher_dir, examples, tmp_path / "direct", student=student, config=config,
                     logits_cache=cache, progress=False)
    logits = np.load(direct["teacher_logits"])
    given = PrecomputedTeacher(logits, ("NEGATIVE", "POSITIVE"), "a teacher elsewhere")
    summary = distill(given, examples, tmp_path / "given", student=student, config=config, progress=False)
    assert summary["teacher_logits"] is None
    ours, _ = load_model(tmp_path / "given" / "best")
    theirs, _ = load_model(tmp_path / "direct" / "best")
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    assert "Distilled from the teacher `a teacher elsewhere`" in (tmp_path / "given" / "best" / "README.md").read_text()

    half = logits.copy()
    half[::2] = np.nan  # every other text has no teacher: it learns from its label
    distill(PrecomputedTeacher(half, given.labels, "half"), examples, tmp_path / "half", student=student,
            config=config, progress=False)
    card = (tmp_path / "half" / "best" / "README.md").read_text()
    assert "32 had no teacher and learned from their label alone" in card
    orphan = examples[:2] + [Example("no label", UNLABELLED)] + examples[3:]
    with pytest.raises(InputError, match="training text 2 has neither a label nor teacher logits"):
        distill(PrecomputedTeacher(half, given.labels, "half"), orphan, tmp_path / "x", student=student,
                config=config, progress=False)
    with pytest.raises(InputError, match=r"expected one row of 2 per training text \(64\)"):
        distill(PrecomputedTeacher(logits[:10], given.labels, "short"), examples, tmp_path / "y", student=student,
                config=config, progress=False)


def test_resume_after_interruption_equals_an_uninterrupted_run(teacher_dir, vocab_file, tmp_path, cache,
                                                               monkeypatch):
    student = make_tiny_model(tmp_path / "student", vocab_file, seed=0)
    config = TrainConfig(**{**FAST.__dict__, "epochs": 2})
    options = DistillConfig(temperature=3.0, alpha_soft=0.6, alpha_hard=0.4)
    run = lambda out: distill(teacher_dir, dataset(96, 0), out, student=student, config=config,  # noqa: E731
                              options=options, logits_cache=cache, progress=False)
    run(tmp_path / "straight")
    expected, _ = load_model(tmp_path / "straight" / "best")

    interrupt_at_step(7, monkeypatch)  # killed after step 7; the last save was at step 4
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed")
    assert (tmp_path / "resumed" / "resume.pt").is_file()
    monkeypatch.undo()
    summary = run(tmp_path / "resumed")
    assert summary["steps"] == 12
    resumed, _ = load_model(tmp_path / "resumed" / "best")
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in expected.state_dict().items())
    # The same run again is finished; other loss weights in that directory are refused.
    assert run(tmp_path / "resumed")["steps"] == 12
    with pytest.raises(InputError, match="holds a finished run with other settings"):
        distill(teacher_dir, dataset(96, 0), tmp_path / "resumed", student=student, config=config,
                options=SOFT_ONLY, logits_cache=cache, progress=False)


def test_a_three_label_teacher(vocab_file, tmp_path, cache):
    labels = ("negative", "neutral", "positive")
    teacher = trained(tmp_path / "teacher3", vocab_file, three_class(480, 5), labels)
    student = make_tiny_model(tmp_path / "student3", vocab_file, seed=0, id2label=dict(enumerate(labels)))
    examples = three_class(320, 0)
    texts = [e.text for e in examples]
    before = agreement(student, teacher, texts)
    config = TrainConfig(**{**FAST.__dict__, "epochs": 6, "learning_rate": 5e-3})  # 0.90 agreement measured
    distill(teacher, examples, tmp_path / "run", student=student, config=config,
            options=DistillConfig(alpha_soft=0.8, alpha_hard=0.2), logits_cache=cache, progress=False)
    model, _ = load_model(tmp_path / "run" / "best")
    assert model.config.labels == list(labels)
    after = agreement(tmp_path / "run" / "best", teacher, texts)
    assert before < 0.4 and after >= 0.8, (before, after)


def test_hidden_state_loss_aligns_the_last_hidden_state(teacher_dir, vocab_file, tmp_path, cache):
    student = make_tiny_model(tmp_path / "student", vocab_file, seed=0)
    texts = [e.text for e in dataset(64, 0)]

    def similarity(directory) -> float:
        a = Classifier.load(directory, backend="torch").hidden_states(texts)
        b = Classifier.load(teacher_dir, backend="torch").hidden_states(texts)
        real = a[1].astype(bool)
        x, y = a[0][-1][real], b[0][-1][real]
        return float(np.mean(np.sum(x * y, 1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)))

    distill(teacher_dir, dataset(64, 0), tmp_path / "run", student=student, config=FAST,
            options=DistillConfig(alpha_soft=0.0, alpha_hard=0.0, alpha_cos=1.0), logits_cache=cache, progress=False)
    assert similarity(tmp_path / "run" / "best") > similarity(student) + 0.2

    wide = make_tiny_model(tmp_path / "wide", vocab_file, seed=0, dim=48, n_heads=4)
    with pytest.raises(InputError, match="one width; the teacher has 32 dims, the student 48"):
        distill(teacher_dir, dataset(16, 0), tmp_path / "wide-run", student=wide, config=FAST,
                options=DistillConfig(alpha_cos=1.0), logits_cache=cache, progress=False)
    tokens = vocab_file.read_text().split("\n")
    other = tmp_path / "other-vocab.txt"
    other.write_text("\n".join(tokens[:5] + tokens[5:-1][::-1]) + "\n")  # the same tokens under other ids
    shuffled = make_tiny_model(tmp_path / "shuffled", other, seed=0)
    with pytest.raises(InputError, match="one vocabulary; they tokenize the training texts differently"):
        distill(teacher_dir, dataset(16, 0), tmp_path / "vocab-run", student=shuffled, config=FAST,
                options=DistillConfig(alpha_cos=1.0), logits_cache=cache, progress=False)
    # Without the cosine term the teacher's logits are all the student needs: any vocabulary will do.
    distill(teacher_dir, dataset(16, 0), tmp_path / "vocab-run", student=shuffled, config=FAST,
            logits_cache=cache, progress=False)


def test_a_student_with_other_labels_is_refused(teacher_dir, vocab_file, tmp_path, cache):
    three = make_tiny_model(tmp_path / "three", vocab_file, id2label={0: "a", 1: "b", 2: "c"})
    with pytest.raises(InputError, match=r"the student's labels \(a, b, c\) differ from the teacher's "
                                         r"\(NEGATIVE, POSITIVE\)"):
        distill(teacher_dir, dataset(16, 0), tmp_path / "run", student=three, config=FAST, logits_cache=cache)


# ----------------------------------------------------------------------------------------------- the verb


def test_distill_verb_and_its_errors(teacher_dir, vocab_file, tmp_path, capsys, monkeypatch, cache):
    from distilsent.cli import main

    monkeypatch.setenv("DISTILSENT_CACHE", str(tmp_path / "cache"))
    train_file = tmp_path / "train.tsv"
    train_file.write_text("sentence\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in dataset(48, 0)))
    student = make_tiny_model(tmp_path / "student", vocab_file, seed=0)
    args = ["distill", str(train_file), "--teacher", str(teacher_dir), "--out", str(tmp_path / "run"),
            "--student", str(student), "--temperature", "3", "--alpha-soft", "0.8", "--alpha-hard", "0.2",
            "--batch-size", "16", "--max-steps", "3", "--warmup-steps", "1", "--max-length", "32", "--quiet"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == str(tmp_path / "run" / "best") and report["steps"] == 3
    assert report["teacher_logits"].startswith(str(tmp_path / "cache" / "teacher-logits"))
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert "temperature 3.0; loss weights: soft 0.8, hard 0.2" in card and "train.tsv" in card

    np.save(tmp_path / "logits.npy", np.load(report["teacher_logits"]))  # a teacher known by its logits only
    given = args[:2] + ["--teacher-logits", str(tmp_path / "logits.npy"), "--out", str(tmp_path / "given")] + args[6:]
    assert main(given) == 0
    assert json.loads(capsys.readouterr().out)["teacher_logits"] is None
    ours, _ = load_model(tmp_path / "given" / "best")
    theirs, _ = load_model(tmp_path / "run" / "best")
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    np.save(tmp_path / "ints.npy", np.zeros((48, 2), dtype=np.int64))

    three = make_tiny_model(tmp_path / "three", vocab_file, id2label={0: "a", 1: "b", 2: "c"})
    failures = {
        "the student's labels (a, b, c) differ from the teacher's (NEGATIVE, POSITIVE)":
            ["distill", str(train_file), "--teacher", str(teacher_dir), "--out", str(tmp_path / "x"),
             "--student", str(three)],
        f"{tmp_path / 'missing.tsv'}: no such file":
            ["distill", str(tmp_path / "missing.tsv"), "--teacher", str(teacher_dir), "--out", str(tmp_path / "y")],
        f"checkpoint directory {tmp_path / 'no-teacher'} does not exist":
            ["distill", str(train_file), "--teacher", str(tmp_path / "no-teacher"), "--out", str(tmp_path / "z")],
        "ints.npy: expected a float array of (rows, labels), got int64 (48, 2)":
            ["distill", str(train_file), "--teacher-logits", str(tmp_path / "ints.npy"), "--out", str(tmp_path / "v")],
        "the teacher's logits are (48, 2), expected one row of 3 per training text (48)":
            ["distill", str(train_file), "--teacher-logits", str(tmp_path / "logits.npy"), "--out", str(tmp_path / "u"),
             "--labels", "a,b,c"],
        "the loss weights must be non-negative and not all zero":
            ["distill", str(train_file), "--teacher", str(teacher_dir), "--out", str(tmp_path / "w"),
             "--alpha-soft", "0", "--alpha-hard", "0"],
    }
    for message, argv in failures.items():
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("distilsent: error: ") and message in err and err.count("\n") == 1, err


def test_reading_labelled_text_only_and_txt_files(tmp_path):
    (tmp_path / "l.jsonl").write_text('{"text": "good", "label": "positive"}\n{"text": "bad", "label": 0}\n')
    (tmp_path / "u.jsonl").write_text('{"text": "good"}\n{"text": "bad"}\n')
    (tmp_path / "u.txt").write_text("good\nbad\n")
    assert read_distill_examples(tmp_path / "l.jsonl") == [Example("good", 1), Example("bad", 0)]
    for name in ("u.jsonl", "u.txt"):
        assert read_distill_examples(tmp_path / name) == [Example("good", UNLABELLED), Example("bad", UNLABELLED)]
    with pytest.raises(DistilsentError, match="no label column 'stars'"):
        read_distill_examples(tmp_path / "u.jsonl", label_column="stars")
