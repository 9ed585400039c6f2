"""ONNX export and backend: parity with torch, int8, the cache, batching order and budget, no torch at run time."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from distilsent import CheckpointError, Classifier, InputError
from distilsent.cli import main
from distilsent.model.config import DistilBertConfig
from distilsent.model.tokenizer import Tokenizer
from distilsent.runtime.backends import BACKENDS, OnnxBackend, check_batch
from distilsent.runtime.classifier import plan_batches

TEXTS = [
    "great movie",
    "the worst film i have seen , a boring mess from start to finish",
    "",
    "not bad at all !",
    "i love this movie . the actors are great and the story is fun " * 6,
    "awful",
    "it was good but the plot was very bad , and they hate it ?",
    "zzzq xylophone",
]
SRC = Path(__file__).resolve().parents[2] / "src"


def make_model(directory: Path, vocab: Path, activation: str = "gelu", seed: int = 0) -> Path:
    """A tiny checkpoint with every tensor random (biases and LayerNorms included), so that each one is checked."""
    import torch

    from distilsent.model.checkpoint import save_model
    from distilsent.model.distilbert import DistilBertForSequenceClassification

    tokenizer = Tokenizer.from_vocab(vocab)
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_heads=4, n_layers=2, hidden_dim=64,
                              max_position_embeddings=128, activation=activation)
    torch.manual_seed(seed)
    model = DistilBertForSequenceClassification(config)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                tensor.copy_(torch.randn_like(tensor) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
            else:
                tensor.normal_(std=0.3 if "embeddings" in name else 0.15)
        model.classifier.weight.mul_(10)  # distinct, confident labels between texts
    save_model(model, tokenizer, directory, card="# tiny random model\n")
    return directory


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DISTILSENT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vocab_file) -> Path:
    return make_model(tmp_path_factory.mktemp("random"), vocab_file)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model_dir) -> Path:
    from distilsent.runtime.export import export

    out = tmp_path_factory.mktemp("exported")
    export(model_dir, out)
    return out


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_onnx_logits_match_torch_within_1e4(tmp_path, vocab_file, activation):
    directory = make_model(tmp_path / "m", vocab_file, activation=activation, seed=1)
    reference = Classifier.load(directory, backend="torch")
    onnx = Classifier.load(directory, backend="onnx", batch_size=3)  # mixed lengths: padding inside batches
    want, got = reference.logits(TEXTS), onnx.logits(TEXTS)
    assert np.abs(want - got).max() < 1e-4
    assert (want.argmax(-1) == got.argmax(-1)).all()
    assert len(set(want.argmax(-1))) == 2  # both labels occur, so agreement means something
    assert [r["label"] for r in onnx(TEXTS)] == [r["label"] for r in reference(TEXTS)]


def test_float16_checkpoint_builds_an_exact_float32_graph(tmp_path, model_dir):
    import torch

    from distilsent.model.checkpoint import load_model, save_model

    model, tokenizer = load_model(model_dir)
    half = save_model(model, tokenizer, tmp_path / "half", dtype=torch.float16)  # how the default model ships
    want = Classifier.load(half, backend="torch").logits(TEXTS)
    np.testing.assert_allclose(Classifier.load(half).logits(TEXTS), want, atol=1e-4)


def test_export_writes_a_self_contained_directory_and_reports_parity(tmp_path, model_dir, capsys):
    out = tmp_path / "out"
    assert main(["export", str(model_dir), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parity on 12 texts: max |logit difference|" in printed and "label agreement 100.00%" in printed
    assert {"model.onnx", "config.json", "tokenizer.json", "vocab.txt", "README.md"} <= {p.name for p in out.iterdir()}
    assert "model.safetensors" not in {p.name for p in out.iterdir()}
    assert "# tiny random model (ONNX, float32)" in (out / "README.md").read_text()
    moved = tmp_path / "moved"
    out.rename(moved)  # nothing points back at the checkpoint
    got = Classifier.load(moved).logits(TEXTS)
    np.testing.assert_allclose(got, Classifier.load(model_dir, backend="torch").logits(TEXTS), atol=1e-4)


def test_export_parity_on_a_labelled_file_reports_accuracy(tmp_path, model_dir, capsys):
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(TEXTS[:4])))
    assert main(["export", str(model_dir), str(tmp_path / "out"), "--parity-data", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "parity on 4 texts" in printed and "accuracy: torch" in printed


def test_int8_card_reports_its_own_parity_not_the_float32_metrics(tmp_path, model_dir, capsys):
    from distilsent.model.checkpoint import load_config
    from distilsent.model.modelcard import SST2, model_card

    source = tmp_path / "source"
    source.mkdir()
    for p in model_dir.iterdir():
        (source / p.name).write_bytes(p.read_bytes())
    card = model_card("tiny-sst2", load_config(source), metrics={"accuracy": 0.9123, "f1": 0.8765}, dataset=SST2)
    (source / "README.md").write_text(card)
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(TEXTS)))
    assert main(["export", str(source), str(tmp_path / "int8"), "--int8", "--parity-data", str(data)]) == 0
    report = capsys.readouterr().out.splitlines()[-2:]  # parity and accuracy lines, as printed
    written = (tmp_path / "int8" / "README.md").read_text()
    assert written.startswith("---\nlicense: apache-2.0\n") and "# tiny-sst2 (ONNX, int8)" in written
    assert all(f"- {line}" in written for line in report) and "accuracy: torch" in report[-1]
    assert "0.9123" not in written and "0.8765" not in written and "model-index" not in written
    assert "AutoModelForSequenceClassification" not in written and "does not load in `transformers`" in written
    assert "## Intended use and limitations" in written and "**Bias.**" in written


def test_graph_has_dynamic_axes_and_fused_operators(exported):
    import onnx

    model = onnx.load(exported / "model.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu"} <= ops
    for value in model.graph.input:
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch", "sequence"]
    clf = Classifier.load(exported)
    for batch in (1, 5):
        for width in (1, 7, 100):
            ids = np.full((batch, width), 7, dtype=np.int64)
            assert clf.backend.logits(ids, np.ones_like(ids)).shape == (batch, 2)


def test_onnx_cache_is_built_once_and_keyed_by_weights(tmp_path, vocab_file, cache):
    first = make_model(tmp_path / "a", vocab_file, seed=2)
    Classifier.load(first)
    built = list(cache.rglob("model.onnx"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    Classifier.load(first)
    assert [p.stat().st_mtime_ns for p in cache.rglob("model.onnx")] == [stamp]
    second = make_model(tmp_path / "b", vocab_file, seed=3)
    clf = Classifier.load(second)
    assert len(list(cache.rglob("model.onnx"))) == 2
    np.testing.assert_allclose(clf.logits(TEXTS), Classifier.load(second, backend="torch").logits(TEXTS), atol=1e-4)


def test_int8_export_quantizes_the_encoder_and_agrees_on_clear_cases(tmp_path, model_dir, exported):
    import onnx

    out = tmp_path / "int8"
    assert main(["export", str(model_dir), str(out), "--int8"]) == 0
    model = onnx.load(out / "model.onnx")
    ops = [n.op_type for n in model.graph.node]
    # Four integer products per layer (qkv, out, lin1, lin2), over activations quantized per token: no
    # per-batch DynamicQuantizeLinear, no QAttention (which takes one scale for the whole batch).
    assert ops.count("MatMulIntegerToFloat") == 8 and ops.count("QuantizeLinear") == 8
    assert ops.count("MultiHeadAttention") == 2 and not {"DynamicQuantizeLinear", "QAttention", "Attention"} & set(ops)
    assert [n.op_type for n in model.graph.node if n.name in ("pre_matmul", "logits_matmul")] == ["MatMul"] * 2
    assert "EmbedLayerNormalization" in ops  # the embeddings stay float32 too
    weights = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) == 8 and all(np.abs(w).max() == 64 for w in weights)  # 7 bits: see onnx_graph
    assert_int8_close(Classifier.load(exported).logits(TEXTS), Classifier.load(out).logits(TEXTS))


@pytest.fixture(scope="module")
def exported_int8(tmp_path_factory, model_dir) -> Path:
    from distilsent.runtime.export import export

    out = tmp_path_factory.mktemp("exported-int8")
    export(model_dir, out, int8=True)
    return out


@pytest.mark.parametrize("engine", ["torch", "onnx", "int8"])
def test_logits_do_not_depend_on_the_batch(engine, model_dir, exported_int8):
    """A text alone, padded beside longer ones, first or last in its batch: the same logits on every engine.

    int8 included: its activations are quantized per token, so neither the other texts nor the padding
    change a text's scales (quantized per batch, as before, this model's logits moved by up to 0.13).
    """
    backend = "torch" if engine == "torch" else "onnx"
    clf = Classifier.load(exported_int8 if engine == "int8" else model_dir, backend=backend)
    sequences = clf.encode(TEXTS)
    assert len({len(s) for s in sequences}) > 4  # padding in every batch below
    alone = np.concatenate([clf.run_batch([s]) for s in sequences])
    n = len(sequences)
    for order in (list(range(n)), list(range(n))[::-1], list(range(1, n, 2)) + list(range(0, n, 2))):
        np.testing.assert_allclose(clf.run_batch([sequences[i] for i in order]), alone[order], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(clf.logits(TEXTS), alone, rtol=1e-5, atol=1e-5)  # the planner's batches


def test_int8_rows_of_zeros_give_the_float32_product(tmp_path, vocab_file):
    """A token whose row is all zeros gets scale 0 (0 / 0 when quantized): its product must still be 0."""
    from safetensors.numpy import load_file, save_file

    directory = make_model(tmp_path / "m", vocab_file, seed=4)
    tensors = load_file(directory / "model.safetensors")
    for name in ("weight", "bias"):  # values of zero: every token's attention output (context) is zeros
        tensors[f"distilbert.transformer.layer.0.attention.v_lin.{name}"][:] = 0
    save_file(tensors, directory / "model.safetensors")
    export_dir = tmp_path / "int8"
    assert main(["export", str(directory), str(export_dir), "--int8"]) == 0
    int8 = Classifier.load(export_dir).logits(TEXTS)
    assert np.isfinite(int8).all()
    assert_int8_close(Classifier.load(directory, backend="torch").logits(TEXTS), int8)


def assert_int8_close(fp32: np.ndarray, int8: np.ndarray) -> None:
    """int8 within 10% of float32's largest logit, and the same label wherever float32 is clear.

    The tiny model's logits span about +-3.6. 7-bit weights stay within 6% on CPUs with and without VNNI;
    8-bit weights, which saturate without VNNI, are off by 31% there and flip a label.
    """
    assert 0 < np.abs(fp32 - int8).max() < 0.1 * np.abs(fp32).max()
    margin = np.abs(fp32[:, 1] - fp32[:, 0])
    clear = margin > 0.2 * margin.max()
    assert clear.sum() >= 4
    assert (fp32.argmax(-1)[clear] == int8.argmax(-1)[clear]).all()


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.skipif(QEMU is None or platform.machine() != "x86_64",
                    reason="needs qemu-x86_64 (apt-get install qemu-user) on an x86-64 host")
def test_int8_holds_on_the_avx2_kernel_without_vnni(tmp_path, model_dir, exported):
    """ONNX Runtime picks its int8 kernel from the CPU's flags; under ``qemu-x86_64 -cpu Haswell`` it sees
    AVX2 without AVX-512 or VNNI, whatever the host, and takes the saturating u8 x s8 path."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from distilsent.model.checkpoint import load_config
    from distilsent.runtime.onnx_graph import write_onnx

    ours, saturating = tmp_path / "int8.onnx", tmp_path / "int8-8bit.onnx"
    write_onnx(model_dir, load_config(model_dir), ours, int8=True)
    # The same encoder products in int8 with 8-bit weights, by ONNX Runtime's own quantizer.
    quantize_dynamic(exported / "model.onnx", saturating, op_types_to_quantize=["Attention", "MatMul"],
                     nodes_to_exclude=["pre_matmul", "logits_matmul"], per_channel=True, weight_type=QuantType.QInt8,
                     reduce_range=False, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    code = f"""
        import json
        from pathlib import Path
        from distilsent.runtime.backends import OnnxBackend
        from distilsent.model.checkpoint import load_config, load_tokenizer
        from distilsent.runtime.classifier import Classifier
        config = load_config(Path({str(exported)!r}))
        tokenizer = load_tokenizer(Path({str(exported)!r}), config)
        clf = {{name: Classifier(OnnxBackend(Path(path), 1), tokenizer, config)
               for name, path in {{"ours": {str(ours)!r}, "saturating": {str(saturating)!r}}}.items()}}
        out = {{name: c.logits({TEXTS!r}).tolist() for name, c in clf.items()}}
        out["ours_alone"] = clf["ours"].logits({TEXTS!r}, batch_size=1).tolist()
        print(json.dumps(out))
    """
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", textwrap.dedent(code)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    avx2 = {name: np.array(logits) for name, logits in json.loads(result.stdout.strip().splitlines()[-1]).items()}
    clf = Classifier.load(exported)
    fp32 = clf.logits(TEXTS)
    with pytest.raises(AssertionError):  # the emulated CPU does reach the saturating kernel
        assert_int8_close(fp32, avx2["saturating"])
    assert_int8_close(fp32, avx2["ours"])
    np.testing.assert_allclose(avx2["ours_alone"], avx2["ours"], rtol=1e-5, atol=1e-5)  # per token there too
    here = Classifier(OnnxBackend(ours, 1), clf.tokenizer, clf.config).logits(TEXTS)
    np.testing.assert_allclose(avx2["ours"], here, atol=1e-4)  # the same integers on both kernels


class RecordingBackend:
    """Logits that identify each text (its length and first word id); remembers every batch's shape."""

    def __init__(self):
        self.shapes = []

    def logits(self, ids, mask):
        self.shapes.append(ids.shape)
        return np.stack([mask.sum(1), ids[:, 1]], axis=1).astype(np.float32)


def test_order_is_restored_after_length_sorting(vocab_file):
    tokenizer = Tokenizer.from_vocab(vocab_file)
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=128)
    backend = RecordingBackend()
    clf = Classifier(backend, tokenizer, config, batch_size=2)
    texts = TEXTS * 3
    got = clf.logits(texts)
    expected = np.array([[len(s), s[1]] for s in tokenizer.encode(texts, 128)], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    widths = [width for _, width in backend.shapes]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) > 1


