"""scripts/build_default_model.py: its validation splits and its stage log (the stages themselves are runs
of train/distill/calibrate, tested where those live)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def build_module():
    spec = importlib.util.spec_from_file_location("build_default_model", ROOT / "scripts" / "build_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_validation_splits_are_disjoint_fixed_and_sentences_come_first(build_module, tmp_path):
    if not (DATA / "imdb" / "train.csv").is_file() or not (DATA / "sst2" / "train.tsv").is_file():
        pytest.skip(f"the SST-2 and IMDb training files are not at {DATA}")
    parts = build_module.Build(tmp_path, DATA).splits()
    again = build_module.Build(tmp_path, DATA).splits()
    assert all(parts[name] == again[name] for name in parts)  # the seeds fix them
    train = {e.text for e in parts["train"]}
    for held in ("sst2_select", "imdb_select", "imdb_report"):
        assert not train & {e.text for e in parts[held]}, held
    assert not {e.text for e in parts["imdb_select"]} & {e.text for e in parts["imdb_report"]}
    assert (len(parts["sst2_select"]), len(parts["imdb_report"])) == (2000, 2396) and len(parts["imdb_select"]) > 990
    # The teacher's logits cover the first len(sst2_train) training texts: the sentences.
    assert parts["train"][: len(parts["sst2_train"])] == parts["sst2_train"]
    assert parts["select"] == parts["sst2_select"] + parts["imdb_select"]


def test_stage_log_counts_the_time_of_interrupted_attempts(build_module, tmp_path):
    build = build_module.Build(tmp_path, DATA)
    build.interrupted("plain", 100.0)
    build.interrupted("plain", 50.0)
    assert not build_module.Build(tmp_path, DATA).done("plain")
    build.record("plain", 30.0, steps=7)
    reread = build_module.Build(tmp_path, DATA)
    assert reread.done("plain") and reread.log["plain"]["seconds"] == 180.0 and reread.log["plain"]["steps"] == 7
    assert json.loads((tmp_path / "stages.json").read_text())["plain"]["seconds"] == 180.0
