import io
import json
import sys

import pytest

from distilsent.data.examples import Example, parse_label, read_examples
from distilsent.errors import DataError

LABELS = ("NEGATIVE", "POSITIVE")


def test_sst2_tsv_with_no_options(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\nit \'s a "charming" film \t1\nawful , awful\t0\n', encoding="utf-8")
    assert read_examples(path) == [Example("it 's a \"charming\" film ", 1), Example("awful , awful", 0)]


def test_imdb_csv_with_names_and_quoted_newlines(tmp_path):
    path = tmp_path / "imdb.csv"
    path.write_text('review,sentiment\n"Great, truly.\nTwo lines",positive\nMeh,negative\nok,POS\n', encoding="utf-8")
    assert [(e.text, e.label) for e in read_examples(path)] == [("Great, truly.\nTwo lines", 1), ("Meh", 0), ("ok", 1)]


def test_jsonl_columns_and_stdin(tmp_path, monkeypatch):
    rows = [{"body": "good", "y": "pos"}, {"body": "bad", "y": 0}]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert read_examples(path, text_column="body", label_column="y") == [Example("good", 1), Example("bad", 0)]

    class Stdin:
        buffer = io.BytesIO(path.read_bytes())

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert read_examples("-", text_column="body", label_column="y") == [Example("good", 1), Example("bad", 0)]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["nice", "bad"], "label": [1, 0]}), tmp_path / "d.parquet")
    assert read_examples(tmp_path / "d.parquet") == [Example("nice", 1), Example("bad", 0)]


def test_multi_class_names(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,neu\nb,2\n", encoding="utf-8")
    assert [e.label for e in read_examples(path, labels=("neg", "neu", "pos"))] == [1, 2]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.tsv", "sentence\tlabel\nfine\t1\ntoo\tmany\tfields\n", "bad.tsv:3: expected 2 fields, found 3"),
        ("bad.tsv", "sentence\tlabel\nfine\t1\nodd\tmaybe\n", "bad.tsv:3: unknown label 'maybe'"),
        ("bad.csv", "text,label\nfine,1\nbig,7\n", "bad.csv:3: label id 7 is outside 0..1"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n', "bad.jsonl:2: invalid JSON"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', "bad.jsonl:2: expected a JSON object"),
        ("bad.jsonl", '{"text": 5, "label": 1}\n', "bad.jsonl:1: the text is a int"),
        ("bad.jsonl", '{"text": "a", "label": true}\n', "bad.jsonl:1: label True is a boolean"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{"label": 1}\n', "bad.jsonl:2: missing"),
        ("bad.csv", "words,stars\na,1\n", "cannot find a text column"),
        ("empty.csv", "", "the file is empty"),
        ("header.csv", "text,label\n", "no examples"),
        ("data.txt", "x", "cannot tell the format"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(")):
        read_examples(path)


def test_invalid_utf8_and_missing_file(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"sentence\tlabel\nok\t1\n\xff\t0\n")
    with pytest.raises(DataError, match="bad.tsv:3: invalid UTF-8"):
        read_examples(path)
    with pytest.raises(DataError, match="no such file"):
        read_examples(tmp_path / "missing.tsv")


def test_parse_label_aliases():
    assert [parse_label(v, LABELS) for v in ("neg", "Positive", " 1 ", 0, 1.0, "-")] == [0, 1, 1, 0, 1, 0]


def test_split_examples_is_seeded_disjoint_and_complete():
    from distilsent.data.examples import split_examples

    examples = [Example(f"text {i}", i % 2) for i in range(100)]
    rest, held = split_examples(examples, 0.1, seed=9)
    assert len(held) == 10 and len(rest) == 90
    assert sorted(e.text for e in rest + held) == sorted(e.text for e in examples)
    assert split_examples(examples, 0.1, seed=9) == (rest, held)
    assert split_examples(examples, 0.1, seed=10)[1] != held
    with pytest.raises(DataError, match="fraction"):
        split_examples(examples, 1.0, seed=9)


BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl"])
def test_a_binary_file_is_not_a_text_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BINARY)
    with pytest.raises(DataError, match=r"^.*d\.\w+: not a text file \(expected UTF-8 text\)$"):
        read_examples(path)


def test_read_texts_refuses_binary_files_and_stdin(tmp_path, monkeypatch):
    from distilsent.data.examples import read_texts

    path = tmp_path / "texts.txt"
    path.write_bytes(BINARY)
    with pytest.raises(DataError, match="texts.txt: not a text file"):
        read_texts(path)

    class Stdin:
        buffer = io.BytesIO("one\ntwo\n".encode("utf-16"))

    monkeypatch.setattr(sys, "stdin", Stdin)
    with pytest.raises(DataError, match="^stdin: not a text file"):
        read_texts("-")
    path.write_bytes("caf\u00e9 , great\nfine\n".encode("latin-1"))  # text, one byte of another encoding
    with pytest.raises(DataError, match="texts.txt:1: invalid UTF-8"):
        read_texts(path)


def test_label_map_maps_drops_and_names_the_row_of_a_value_it_does_not_know(tmp_path):
    from distilsent.data.examples import parse_label_map

    stars = tmp_path / "stars.csv"
    stars.write_text("text,stars\nawful,1\nmeh,3\nlovely,5\nok,4\n", encoding="utf-8")
    mapping = parse_label_map("1,2=NEGATIVE;3=- 4,5=POSITIVE")
    assert mapping == {"1": "NEGATIVE", "2": "NEGATIVE", "3": "-", "4": "POSITIVE", "5": "POSITIVE"}
    examples = read_examples(stars, label_map=mapping, source="stars")
    assert [(e.text, e.label, e.source) for e in examples] == [("awful", 0, "stars"), ("lovely", 1, "stars"),
                                                               ("ok", 1, "stars")]
    with pytest.raises(DataError, match=r"stars.csv:5: label '4' is not in the label map"):
        read_examples(stars, label_map={"1": "0", "3": "-", "5": "1"})
    for bad in ("1,2", "=NEGATIVE", "1=NEGATIVE 1=POSITIVE", ""):
        with pytest.raises(DataError, match="label map"):
            parse_label_map(bad)


def test_several_sources_with_weights(tmp_path):
    from distilsent.data.examples import Source, read_sources, source_weights

    a, b = tmp_path / "a.tsv", tmp_path / "b.jsonl"
    a.write_text("sentence\tlabel\ngood\t1\nbad\t0\n", encoding="utf-8")
    b.write_text('{"text": "fine", "sentiment": "positive"}\n', encoding="utf-8")
    sources = [Source.parse(f"{a}:0.5"), Source.parse(str(b))]
    assert (sources[0].path, sources[0].weight, sources[1].weight) == (str(a), 0.5, 1.0)
    examples = read_sources(sources)
    assert [(e.text, e.source) for e in examples] == [("good", "a.tsv"), ("bad", "a.tsv"), ("fine", "b.jsonl")]
    assert source_weights(sources, examples) == {"a.tsv": 0.5, "b.jsonl": 1.0}
    assert source_weights([Source(str(a)), Source(str(b))], examples) is None
    twice = read_sources([Source(str(a)), Source(str(a))])
    assert [e.source for e in twice] == ["a.tsv#1", "a.tsv#1", "a.tsv#2", "a.tsv#2"]
    with pytest.raises(DataError, match="weight must be a positive number"):
        Source.parse(f"{a}:-1")
    odd = tmp_path / "x:2"  # a file whose own name ends like a weight is taken whole
    odd.write_text("", encoding="utf-8")
    assert Source.parse(str(odd)) == Source(str(odd))
