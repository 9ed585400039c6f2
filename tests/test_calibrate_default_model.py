"""scripts/calibrate_default_model.py: which SST-2 rows are whole sentences, and the twin's held-out split
(the twin itself is a run of train(..., stop_after=), tested in test_train.py)."""

import importlib.util
from pathlib import Path

from distilsent.data import Example

ROOT = Path(__file__).resolve().parent.parent


def script():
    spec = importlib.util.spec_from_file_location("calibrate_default_model",
                                                  ROOT / "scripts" / "calibrate_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A small SST-2: two sentences with some of their phrases (a phrase may be shared), and a lone phrase.
SENTENCES = ["the film is a gem .", "a dull , lifeless film"]
PHRASES = ["the film", "film", "a gem", "is a gem .", "dull , lifeless", "a dull", "lifeless film"]


def test_whole_sentences_are_the_rows_that_are_no_other_rows_phrase():
    module = script()
    texts = set(SENTENCES + PHRASES + ["gem"])
    # "gem" is inside "a gem"; a phrase must be a run of whole words ("film" is not inside "films").
    assert module.whole_sentences(texts) == sorted(SENTENCES)
    assert module.whole_sentences({"films", "film"}) == ["film", "films"]


def test_held_out_sentences_take_every_phrase_of_theirs_out_of_training(monkeypatch):
    module = script()
    monkeypatch.setattr(module, "HELD_OUT", 1)
    examples = [Example(t, 1) for t in SENTENCES + PHRASES] + [Example(SENTENCES[0], 1)]  # a repeated row
    for seed in range(6):
        monkeypatch.setattr(module, "SEED", seed)
        train, held, n_sentences = module.split(examples)
        assert n_sentences == 2 and len(held) == 1 and held[0].text in SENTENCES
        words = held[0].text.split(" ")
        phrases = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}
        assert not {e.text for e in train} & phrases
        other = SENTENCES[1 - SENTENCES.index(held[0].text)]
        assert other in {e.text for e in train}
        assert module.split(examples) == (train, held, n_sentences)  # the seed fixes it
