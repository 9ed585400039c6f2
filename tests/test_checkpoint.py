import os
import shutil
import subprocess
import sys

import pytest
import torch

from distilsent.checkpoint import load_model, resolve, save_model
from distilsent.errors import CheckpointError

transformers = pytest.importorskip("transformers")


def batch(tokenizer):
    ids, mask = tokenizer(["a great film", "not good , very boring and bad plot", "fun"])
    return torch.from_numpy(ids), torch.from_numpy(mask)


def test_saved_model_loads_in_transformers_with_identical_logits(tiny_model_dir, tmp_path):
    model, tokenizer = load_model(tiny_model_dir)
    save_model(model, tokenizer, tmp_path / "saved")
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    ids, mask = batch(tokenizer)
    assert hf_tokenizer(["a great film"])["input_ids"][0] == ids[0][mask[0].bool()].tolist()
    with torch.no_grad():
        assert torch.equal(model(ids, mask), theirs(input_ids=ids, attention_mask=mask).logits)
    assert theirs.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_loads_what_transformers_saved(tiny_model_dir, tmp_path, safe_serialization):
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    if safe_serialization:
        theirs.save_pretrained(tmp_path)
    else:  # the pickle format of older checkpoints, read only through weights_only loading
        torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")
        theirs.config.save_pretrained(tmp_path)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, tmp_path / name)
    model, tokenizer = load_model(tmp_path)
    ids, mask = batch(tokenizer)
    with torch.no_grad():
        assert torch.equal(model(ids, mask), theirs(input_ids=ids, attention_mask=mask).logits)


def test_float16_storage_halves_the_file_and_loads_as_float32(tiny_model_dir, tmp_path):
    model, tokenizer = load_model(tiny_model_dir)
    save_model(model, tokenizer, tmp_path, dtype=torch.float16)
    reloaded, _ = load_model(tmp_path)
    assert all(p.dtype == torch.float32 for p in reloaded.parameters())
    size16 = (tmp_path / "model.safetensors").stat().st_size
    size32 = (tiny_model_dir / "model.safetensors").stat().st_size
    assert size16 < 0.6 * size32


@pytest.fixture
def copy(tiny_model_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


def test_missing_directory_and_files(tmp_path, copy):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(str(tmp_path / "nope"))
    (copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        load_model(copy)


def test_missing_config(copy):
    (copy / "config.json").unlink()
    with pytest.raises(Exception, match="config.json does not exist"):
        load_model(copy)


def test_wrong_shape_missing_and_unexpected_tensors_are_named(copy):
    from safetensors.torch import load_file, save_file

    tensors = load_file(copy / "model.safetensors")
    tensors["pre_classifier.weight"] = torch.zeros(3, 3)
    del tensors["classifier.bias"]
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, copy / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_model(copy)
    message = str(error.value)
    assert "missing classifier.bias" in message
    assert "unexpected extra.weight" in message
    assert "pre_classifier.weight has shape (3, 3), the config needs (32, 32)" in message


def test_truncated_safetensors(copy):
    path = copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        load_model(copy)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_that_is_not_weights_only_is_refused(copy):
    (copy / "model.safetensors").unlink()
    torch.save({"weights": Payload()}, copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot be loaded as weights only"):
        load_model(copy)


def test_hub_id_from_the_offline_cache(tiny_model_dir, tmp_path):
    """A Hub id resolves from huggingface_hub's cache with no network (HF_HUB_OFFLINE=1)."""
    snapshot = tmp_path / "hub" / "models--someone--tiny-sentiment" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = "from distilsent import Classifier; print(Classifier.load('someone/tiny-sentiment')('great film')[0]['label'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("NEGATIVE", "POSITIVE")
    code = "from distilsent import Classifier; Classifier.load('someone/not-cached')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "someone/not-cached is not a local directory and could not be loaded from the Hub or its cache" in done.stderr
