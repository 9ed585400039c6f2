import json

from distilsent import Classifier
from distilsent.cli import main
from distilsent.runtime.cache import cache_entries, clear_cache


def test_list_and_clear_the_onnx_graph_cache(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILSENT_CACHE", str(tmp_path / "cache"))
    assert cache_entries() == []
    Classifier.load(tiny_model_dir)  # builds the graph once
    (entry,) = cache_entries()
    assert entry.checkpoint == str(tiny_model_dir.resolve())
    assert entry.bytes == sum(f.stat().st_size for f in entry.path.iterdir()) > 0

    # Only digest-named graph directories are the cache's to remove.
    (tmp_path / "cache" / "onnx" / "mine").mkdir()
    (tmp_path / "cache" / "notes.txt").write_text("keep")

    assert main(["cache", "list"]) == 0
    (line,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert line["path"] == str(entry.path) and line["bytes"] == entry.bytes
    assert line["checkpoint"] == str(tiny_model_dir.resolve()) and line["built"].endswith("+00:00")

    assert main(["cache", "clear"]) == 0
    assert json.loads(capsys.readouterr().out) == {"removed": 1, "bytes": entry.bytes}
    assert cache_entries() == [] and not entry.path.exists()
    assert (tmp_path / "cache" / "onnx" / "mine").is_dir() and (tmp_path / "cache" / "notes.txt").is_file()
    assert main(["cache", "list"]) == 0 and capsys.readouterr().out == ""
    assert clear_cache() == (0, 0)

    Classifier.load(tiny_model_dir)  # rebuilt on next use
    assert len(cache_entries()) == 1