def test_token_budget_bounds_every_padded_batch(vocab_file):
    tokenizer = Tokenizer.from_vocab(vocab_file)
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=128)
    backend = RecordingBackend()
    clf = Classifier(backend, tokenizer, config, batch_size=64, max_batch_tokens=60)
    clf.logits(TEXTS * 5)
    assert sum(rows for rows, _ in backend.shapes) == len(TEXTS) * 5
    for rows, width in backend.shapes:
        assert rows * width <= 60 or rows == 1


def test_plan_batches_covers_every_index_once_within_limits():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 300, size=500).tolist()
    batches = plan_batches(lengths, batch_size=16, max_batch_tokens=1000)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) <= 16
        assert len(batch) * width <= 1000 or len(batch) == 1


def to_left_padding(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same right-padded batch with each row's padding moved to its start."""
    shifts = (mask.shape[1] - mask.sum(1)).tolist()
    return (np.stack([np.roll(row, k) for row, k in zip(ids, shifts)]),
            np.stack([np.roll(row, k) for row, k in zip(mask, shifts)]))


class LeftPaddingTokenizer(Tokenizer):
    """A tokenizer set up to pad on the left, as is usual for decoder models."""

    def pad(self, sequences):
        return to_left_padding(*super().pad(sequences))


def test_left_padding_breaks_the_onnx_backend_and_is_refused(model_dir):
    torch_clf, onnx_clf = Classifier.load(model_dir, backend="torch"), Classifier.load(model_dir, backend="onnx")
    ids, mask = to_left_padding(*onnx_clf.tokenizer(TEXTS))
    assert not mask[:, 0].all()
    # Why the contract exists: the model reads [CLS] at position 0, and the ONNX graph takes each row's
    # count of ones as its length, so a left-padded batch silently gives other labels than torch does.
    want, got = torch_clf.backend.logits(ids, mask), onnx_clf.backend.logits(ids, mask)
    assert (want.argmax(-1) != got.argmax(-1)).any()
    with pytest.raises(InputError, match="padded on the right"):
        check_batch(ids, mask, 128)
    clf = Classifier(onnx_clf.backend, LeftPaddingTokenizer(onnx_clf.tokenizer._backend), onnx_clf.config)
    with pytest.raises(InputError, match="padded on the right"):
        clf(TEXTS)


def test_batches_beyond_the_position_table_are_refused(model_dir):
    clf = Classifier.load(model_dir)
    sequence = [clf.tokenizer.cls_id] + [7] * 127 + [clf.tokenizer.sep_id]  # 129 tokens, 128 positions
    with pytest.raises(InputError, match="longer than the model's 128 positions"):
        clf.run_batch([sequence])
    assert clf.run_batch([sequence[:127] + sequence[-1:]]).shape == (1, 2)


@pytest.mark.parametrize(
    "ids, mask, message",
    [
        (np.ones((2, 3), np.int32), np.ones((2, 3), np.int64), "int64"),
        (np.ones((2, 3), np.int64), np.ones((2, 4), np.int64), "shape"),
        (np.ones((3,), np.int64), np.ones((3,), np.int64), "shape"),
        (np.ones((2, 3), np.int64), np.array([[1, 0, 1], [1, 1, 1]]), "padded on the right"),
        (np.ones((2, 3), np.int64), np.array([[0, 0, 0], [1, 1, 1]]), "padded on the right"),
    ],
)
def test_backend_contract_violations_are_input_errors(ids, mask, message):
    with pytest.raises(InputError, match=message):
        check_batch(ids, mask, 128)


def test_a_backend_returning_the_wrong_shape_is_reported(model_dir):
    clf = Classifier.load(model_dir)

    class Truncating:
        name = "broken"

        def logits(self, ids, mask):
            return clf.backend.logits(ids, mask)[:1]

    broken = Classifier(Truncating(), clf.tokenizer, clf.config)
    with pytest.raises(CheckpointError, match="broken backend returned logits of shape"):
        broken(TEXTS[:3])


def test_backends_are_chosen_from_the_registry(model_dir):
    from distilsent.cli import build_parser

    for name in BACKENDS:
        assert Classifier.load(model_dir, backend=name).backend.name == name
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    assert next(a for a in predict._actions if a.dest == "backend").choices == tuple(BACKENDS)


def test_corrupt_onnx_file_is_a_checkpoint_error(tmp_path, exported):
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in exported.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="not a loadable ONNX model"):
        Classifier.load(broken)


