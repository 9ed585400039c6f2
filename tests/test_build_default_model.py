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


def test_validation_splits_are_disjoint_fixed_and_cover_every_source(build_module, tmp_path):
    if not all((DATA / name).is_file() for name in build_module.FILES):
        pytest.skip(f"the training files of the default model are not all at {DATA}")
    parts = build_module.Build(tmp_path, DATA).splits()
    again = build_module.Build(tmp_path, DATA).splits()
    assert all(parts[name] == again[name] for name in parts)  # the seeds fix them
    train = {e.text for e in parts["train"]}
    held = [f"select:{name}" for name in build_module.SOURCES] + ["imdb_report"]
    for name in held:
        assert parts[name] and not train & {e.text for e in parts[name]}, name
    assert not {e.text for e in parts["select:imdb"]} & {e.text for e in parts["imdb_report"]}
    assert {e.source for e in parts["train"]} == set(build_module.SOURCES) == {e.source for e in parts["select"]}
    assert (len(parts["select:sst2"]), len(parts["imdb_report"]), len(parts["select:amazon"])) == (2000, 2396, 1500)
    # benchmarks/transfer.py's test rows are never trained on, and one Amazon domain not at all
    transfer = importlib.util.spec_from_file_location("transfer", ROOT / "benchmarks" / "transfer.py")
    module = importlib.util.module_from_spec(transfer)
    transfer.loader.exec_module(module)
    tasks = module.tasks()
    for name, task in tasks.items():
        assert not train & {text for text, _ in task["test"]}, name
    kitchen = {text for text, _ in tasks["amazon-kitchen_&_housewares"]["train"]}
    assert not train & kitchen and build_module.AMAZON_HELD_OUT_DOMAIN == "kitchen_&_housewares"
    assert all(e.label in (0, 1) for e in parts["train"])  # stars and tweets binarised


def test_stage_log_counts_the_time_of_interrupted_attempts(build_module, tmp_path):
    build = build_module.Build(tmp_path, DATA)
    build.interrupted("train", 100.0)
    build.interrupted("train", 50.0)
    assert not build_module.Build(tmp_path, DATA).done("train")
    build.record("train", 30.0, steps=7)
    reread = build_module.Build(tmp_path, DATA)
    assert reread.done("train") and reread.log["train"]["seconds"] == 180.0 and reread.log["train"]["steps"] == 7
    assert json.loads((tmp_path / "stages.json").read_text())["train"]["seconds"] == 180.0


def test_a_work_directory_of_another_recipe_is_refused_not_resumed(build_module, tmp_path):
    build = build_module.Build(tmp_path, DATA)
    build.check_recipe()
    build.record("split", 1.0)
    build_module.Build(tmp_path, DATA).check_recipe()  # the same recipe resumes
    with pytest.raises(SystemExit, match="another recipe"):
        build_module.Build(tmp_path, DATA, sample=40).check_recipe()
    log = json.loads((tmp_path / "stages.json").read_text())
    log["recipe"]["train"]["learning_rate"] *= 2
    (tmp_path / "stages.json").write_text(json.dumps(log))
    with pytest.raises(SystemExit, match="another recipe"):
        build_module.Build(tmp_path, DATA).check_recipe()
    del log["recipe"]  # a log from before recipes were recorded
    (tmp_path / "stages.json").write_text(json.dumps(log))
    with pytest.raises(SystemExit, match="none recorded"):
        build_module.Build(tmp_path, DATA).check_recipe()


def test_sweep_candidates_are_valid_recipes_and_the_budget_ones_fit_the_build(build_module):
    from dataclasses import replace

    spec = importlib.util.spec_from_file_location("sweep", ROOT / "scripts" / "sweep_default_recipes.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    shipped = build_module.recipe()
    for name, (weights, changes, budget) in sweep.CANDIDATES.items():
        assert set(weights) == set(build_module.SOURCES), name
        config = replace(shipped, **changes)  # TrainConfig checks every setting
        if budget:  # no more steps of no longer sequences than the shipped recipe's one pass
            assert config.max_steps == sweep.STEPS and config.epochs == shipped.epochs == 1, name
            assert (config.batch_size, config.max_length) == (shipped.batch_size, shipped.max_length), name
    assert {budget for _, _, budget in sweep.CANDIDATES.values()} == {True, False}
