"""The flat layout's module paths (distilsent 0.1) still import, as the very modules that moved."""

import importlib
import subprocess
import sys

import pytest

from distilsent.moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_gives_the_moved_module(old):
    assert importlib.import_module(f"distilsent.{old}") is importlib.import_module(f"distilsent.{MOVED[old]}")


def test_the_readme_imports_of_the_old_layout_work_in_a_fresh_process():
    code = ("from distilsent.calibration import calibrate; from distilsent.distill import distill, DistillConfig; "
            "from distilsent.explain import explain; from distilsent.train import train; "
            "from distilsent.data import read_examples, split_examples; from distilsent.long_text import Reading; "
            "from distilsent.service_settings import ServiceSettings; from distilsent.probe import run_probe; "
            "import distilsent.fewshot, distilsent.lora, distilsent.training.train as t; "
            "assert train is t.train and distilsent.fewshot.fewshot")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_old_model_module_hands_on_the_network_without_importing_torch_for_the_rest():
    code = ("import sys; import distilsent.model.config; assert 'torch' not in sys.modules; "
            "from distilsent.model import DistilBertForSequenceClassification; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_name_is_still_an_import_error():
    with pytest.raises(ImportError):
        importlib.import_module("distilsent.no_such_module")
    with pytest.raises(ImportError):
        exec("from distilsent.model import no_such_name")
