"""The one writer of model directories: which files a written model has, which it takes from a source, which
it removes from the output, and that no interrupted write leaves a directory that loads."""

import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from distilsent.errors import CheckpointError, ConfigError, InputError
from distilsent.model.checkpoint import load_config, load_tokenizer
from distilsent.model.directory import STAGING_PREFIX, writing
from distilsent.runtime.classifier import Classifier

TEXTS = ["a great film", "not good , very boring and bad plot", "fun"]
TOKENIZER = {"tokenizer.json", "vocab.txt", "tokenizer_config.json"}
# What a source directory may hold besides a model: none of it belongs in a model written from it.
FOREIGN = ("pytorch_model.bin", "model.onnx", "README.md", "resume.pt", "tf_model.h5", "metrics.jsonl")


def names(directory):
    return {p.name for p in directory.iterdir()}


@pytest.fixture
def source(tiny_model_dir, tmp_path):
    """The tiny model with a special-tokens map and files that are not to be carried."""
    directory = tmp_path / "source"
    shutil.copytree(tiny_model_dir, directory)
    (directory / "special_tokens_map.json").write_text('{"cls_token": "[CLS]"}')
    for name in FOREIGN:
        (directory / name).write_bytes(b"stale")
    (directory / ".cache").mkdir()
    (directory / ".cache" / "x").write_text("cached")
    return directory


def rewrite(source, out, scale=2.0):
    """``source``'s model with its head scaled, written through the writer with the source's tokenizer."""
    tensors = load_file(str(source / "model.safetensors"))
    tensors["classifier.weight"] = tensors["classifier.weight"] * scale
    with writing(out) as written:
        written.write_config(load_config(source))
        written.write_weights(tensors)
        written.carry_tokenizer(source)
    return tensors


def test_only_the_tokenizer_files_of_a_source_are_carried(source, tmp_path):
    out = tmp_path / "out"
    rewrite(source, out)
    assert names(out) == {"config.json", "model.safetensors", "special_tokens_map.json"} | TOKENIZER
    for name in names(out) - {"model.safetensors", "config.json"}:
        assert (out / name).read_bytes() == (source / name).read_bytes()
    original = Classifier.load(source, backend="torch").logits(TEXTS)
    np.testing.assert_allclose(Classifier.load(out, backend="torch").logits(TEXTS), 2 * original, rtol=1e-5)


def test_a_new_model_removes_the_old_model_files_and_keeps_other_files(source, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(source, out)
    (out / "notes.txt").write_text("mine")
    with writing(out) as written:
        written.write_config(load_config(source))
        written.write_weights(load_file(str(source / "model.safetensors")))
        written.write_tokenizer(load_tokenizer(source, load_config(source)))
    model_files = {"config.json", "model.safetensors"} | TOKENIZER
    assert names(out) == model_files | {"notes.txt", "resume.pt", "tf_model.h5", "metrics.jsonl", ".cache"}
    # the pickle, the graph and the card of the old model are gone: none of them is the new model's (the stale
    # graph would not even load)
    want = Classifier.load(source, backend="torch").logits(TEXTS)
    np.testing.assert_allclose(Classifier.load(out).logits(TEXTS), want, atol=1e-4)


def test_in_place_rewrites_the_model_from_its_own_files(source):
    before = Classifier.load(source, backend="torch").logits(TEXTS)
    rewrite(source, source, scale=3.0)
    assert "model.onnx" not in names(source) and "pytorch_model.bin" not in names(source)
    np.testing.assert_allclose(Classifier.load(source).logits(TEXTS), 3 * before, rtol=1e-4, atol=1e-4)


def test_a_failing_write_leaves_the_output_as_it_was(source, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(source, out)
    before = {name: (out / name).read_bytes() for name in names(out) if (out / name).is_file()}
    with pytest.raises(RuntimeError, match="parity failed"):
        with writing(out) as written:
            written.write_config(load_config(source))
            written.write_weights({"classifier.weight": np.zeros((2, 32), np.float32)})
            raise RuntimeError("parity failed")
    assert {name: (out / name).read_bytes() for name in names(out) if (out / name).is_file()} == before
    assert names(out) == names(source)  # no staging directory left behind
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with writing(fresh):
            raise RuntimeError("interrupted")
    assert not fresh.exists()


def test_an_interrupted_commit_leaves_a_directory_that_does_not_load(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(source, out)
    replace, moved = os.replace, []

    def fail_after_one(src, dst):
        if moved:
            raise OSError("disk full")
        moved.append(dst)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_after_one)
    with pytest.raises(OSError, match="disk full"):
        rewrite(source, out)
    monkeypatch.setattr(os, "replace", replace)
    assert len(moved) == 1 and "config.json" not in names(out)  # a mix of two models, but one that cannot load
    with pytest.raises(ConfigError, match="does not exist"):
        Classifier.load(out)
    assert not [name for name in names(out) if name.startswith(STAGING_PREFIX)]


def test_a_model_that_would_not_load_is_not_written(source, tmp_path):
    with pytest.raises(CheckpointError, match="lacks a tokenizer and weights or a graph"):
        with writing(tmp_path / "out") as written:
            written.write_config(load_config(source))
    assert not (tmp_path / "out").exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(CheckpointError, match="has neither tokenizer.json nor vocab.txt"):
        with writing(tmp_path / "out") as written:
            written.carry_tokenizer(bare)


def test_an_output_that_cannot_be_a_directory_is_an_input_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="cannot create the output directory"):
        with writing(tmp_path / "file" / "out"):
            pass
