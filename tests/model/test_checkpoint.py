import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distilsent.errors import CheckpointError, ConfigError
from distilsent.model.checkpoint import default_model_dir, load_model, resolve, save_model

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


def test_float16_storage_loads_as_float32_in_transformers_without_a_dtype(tiny_model_dir, tmp_path):
    model, tokenizer = load_model(tiny_model_dir)
    save_model(model, tokenizer, tmp_path, dtype=torch.float16)
    ours, _ = load_model(tmp_path)
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert {p.dtype for p in theirs.parameters()} == {torch.float32}
    ids, mask = batch(tokenizer)
    with torch.no_grad():
        logits = theirs(input_ids=ids, attention_mask=mask).logits
        assert logits.dtype == torch.float32
        assert torch.equal(ours(ids, mask), logits)


def test_the_shipped_default_model_loads_as_float32_in_transformers():
    if not (default_model_dir() / "model.safetensors").is_file():
        pytest.skip("the default model is not installed")
    ours, tokenizer = load_model(default_model_dir())
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(default_model_dir()).eval()
    ids, mask = batch(tokenizer)
    with torch.no_grad():
        logits = theirs(input_ids=ids, attention_mask=mask).logits
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, ours(ids, mask), rtol=0, atol=1e-5)


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
    with pytest.raises(ConfigError, match=f"config: {re.escape(str(copy / 'config.json'))} does not exist"):
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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_weights_follow_the_umask(tiny_model_dir, tmp_path, umask, mode):
    model, tokenizer = load_model(tiny_model_dir)
    previous = os.umask(umask)
    try:
        save_model(model, tokenizer, tmp_path)
    finally:
        os.umask(previous)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == mode
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == mode


def test_default_is_the_embedded_model_everywhere():
    if not (default_model_dir() / "config.json").is_file():
        pytest.skip("the default model is not built")
    assert resolve("default") == resolve(None) == default_model_dir()
    from distilsent import Classifier

    assert Classifier.load("default").config == Classifier.load().config
    assert Classifier.load("default").name == Classifier.load().name == "distilsent-default"
    pytest.importorskip("fastapi")
    from distilsent.serving.app import load_classifier
    from distilsent.serving.settings import ServiceSettings

    served = load_classifier(ServiceSettings(model="default"))  # what `serve --model default` loads
    assert served("a gripping, beautiful film")[0]["label"] == "POSITIVE"


def hub_cache(tiny_model_dir, tmp_path) -> Path:
    """A Hugging Face cache holding ``someone/tiny-sentiment``, laid out as huggingface_hub writes it."""
    snapshot = tmp_path / "hub" / "models--someone--tiny-sentiment" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    return tmp_path / "hub"


# Without the look into the cache first and the quick probe of the Hub, huggingface_hub retries an
# unreachable endpoint for about 24 s before giving up; these runs are bounded well below that.
BOUND_SECONDS = 15
# A port nobody listens on: connections are refused at once, as on a machine without network.
UNREACHABLE = {"HF_ENDPOINT": "http://127.0.0.1:9"}


@pytest.mark.parametrize("network", [{"HF_HUB_OFFLINE": "1"}, UNREACHABLE], ids=["offline", "unreachable"])
def test_names_resolve_from_the_cache_or_fail_fast_without_network(tiny_model_dir, tmp_path, network):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    env.update(HF_HUB_CACHE=str(hub_cache(tiny_model_dir, tmp_path)), **network)
    predict = [sys.executable, "-m", "distilsent", "predict", "--model"]

    def run(*argv):
        return subprocess.run([*predict, *argv], env=env, capture_output=True, text=True, timeout=BOUND_SECONDS)

    cached = run("someone/tiny-sentiment", "great film")
    assert cached.returncode == 0, cached.stderr
    assert json.loads(cached.stdout)["label"] in ("NEGATIVE", "POSITIVE")
    if (default_model_dir() / "config.json").is_file():
        default = run("default", "great film")
        assert default.returncode == 0, default.stderr
        assert json.loads(default.stdout)["label"] == "POSITIVE"
    missing = run("someone/not-cached", "x")
    assert missing.returncode == 1
    why = "HF_HUB_OFFLINE is set" if "HF_HUB_OFFLINE" in network else "http://127.0.0.1:9 cannot be reached"
    assert missing.stderr.startswith(
        f"distilsent: error: someone/not-cached is not a local directory nor in the Hugging Face cache, and {why}"
    )
    assert missing.stderr.count("\n") == 1


def test_saving_over_an_exported_model_leaves_no_stale_graph(tiny_model_dir, tmp_path):
    """save_model writes through the one writer: the graph of the model that was there goes with it."""
    from distilsent import Classifier
    from distilsent.runtime.export import export

    export(tiny_model_dir, tmp_path / "m")
    model, tokenizer = load_model(tiny_model_dir)
    with torch.no_grad():
        model.classifier.weight.mul_(-1)
    save_model(model, tokenizer, tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json"}
    texts = ["a great film", "boring and bad"]
    want = Classifier.load(tmp_path / "m", backend="torch").logits(texts)
    np.testing.assert_allclose(Classifier.load(tmp_path / "m").logits(texts), want, atol=1e-4)
    assert not np.allclose(want, Classifier.load(tiny_model_dir).logits(texts), atol=1e-3)
