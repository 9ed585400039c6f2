"""Checkpoint directories in Hugging Face layout: find, load strictly, save (through :mod:`.directory`).

A checkpoint is ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``, read only through
``torch.load(weights_only=True)``) + ``tokenizer.json``/``vocab.txt`` (+ ``tokenizer_config.json``) +
``README.md``. ``"default"`` (or ``None``) is the embedded default model. Any other name that is not a local
directory is a Hub id: looked up in the local Hugging Face cache first, downloaded only when it is not there
and the Hub answers. Finding and reading the directory needs no torch; building a torch model does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError
from .config import DistilBertConfig
from .directory import CONFIG_NAME, PICKLE_NAME, SAFETENSORS_NAME, TOKENIZER_NAMES, writing
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    import torch

    from .distilbert import DistilBertForSequenceClassification

# Non-persistent buffers that some older transformers versions wrote into their checkpoints.
IGNORED_SUFFIXES = ("position_ids",)


def default_model_dir() -> Path:
    """The model trained by this project and shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "default_model"


DEFAULT_NAME = "default"  # the embedded model, in every verb and in Classifier.load
# A quick look at the Hub before downloading: huggingface_hub retries a refused or unresolvable connection
# for about 24 s, so without this an offline user waits that long for an error.
HUB_PROBE_SECONDS = 5.0


def resolve(path_or_id: str | os.PathLike | None) -> Path:
    """A local checkpoint directory for a path, a Hub id, or ``None``/``"default"`` (the embedded default model).

    ``"default"`` always means the embedded model; a local directory of that name is ``./default``.
    """
    if path_or_id is None or str(path_or_id) == DEFAULT_NAME:
        directory = default_model_dir()
        if not (directory / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"the default model is not installed at {directory}; pass a model path or build it with "
                "scripts/build_default_model.py"
            )
        return directory
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory with {CONFIG_NAME}")
    text = str(path_or_id)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text.replace("/", ""):
        raise CheckpointError(f"checkpoint directory {text} does not exist")
    return _from_hub_cache(text) or _download(text)


def _from_hub_cache(repo_id: str) -> Path | None:
    """The snapshot directory of ``repo_id`` in the local Hugging Face cache when it holds a config and
    weights; no network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    config = try_to_load_from_cache(repo_id, CONFIG_NAME)
    if not isinstance(config, str):  # None (never fetched) or the marker of a file known to be absent
        return None
    for name in (SAFETENSORS_NAME, PICKLE_NAME):
        if isinstance(try_to_load_from_cache(repo_id, name), str):
            return Path(config).parent
    return None


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be reached right now (offline mode, no route, refused), or ``None``."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
    except Exception as e:  # the hub's HTTP client (httpx or requests, by version) and its own error classes
        first_line = str(e).splitlines()[0] if str(e) else ""
        return f"{constants.ENDPOINT} cannot be reached ({type(e).__name__}: {first_line})"
    return None


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        raise CheckpointError(
            f"{repo_id} is not a local directory, and loading from the Hub needs huggingface_hub"
        ) from None
    reason = _hub_unreachable()
    if reason is not None:
        raise CheckpointError(
            f"{repo_id} is not a local directory nor in the Hugging Face cache, and {reason}"
        )
    try:
        config_path = Path(hf_hub_download(repo_id, CONFIG_NAME))
        for name in (SAFETENSORS_NAME, PICKLE_NAME):
            try:
                hf_hub_download(repo_id, name)
                break
            except EntryNotFoundError:
                continue
        for name in TOKENIZER_NAMES:
            try:
                hf_hub_download(repo_id, name)
            except EntryNotFoundError:
                continue
    except Exception as e:  # unknown repository, gated model, network errors after the probe
        raise CheckpointError(
            f"{repo_id} is not a local directory and could not be loaded from the Hub or its cache "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    return config_path.parent


def files_digest(directory: Path, names: Sequence[str], salt: str = "") -> str:
    """SHA-256 over ``salt`` and the named files of ``directory`` that exist (name and bytes of each), read
    in blocks: what decides whether a cached product of a checkpoint (a graph, a teacher's logits) is stale."""
    digest = hashlib.sha256(salt.encode())
    for name in names:
        path = directory / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def load_config(directory: Path) -> DistilBertConfig:
    return DistilBertConfig.from_json(directory / CONFIG_NAME)


def load_tokenizer(directory: Path, config: DistilBertConfig) -> Tokenizer:
    return Tokenizer.from_dir(directory, max_length=min(512, config.max_position_embeddings))


def load_state_dict(directory: Path) -> dict[str, "torch.Tensor"]:
    """Tensors of a checkpoint directory, from safetensors or from a weights-only pickle."""
    import torch

    safetensors_path = directory / SAFETENSORS_NAME
    pickle_path = directory / PICKLE_NAME
    if safetensors_path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(safetensors_path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{safetensors_path} is not a readable safetensors file ({e})") from None
    elif pickle_path.is_file():
        try:
            tensors = torch.load(pickle_path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for unsafe pickles, RuntimeError/EOFError for corrupt ones
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"{pickle_path} cannot be loaded as weights only (refusing unsafe or corrupt pickle): {first_line}"
            ) from None
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise CheckpointError(f"{pickle_path} does not hold a dictionary of tensors")
    else:
        raise CheckpointError(f"{directory} has neither {SAFETENSORS_NAME} nor {PICKLE_NAME}")
    return {k: v for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}


def check_state_dict(expected: dict[str, "torch.Tensor"], found: dict[str, "torch.Tensor"], source: str) -> None:
    """Raise a :class:`CheckpointError` naming every missing, unexpected and mis-shaped tensor."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append("missing " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected))
    for name in sorted(set(expected) & set(found)):
        if tuple(expected[name].shape) != tuple(found[name].shape):
            problems.append(
                f"{name} has shape {tuple(found[name].shape)}, the config needs {tuple(expected[name].shape)}"
            )
    if problems:
        raise CheckpointError(f"{source} does not match its config: " + "; ".join(problems))


def load_weights(directory: Path, config: DistilBertConfig) -> "DistilBertForSequenceClassification":
    """The float32 torch model of a checkpoint directory, in eval mode, loaded strictly."""
    import torch

    from .distilbert import DistilBertForSequenceClassification

    state_dict = load_state_dict(directory)
    with torch.device("meta"):
        model = DistilBertForSequenceClassification(config)
    check_state_dict(model.state_dict(), state_dict, str(directory))
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True, assign=True)
    return model.eval()


def load_model(path_or_id: str | os.PathLike | None) -> tuple["DistilBertForSequenceClassification", Tokenizer]:
    """The torch model (float32, eval mode) and tokenizer of a path, Hub id or the default model."""
    directory = resolve(path_or_id)
    config = load_config(directory)
    return load_weights(directory, config), load_tokenizer(directory, config)


def save_model(
    model: "DistilBertForSequenceClassification",
    tokenizer: Tokenizer,
    directory: str | os.PathLike,
    card: str | None = None,
    dtype: "torch.dtype | None" = None,
) -> Path:
    """Write a checkpoint directory that both distilsent and ``transformers`` load (see :mod:`.directory`).

    ``dtype`` (e.g. ``torch.float16``) stores the weights at lower precision; loading casts back to float32.
    """
    tensors = {name: tensor.to("cpu", dtype) for name, tensor in model.state_dict().items()}  # dtype None: as is
    with writing(directory) as written:
        written.write_config(model.config)
        written.write_weights(tensors)
        written.write_tokenizer(tokenizer)
        if card is not None:
            written.write_card(card)
    return Path(directory)
