"""Uncased WordPiece tokenization through the ``tokenizers`` library, identical to Hugging Face's.

The wrapped ``tokenizers.Tokenizer`` is configured once and never mutated afterwards (truncation and
padding are done here on the id lists), so one instance is safe to share between threads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, InputError

DEFAULT_MAX_LENGTH = 512
# A long text is first tokenized from this many characters per token of the limit (English averages
# about 4-5 per WordPiece token); only text made mostly of spaces or control characters needs more,
# and then the prefix grows fourfold until the first ``max_length`` tokens are certain.
PREFIX_CHARS_PER_TOKEN = 8


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InputError("expected a list of texts, got a single string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"text {i} is a {type(text).__name__}, expected a string")
    return texts


class Tokenizer:
    """Turns texts into ``[CLS] wordpieces [SEP]`` id lists and pads batches of them.

    ``specials`` names the start, end and padding tokens of the vocabulary (a RoBERTa-style one such as
    MPNet's has ``("<s>", "</s>", "<pad>")``).
    """

    def __init__(self, backend, max_length: int = DEFAULT_MAX_LENGTH,
                 specials: tuple[str, str, str] = ("[CLS]", "[SEP]", "[PAD]")):
        backend.no_truncation()
        backend.no_padding()
        self._backend = backend
        self.max_length = max_length
        self.cls_id, self.sep_id, self.pad_id = (self._special_id(token) for token in specials)

    def _special_id(self, token: str) -> int:
        token_id = self._backend.token_to_id(token)
        if token_id is None:
            raise CheckpointError(f"tokenizer: the vocabulary has no {token} token")
        return token_id

    @classmethod
    def from_dir(cls, directory: str | Path, max_length: int = DEFAULT_MAX_LENGTH) -> "Tokenizer":
        """Load ``tokenizer.json`` when present, else build from ``vocab.txt`` and ``tokenizer_config.json``."""
        directory = Path(directory)
        if (directory / "tokenizer.json").is_file():
            return cls.from_file(directory / "tokenizer.json", max_length)
        if (directory / "vocab.txt").is_file():
            options = {}
            config_path = directory / "tokenizer_config.json"
            if config_path.is_file():
                try:
                    options = json.loads(config_path.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise CheckpointError(f"tokenizer: {config_path} is not valid JSON ({e})") from None
            return cls.from_vocab(
                directory / "vocab.txt",
                lowercase=options.get("do_lower_case", True),
                strip_accents=options.get("strip_accents"),
                handle_chinese_chars=options.get("tokenize_chinese_chars", True),
                max_length=max_length,
            )
        raise CheckpointError(f"tokenizer: {directory} has neither tokenizer.json nor vocab.txt")

    @classmethod
    def from_file(cls, path: str | Path, max_length: int = DEFAULT_MAX_LENGTH) -> "Tokenizer":
        from tokenizers import Tokenizer as Backend

        try:
            return cls(Backend.from_file(str(path)), max_length)
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise CheckpointError(f"tokenizer: cannot read {path} ({e})") from None

    @classmethod
    def from_vocab(
        cls,
        path: str | Path,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        handle_chinese_chars: bool = True,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> "Tokenizer":
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders, normalizers, pre_tokenizers, processors
        from tokenizers.models import WordPiece

        try:
            lines = Path(path).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"tokenizer: cannot read {path} ({e})") from None
        if lines and lines[-1] == "":
            lines.pop()
        vocab = {token: i for i, token in enumerate(lines)}
        for special in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
            if special not in vocab:
                raise CheckpointError(f"tokenizer: {path} has no {special} token")
        backend = Backend(WordPiece(vocab, unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=handle_chinese_chars,
            strip_accents=strip_accents,
            lowercase=lowercase,
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return cls(backend, max_length)

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size()

    def encode(
        self, texts: Sequence[str], max_length: int | None = None, truncation: bool = True
    ) -> list[list[int]]:
        """Ids of each text with ``[CLS]``/``[SEP]``, cut to ``max_length`` tokens (ends with ``[SEP]``).

        With ``truncation=False`` a text longer than ``max_length`` is an :class:`InputError`. A long text
        is tokenized from a prefix large enough for ``max_length`` tokens, never whole: a 1 MiB text
        would otherwise become half a million tokens (and hundreds of MB) only to be cut to 512.
        """
        texts = _check_texts(texts)
        limit = max_length or self.max_length
        if limit < 2:
            raise InputError(f"max_length must be at least 2, got {limit}")
        sequences: list[list[int] | None] = [None] * len(texts)
        pending = list(range(len(texts)))
        chars = limit * PREFIX_CHARS_PER_TOKEN
        while pending:
            pieces = [texts[i][:chars] for i in pending]
            encodings = self._backend.encode_batch(pieces, add_special_tokens=True)
            retry = []
            for i, piece, encoding in zip(pending, pieces, encodings):
                ids = encoding.ids
                if len(piece) < len(texts[i]):
                    # Only a prefix was read: every word but its last (which the cut may have split)
                    # tokenizes as in the whole text. Enough such tokens settle the result.
                    words = encoding.word_ids
                    last = next((w for w in reversed(words) if w is not None), None)
                    complete = next((k for k, w in enumerate(words) if w is not None and w == last), 1) - 1
                    if complete <= limit - 2:
                        retry.append(i)  # not conclusive: read a longer prefix
                        continue
                    if not truncation:
                        raise InputError(f"text {i} has more than {limit} tokens, the maximum")
                    sequences[i] = ids[: limit - 1] + [self.sep_id]
                    continue
                if len(ids) > limit:
                    if not truncation:
                        raise InputError(f"text {i} has {len(ids)} tokens, more than the maximum of {limit}")
                    ids = ids[: limit - 1] + [self.sep_id]
                sequences[i] = ids
            pending, chars = retry, chars * 4
        return sequences  # type: ignore[return-value]

    def pad(self, sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Pad to the longest sequence: int64 ``(ids, attention_mask)``, both (batch, length)."""
        width = max((len(s) for s in sequences), default=0)
        ids = np.full((len(sequences), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1
        return ids, mask

    def __call__(
        self, texts: Sequence[str], max_length: int | None = None, truncation: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.pad(self.encode(texts, max_length, truncation))

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json``, ``vocab.txt`` and ``tokenizer_config.json`` for transformers."""
        directory = Path(directory)
        self._backend.save(str(directory / "tokenizer.json"))
        vocab = sorted(self._backend.get_vocab().items(), key=lambda item: item[1])
        (directory / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
        normalizer = json.loads(self._backend.to_str()).get("normalizer") or {}
        config = {
            "tokenizer_class": "DistilBertTokenizer",
            "do_lower_case": normalizer.get("lowercase", True),
            "strip_accents": normalizer.get("strip_accents"),
            "tokenize_chinese_chars": normalizer.get("handle_chinese_chars", True),
            "model_max_length": self.max_length,
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "mask_token": "[MASK]",
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