def test_unwritable_cache_and_output_are_clear_errors(tmp_path, model_dir, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("DISTILSENT_CACHE", str(blocker / "cache"))
    with pytest.raises(CheckpointError, match="set DISTILSENT_CACHE to a writable directory"):
        Classifier.load(model_dir)
    assert main(["export", str(model_dir), str(blocker / "out")]) == 1


BLOCKER = """
import sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, Blocker())
"""


def run_without(blocked: set[str], code: str, tmp_path: Path, cache: Path) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=blocked))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(SRC)]), "DISTILSENT_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)


def test_onnx_backend_runs_where_torch_cannot_be_imported(tmp_path, model_dir, exported, cache):
    code = f"""
        import json, sys
        try:
            import torch
        except ImportError:
            pass
        else:
            sys.exit("the blocker did not block torch")
        from distilsent import Classifier, MissingDependencyError
        from distilsent.cli import main
        out = {{
            "exported": Classifier.load({str(exported)!r}).logits({TEXTS!r}).tolist(),
            "built": Classifier.load({str(model_dir)!r}, backend="onnx").logits({TEXTS!r}).tolist(),
        }}
        try:
            Classifier.load({str(model_dir)!r}, backend="torch")
        except MissingDependencyError as e:
            out["torch_error"] = str(e)
        main(["export", {str(model_dir)!r}, {str(tmp_path / "no-torch-export")!r}])
        out["torch_loaded"] = "torch" in sys.modules
        print(json.dumps(out))
    """
    result = run_without({"torch"}, code, tmp_path, cache)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert not out["torch_loaded"]
    want = Classifier.load(model_dir, backend="torch").logits(TEXTS)
    np.testing.assert_allclose(np.array(out["exported"]), want, atol=1e-4)
    np.testing.assert_allclose(np.array(out["built"]), want, atol=1e-4)
    assert "pip install 'distilsent[torch]'" in out["torch_error"]
    assert any(line.startswith("parity: skipped") for line in lines)
    assert (tmp_path / "no-torch-export" / "model.onnx").is_file()


