import argparse
import json
import shutil

import pytest

from distilsent import Classifier
from distilsent.cli import main
from distilsent.cli.options import comma_names, label_names, port, positive_int, probability, reading, top_k
from distilsent.runtime.long_text import Reading

from .conftest import labelled_file, run

OWN = {"long_text": "window", "window": 32, "stride": 10, "aggregate": "max"}


@pytest.fixture(scope="module")
def reading_model(tiny_model_dir, tmp_path_factory):
    """The tiny model carrying a reading of its own in its config.json."""
    directory = tmp_path_factory.mktemp("own-reading") / "model"
    shutil.copytree(tiny_model_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    config.setdefault("distilsent", {})["reading"] = OWN
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def flags(model, **given) -> argparse.Namespace:
    return argparse.Namespace(model=str(model), **{"long_text": None, "window": None, "stride": None,
                                                   "aggregate": None, **given})


def test_no_reading_flag_is_no_reading(reading_model):
    assert reading(flags(reading_model)) is None
    assert reading(flags("/does/not/exist")) is None  # nothing is looked up when nothing is asked


def test_long_text_replaces_the_model_reading(reading_model):
    assert reading(flags(reading_model, long_text="window")) == Reading("window")
    assert reading(flags(reading_model, long_text="window", stride=5)) == Reading("window", stride=5)
    assert reading(flags(reading_model, long_text="truncate")) == Reading()


def test_other_flags_alone_adjust_the_model_reading(reading_model, tiny_model_dir):
    assert reading(flags(reading_model, window=16)) == Reading("window", 16, 10, None, "max")
    assert reading(flags(reading_model, aggregate="mean", stride=4)) == Reading("window", 32, 4, None, "mean")
    assert reading(flags(tiny_model_dir, window=16)) == Reading("truncate", window=16)  # a model with none


@pytest.mark.parametrize("given", [{}, {"long_text": "window"}, {"window": 16}, {"stride": 5, "aggregate": "mean"},
                                   {"long_text": "head_tail"}])
def test_the_reading_is_what_the_library_reads_from_the_same_options(reading_model, given):
    """The one Reading the flags give is the classifier's reading when Classifier.load gets the same options."""
    expected = Classifier.load(reading_model, **given).reading
    assert (reading(flags(reading_model, **given)) or Classifier.load(reading_model).reading) == expected


def test_predict_reads_as_the_flags_say_over_the_model_reading(reading_model, capsys):
    text = " ".join(["good fun awful"] * 30)
    for argv, options in [([], {}), (["--window", "16"], {"window": 16}), (["--long-text", "window"],
                                                                           {"long_text": "window"})]:
        code, lines, _ = run(["predict", "--model", str(reading_model), "--top-k", "all", *argv, text], capsys)
        assert code == 0 and lines == Classifier.load(reading_model, **options)([text], top_k=None)
    assert lines != Classifier.load(reading_model)([text], top_k=None)  # the flag did change the reading


def test_a_window_too_narrow_for_a_token_is_one_line_exit_1(reading_model, capsys):
    code, lines, err = run(["predict", "--model", str(reading_model), "--window", "2", "fun"], capsys)
    assert (code, lines) == (1, [])
    assert err == "distilsent: error: window must leave room for [CLS], a token and [SEP], got 2\n"


@pytest.mark.parametrize("parse, good, bad", [
    (top_k, [("all", None), ("3", 3)], ["0", "x"]),
    (positive_int, [("1", 1)], ["0", "-2", "1.5"]),
    (port, [("1", 1), ("65535", 65535)], ["0", "65536", "http"]),
    (probability, [("0", 0.0), ("0.7", 0.7), ("1", 1.0)], ["-0.1", "1.1", "half"]),
    (label_names, [("neg, pos", ("neg", "pos"))], ["pos", "a,a", ","]),
    (comma_names, [("q_lin,v_lin", ("q_lin", "v_lin"))], [",", ""]),
])
def test_argparse_types(parse, good, bad):
    for value, expected in good:
        assert parse(value) == expected
    for value in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(value).replace(".", r"\.")):
            parse(value)


def test_format_flag_reads_files_without_a_known_extension(tiny_model_dir, tmp_path, capsys):
    data = labelled_file(tmp_path / "reviews.data")
    assert main(["eval", str(tiny_model_dir), str(data), "--quiet"]) == 1
    assert "cannot tell the format from the extension; name it with --format" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), str(data), "--format", "tsv", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 8
    for verb in (["train", "x", "--out", "y"], ["export", "default", "y"]):
        with pytest.raises(SystemExit):
            main([*verb, "--format", "xml"])
        assert "argument --format: invalid choice: 'xml'" in capsys.readouterr().err
