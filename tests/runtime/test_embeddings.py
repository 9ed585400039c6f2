"""Hidden states and embeddings on both backends: parity with transformers, pooling, batching, files."""

import json

import numpy as np
import pytest

from distilsent import Classifier
from distilsent.cli import main
from distilsent.errors import CheckpointError, InputError

TEXTS = ["a great film", "the worst plot and the actors were bad , very boring", "fun", "", "i love this movie !"]
REAL_TEXTS = ["a gripping, beautiful film", "the plot is thin and the acting worse, a boring mess", "meh", ""]


def reference_hidden_states(directory, texts):
    transformers = pytest.importorskip("transformers")
    import torch

    # No dtype argument: the config asks for float32, as distilsent computes (the default model stores float16).
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    clf = Classifier.load(directory)
    ids, mask = clf.tokenizer.pad(clf.encode(texts))
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
    return np.stack([h.numpy() for h in out.hidden_states]), mask


@pytest.fixture(scope="module")
def default_dir():
    from distilsent.model.checkpoint import default_model_dir

    if not (default_model_dir() / "model.safetensors").is_file():
        pytest.skip("the default model is not installed")
    return default_model_dir()


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("which", ["tiny", "default"])
def test_hidden_states_match_transformers(which, backend, tiny_model_dir, request):
    directory = tiny_model_dir if which == "tiny" else request.getfixturevalue("default_dir")
    texts = TEXTS if which == "tiny" else REAL_TEXTS
    expected, expected_mask = reference_hidden_states(directory, texts)
    clf = Classifier.load(directory, backend=backend)
    states, mask = clf.hidden_states(texts)
    assert states.dtype == np.float32 and states.shape == expected.shape == (clf.config.n_layers + 1, len(texts),
                                                                             mask.shape[1], clf.config.dim)
    np.testing.assert_array_equal(mask, expected_mask)
    real = mask.astype(bool)  # padding positions are never read by anything downstream
    for layer in range(states.shape[0]):
        np.testing.assert_allclose(states[layer][real], expected[layer][real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_pooling_layers_and_normalisation(tiny_model_dir, backend):
    clf = Classifier.load(tiny_model_dir, backend=backend)
    states, mask = clf.hidden_states(TEXTS)
    for layer in (0, 1, -1):
        cls = clf.embed(TEXTS, layer=layer)
        assert cls.shape == (len(TEXTS), 32) and cls.dtype == np.float32
        np.testing.assert_allclose(cls, states[layer][:, 0], atol=1e-5, rtol=0)
        mean = clf.embed(TEXTS, pooling="mean", layer=layer)
        for row, text_mask in enumerate(mask.astype(bool)):
            np.testing.assert_allclose(mean[row], states[layer][row][text_mask].mean(axis=0), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(clf.embed(TEXTS, layer=-1), clf.embed(TEXTS, layer=clf.config.n_layers))
    unit = clf.embed(TEXTS, pooling="mean", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert clf.embed("fun").shape == (1, 32) and clf.embed([]).shape == (0, 32)


def test_embeddings_do_not_depend_on_the_batch(tiny_model_dir):
    clf = Classifier.load(tiny_model_dir)
    together = clf.embed(TEXTS, pooling="mean", batch_size=8)
    alone = np.concatenate([clf.embed([t], pooling="mean") for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)


class Recording:
    """Wraps a backend and records the shape of every batch it is given."""

    def __init__(self, backend):
        self.backend, self.shapes = backend, []
        self.name = backend.name

    def logits(self, ids, mask):
        self.shapes.append(ids.shape)
        return self.backend.logits(ids, mask)

    def hidden_states(self, ids, mask, layers):
        self.shapes.append(ids.shape)
        return self.backend.hidden_states(ids, mask, layers)


def test_embed_batches_like_classification(tiny_model_dir):
    loaded = Classifier.load(tiny_model_dir)
    recording = Recording(loaded.backend)
    clf = Classifier(recording, loaded.tokenizer, loaded.config, batch_size=2, max_batch_tokens=24)
    texts = TEXTS * 3
    clf.logits(texts)
    classified, recording.shapes = recording.shapes, []
    clf.embed(texts)
    assert recording.shapes == classified and len(classified) > 3


@pytest.mark.parametrize("call", [dict(layer=3), dict(layer=-4), dict(layer=1.0), dict(pooling="max")])
def test_bad_arguments_are_input_errors(tiny_model_dir, call):
    with pytest.raises(InputError):
        Classifier.load(tiny_model_dir).embed(TEXTS, **call)


def test_a_backend_without_hidden_states_is_an_input_error(tiny_model_dir):
    loaded = Classifier.load(tiny_model_dir)

    class LogitsOnly:
        name = "logits-only"
        logits = staticmethod(loaded.backend.logits)

    with pytest.raises(InputError, match="logits-only backend does not give hidden states"):
        Classifier(LogitsOnly(), loaded.tokenizer, loaded.config).embed(TEXTS)


def test_int8_export_gives_hidden_states_close_to_float32(tiny_model_dir, tmp_path):
    from distilsent.runtime.export import export

    export(tiny_model_dir, tmp_path / "int8", int8=True)
    exact = Classifier.load(tiny_model_dir, backend="torch").embed(TEXTS, pooling="mean")
    quantized = Classifier.load(tmp_path / "int8").embed(TEXTS, pooling="mean")
    cosine = (exact * quantized).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(quantized, axis=1)
    assert cosine.min() > 0.98


def test_a_foreign_graph_is_a_checkpoint_error(tiny_model_dir, tmp_path):
    import shutil

    from onnx import TensorProto, helper, save_model

    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copyfile(tiny_model_dir / name, tmp_path / name)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["as_float"], to=TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["as_float", "axes"], ["sum"], keepdims=1),
         helper.make_node("Concat", ["sum", "sum"], ["logits"], axis=1)],
        "foreign",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 2])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
               str(tmp_path / "model.onnx"))
    clf = Classifier.load(tmp_path)
    assert clf.logits(["fun"]).shape == (1, 2)
    with pytest.raises(CheckpointError, match="hidden states need a graph written by distilsent"):
        clf.embed(["fun"])


def test_embed_verb_writes_npy_and_parquet_in_input_order(tiny_model_dir, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    expected = Classifier.load(tiny_model_dir).embed(TEXTS, pooling="mean", layer=1, normalize=True)
    args = ["--model", str(tiny_model_dir), "--pooling", "mean", "--layer", "1", "--normalize"]
    assert main(["embed", str(source), str(tmp_path / "out.npy"), *args]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert f"embed: {len(TEXTS)}/{len(TEXTS)} texts" in err  # progress on stderr
    assert summary["texts"] == len(TEXTS) and summary["dim"] == 32
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-6)

    table = tmp_path / "texts.csv"
    table.write_text("id,body\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)), encoding="utf-8")
    assert main(["embed", str(table), str(tmp_path / "out.parquet"), "--text-column", "body", "--quiet", *args]) == 0
    assert capsys.readouterr().err == ""
    written = pq.read_table(tmp_path / "out.parquet")
    assert written.column("text").to_pylist() == TEXTS
    np.testing.assert_allclose(np.array(written.column("embedding").to_pylist()), expected, atol=1e-6)

    assert main(["embed", str(source), str(tmp_path / "out.csv"), "--model", str(tiny_model_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("distilsent: error:") and ".npy or .parquet" in err and err.count("\n") == 1
