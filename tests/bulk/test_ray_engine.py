"""``distilsent score --engine ray`` on a real local Ray instance (two CPUs), compared row for row with
the local engine: one output file, shards put back in order by their row column, and bad rows."""

from __future__ import annotations

import io
import os

import pytest

from distilsent.bulk.ray_engine import LOOPBACK_ONLY_ENV

os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")  # a local Ray on loopback only; read when Ray is imported
pytest.importorskip("ray.data")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import ray  # noqa: E402

from distilsent import Classifier  # noqa: E402
from distilsent.bulk.local import ScoreSettings, score_stream  # noqa: E402
from distilsent.bulk.ray_engine import score_on_ray  # noqa: E402
from distilsent.errors import DataError  # noqa: E402

from .test_local import TEXTS, read_table, records, write_table  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_csv_on_two_actors_is_byte_identical_to_the_local_engine(tmp_path, tiny_model_dir, local_ray):
    rows = records(250)
    rows[7]["review"] = 'quoted "words", a comma\nand a newline'
    source = write_table(tmp_path / "in.csv", rows)
    settings = ScoreSettings(all_scores=True, chunk_rows=40)
    local, on_ray = tmp_path / "local.csv", tmp_path / "ray.csv"
    score_stream(Classifier.load(tiny_model_dir), str(source), str(local), settings, progress=False)
    summary = score_on_ray(str(source), str(on_ray), settings, model=str(tiny_model_dir), actors=2, progress=False)
    assert summary["rows"] == summary["written"] == 250
    assert on_ray.read_bytes() == local.read_bytes()


def test_parquet_shards_carry_row_numbers_and_bad_rows_are_marked(tmp_path, tiny_model_dir, local_ray):
    rows = [{"text": TEXTS[i % len(TEXTS)] if i % 17 else None, "n": i} for i in range(120)]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source, row_group_size=25)
    settings = ScoreSettings(on_error="mark", chunk_rows=30)
    local = tmp_path / "local.parquet"
    score_stream(Classifier.load(tiny_model_dir), str(source), str(local), settings, progress=False)
    shards = tmp_path / "shards"
    summary = score_on_ray(str(source), str(shards), settings, model=str(tiny_model_dir), actors=2, shards=True,
                           progress=False)
    assert summary["marked"] == 8 and summary["written"] == 120
    assert len(list(shards.glob("*.parquet"))) >= 1
    got = pq.read_table(shards).sort_by("row").to_pylist()
    assert [r.pop("row") for r in got] == list(range(1, 121))
    assert got == read_table(local)


def test_bad_rows_fail_with_their_row_number_or_are_skipped(tmp_path, tiny_model_dir, local_ray):
    rows = [{"text": t, "n": i} for i, t in enumerate(TEXTS)]
    rows[5]["text"] = None
    source = write_table(tmp_path / "in.jsonl", rows)
    with pytest.raises(DataError, match=r"row 6: the text is missing"):
        score_on_ray(str(source), str(tmp_path / "x.jsonl"), ScoreSettings(), model=str(tiny_model_dir),
                     actors=1, progress=False)
    assert not (tmp_path / "x.jsonl").exists()
    target = tmp_path / "out.jsonl"
    summary = score_on_ray(str(source), str(target), ScoreSettings(on_error="skip", chunk_rows=4),
                           model=str(tiny_model_dir), actors=1, progress=False)
    assert summary["skipped"] == 1 and [r["n"] for r in read_table(target)] == [i for i in range(len(TEXTS)) if i != 5]


def test_blocks_are_recut_into_the_local_engines_chunks(local_ray):
    from distilsent.bulk.ray_engine import _numbered

    tables = [pa.table({"text": [f"t{i}" for i in range(start, start + n)]}) for start, n in
              ((0, 7), (7, 33), (40, 0), (40, 50), (90, 10))]
    numbered, total = _numbered(ray, ray.data.from_arrow(tables), "row", 40)
    chunks = [ray.get(ref) for ref in numbered.to_arrow_refs()]
    # Each actor batch is then exactly a local chunk, as the local engine cuts them.
    assert total == 100 and [c.num_rows for c in chunks] == [40, 40, 20]
    rows = [r for c in chunks for r in c.to_pylist()]
    assert [r["row"] for r in rows] == list(range(1, 101))
    assert [r["text"] for r in rows] == [f"t{i}" for i in range(100)]


def test_max_windows_and_blank_texts_are_bad_rows_on_ray_as_locally(tmp_path, tiny_model_dir, local_ray):
    # The tiny model's 64-token windows start every 31 tokens: 3 windows hold 124 words, not 125.
    rows = [{"text": "great fun"}, {"text": " ".join(["good"] * 125)}, {"text": ""}, {"text": " ".join(["good"] * 124)}]
    source = write_table(tmp_path / "in.jsonl", rows)
    settings = ScoreSettings(long_text="window", max_windows=3, on_error="mark", chunk_rows=2)
    summary = score_on_ray(str(source), str(tmp_path / "ray.jsonl"), settings, model=str(tiny_model_dir), actors=1,
                           progress=False)
    assert summary["marked"] == 2
    local = tmp_path / "local.jsonl"
    score_stream(Classifier.load(tiny_model_dir), str(source), str(local), settings, progress=False,
                 stderr=io.StringIO())
    out = read_table(tmp_path / "ray.jsonl")
    assert out == read_table(local)
    assert "more than 3 windows" in out[1]["error"] and out[2]["error"] == "the text is empty"