def test_missing_onnxruntime_says_what_to_install(tmp_path, exported, cache):
    code = f"""
        from distilsent import Classifier, MissingDependencyError
        try:
            Classifier.load({str(exported)!r})
        except MissingDependencyError as e:
            print(e)
    """
    result = run_without({"onnxruntime"}, code, tmp_path, cache)
    assert result.returncode == 0, result.stderr
    assert "pip install onnxruntime" in result.stdout


def test_torch_free_modules_do_not_import_torch(tmp_path, exported, cache):
    code = f"""
        import sys
        from distilsent.cli import main
        main(["predict", "--model", {str(exported)!r}, "great movie"])
        print("torch" in sys.modules, "transformers" in sys.modules)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, "DISTILSENT_CACHE": str(cache)}, timeout=120)
    assert result.returncode == 0, result.stderr
    prediction, loaded = result.stdout.strip().splitlines()
    assert json.loads(prediction)["label"] in ("NEGATIVE", "POSITIVE")
    assert loaded == "False False"


def test_export_replaces_the_model_in_its_output_and_refuses_its_source(tmp_path, model_dir, tiny_model_dir):
    """export writes through the one writer: a model already in the output goes (its weights would otherwise
    sit beside another model's config and graph), and exporting over the source would lose its weights."""
    from distilsent.runtime.export import export

    out = tmp_path / "out"
    shutil.copytree(tiny_model_dir, out)
    (out / "notes.txt").write_text("mine")
    export(model_dir, out)
    assert {p.name for p in out.iterdir()} == {"config.json", "model.onnx", "tokenizer.json", "vocab.txt",
                                               "tokenizer_config.json", "README.md", "notes.txt"}
    np.testing.assert_allclose(Classifier.load(out).logits(TEXTS),
                               Classifier.load(model_dir, backend="torch").logits(TEXTS), atol=1e-4)
    with pytest.raises(InputError, match="not over its source"):
        export(out, out)
    assert main(["export", str(model_dir), str(model_dir)]) == 1
    assert (model_dir / "model.safetensors").is_file()
