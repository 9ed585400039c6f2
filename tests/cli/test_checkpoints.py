import pytest

from distilsent.cli import main

from .conftest import blocked, labelled_file


def test_convert_without_torch_says_what_to_install(tiny_model_dir, tmp_path):
    done = blocked("torch", ["convert", str(tiny_model_dir), str(tmp_path / "out")])
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("distilsent: error: ") and done.stderr.count("\n") == 1
    assert "needs PyTorch: pip install 'distilsent[" in done.stderr


def test_export_parity_progress_on_stderr_unless_quiet(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["export", str(tiny_model_dir), str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("parity: 24/24 texts (100%) ") and " in 0:00:" in err  # 12 texts, torch then ONNX
    assert main(["export", str(tiny_model_dir), str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_export_parity_data_without_torch_is_an_error_before_exporting(tiny_model_dir, tmp_path):
    data = str(labelled_file(tmp_path / "d.tsv"))
    done = blocked("torch", ["export", str(tiny_model_dir), str(tmp_path / "int8"), "--int8", "--parity-data", data])
    assert done.returncode == 1, done.stderr
    assert done.stderr == ("distilsent: error: --parity-data compares the export with the PyTorch model, which needs "
                           "torch: pip install 'distilsent[torch]'\n")
    assert not (tmp_path / "int8").exists()
    # Without --parity-data the comparison on the built-in sentences is a courtesy: it is skipped.
    done = blocked("torch", ["export", str(tiny_model_dir), str(tmp_path / "plain"), "--quiet"])
    assert done.returncode == 0, done.stderr
    assert "parity: skipped" in done.stdout and (tmp_path / "plain" / "model.onnx").is_file()
