import shutil
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distilsent.errors import InputError
from distilsent.model.tokenizer import Tokenizer

HARD_CASES = [
    "",
    "   \t\n  ",
    "Café déjà vu — naïve façade",
    "東京は素晴らしい映画の街です",
    "I loved it 😍🔥👍🏽 10/10",
    "control\x00chars\x07and\x1b[0m escapes\u200b zero-width",
    "UPPER lower MiXeD",
    "don't won't it's",
    "supercalifragilisticexpialidocious" * 5,
    " ".join(["word"] * 10_000),
]


@pytest.fixture(scope="module")
def pair(real_vocab, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("hf-tokenizer")
    shutil.copy(real_vocab, directory / "vocab.txt")  # a bare vocab.txt, as in the original checkpoints
    return Tokenizer.from_vocab(real_vocab), transformers.DistilBertTokenizerFast.from_pretrained(directory)


def reference(hf, texts, max_length=512):
    encoded = hf(texts, truncation=True, max_length=max_length, padding="longest", return_tensors="np")
    return encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)


def test_parity_on_sst2_dev(pair, sst2_dir):
    ours, hf = pair
    lines = (sst2_dir / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    texts = [line.split("\t")[0] for line in lines]
    assert len(texts) == 872
    for start in range(0, len(texts), 64):  # batches of mixed lengths, padded to their longest
        ids, mask = ours(texts[start : start + 64])
        ref_ids, ref_mask = reference(hf, texts[start : start + 64])
        assert ids.dtype == np.int64 and mask.dtype == np.int64
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(mask, ref_mask)


@pytest.mark.parametrize("max_length", [512, 16, 2])
def test_parity_on_hard_cases(pair, max_length):
    ours, hf = pair
    ids, mask = ours(HARD_CASES, max_length=max_length)
    ref_ids, ref_mask = reference(hf, HARD_CASES, max_length)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(mask, ref_mask)


def test_tokenizer_json_matches_vocab_txt(pair, tmp_path):
    ours, _ = pair
    ours.save(tmp_path)
    reloaded = Tokenizer.from_dir(tmp_path)  # prefers tokenizer.json
    assert reloaded.encode(HARD_CASES) == ours.encode(HARD_CASES)
    (tmp_path / "tokenizer.json").unlink()
    assert Tokenizer.from_dir(tmp_path).encode(HARD_CASES) == ours.encode(HARD_CASES)


def test_truncation_keeps_sep_and_can_be_refused(vocab_file):
    tokenizer = Tokenizer.from_vocab(vocab_file, max_length=8)
    (ids,) = tokenizer.encode(["good " * 20])
    assert len(ids) == 8 and ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id
    with pytest.raises(InputError, match="text 1 has more than 8 tokens"):  # counted no further than needed
        tokenizer.encode(["ok", "good " * 20], truncation=False)


def test_padding_and_mask(vocab_file):
    tokenizer = Tokenizer.from_vocab(vocab_file)
    ids, mask = tokenizer(["good", "a very good film", ""])
    assert ids.shape == mask.shape == (3, 6)
    assert mask.sum(axis=1).tolist() == [3, 6, 2]
    assert (ids[mask == 0] == tokenizer.pad_id).all()


@pytest.mark.parametrize("bad", [["ok", 3], ["ok", None], "just a string", [b"bytes"]])
def test_rejects_non_strings(vocab_file, bad):
    with pytest.raises(InputError):
        Tokenizer.from_vocab(vocab_file).encode(bad)


def test_shared_between_threads(vocab_file):
    tokenizer = Tokenizer.from_vocab(vocab_file)
    texts = [("good film " * (i % 13)) + "bad" for i in range(200)]
    expected = [tokenizer.encode(texts, max_length=m) for m in (8, 16, 64)]
    results, errors = {}, []

    def work(k):
        try:
            for _ in range(20):
                m = (8, 16, 64)[k % 3]
                assert tokenizer.encode(texts, max_length=m) == expected[k % 3]
            results[k] = True
        except Exception as e:  # collected and asserted below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6


def test_a_long_text_is_tokenized_from_a_bounded_prefix_not_whole(real_vocab):
    tokenizer = Tokenizer.from_vocab(real_vocab)
    seen = []
    backend = tokenizer._backend

    class Spy:
        def encode_batch(self, texts, **options):
            seen.extend(len(t) for t in texts)
            return backend.encode_batch(texts, **options)

    tokenizer._backend = Spy()
    bomb = "a gripping, beautiful film. " * 40_000  # 1.1 MB, over half a million tokens
    ids = tokenizer.encode([bomb])[0]
    assert ids == backend.encode(bomb[:20_000]).ids[:511] + [tokenizer.sep_id]
    assert max(seen) < 50_000
    with pytest.raises(InputError, match="more than 512 tokens"):
        tokenizer.encode([bomb], truncation=False)
    spaces = "great" + " " * 300_000 + "film " * 600  # mostly blank: the prefix has to grow
    assert tokenizer.encode([spaces])[0] == backend.encode(spaces).ids[:511] + [tokenizer.sep_id]


@pytest.fixture(scope="module")
def prefix_tokenizer(real_vocab):
    return Tokenizer.from_vocab(real_vocab)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(
        st.sampled_from(list("abcdefg hij,.!-'\t\n") + ["é", "e\u0301", "中", "\u00ad", "ß", "İ", "ﬁ", "x" * 40]),
        max_size=120,
    ).map("".join),
    limit=st.integers(2, 30),
)
def test_prefix_tokenization_equals_tokenizing_the_whole_text_then_cutting(prefix_tokenizer, text, limit):
    import distilsent.model.tokenizer as module

    whole = prefix_tokenizer._backend.encode(text).ids
    expected = whole if len(whole) <= limit else whole[: limit - 1] + [prefix_tokenizer.sep_id]
    chars = module.PREFIX_CHARS_PER_TOKEN
    module.PREFIX_CHARS_PER_TOKEN = 1  # cut as early as possible: the hardest case
    try:
        assert prefix_tokenizer.encode([text], limit)[0] == expected
    finally:
        module.PREFIX_CHARS_PER_TOKEN = chars
