"""Text → fixed-length token ids, backed by a Hugging Face `tokenizers.Tokenizer`.

Convention (OpenAI CLIP): every sequence is `<|startoftext|> … <|endoftext|>`,
padded with `pad_id` to `context_length` and truncated so that the end-of-text
token survives. Text encoders that pool at `argmax(ids)` need end-of-text to
have the highest id; the word-level vocabulary built here guarantees that.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, processors

from mmjax.data import synthetic

PAD, UNK, SOT, EOT = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"


@contextlib.contextmanager
def reading_tokenizer_file(path: str | os.PathLike) -> Iterator[None]:
    """A missing, truncated or corrupt tokenizer file → one line naming it. (`tokenizers` raises a bare
    `Exception`, gzip `EOFError` / `OSError`, json `ValueError`.)"""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - re-raised as one line
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"{os.fspath(path)} is not a readable tokenizer file ({reason})") from None


class Tokenizer:
    """Wraps a `tokenizers.Tokenizer` whose padding and truncation fix the length.

    The backend must already add start/end-of-text and pad to `context_length`;
    the context length is read from its padding settings, so it round-trips
    through `save` / `load` (tokenizer.json).
    """

    def __init__(self, backend: tokenizers.Tokenizer, eot_token: str = EOT):
        if backend.padding is None or backend.padding.get("length") is None:
            raise ValueError("the backend must pad to a fixed length")
        self.backend = backend
        self.context_length: int = backend.padding["length"]
        if self.context_length < 2:
            raise ValueError(f"context_length {self.context_length} leaves no room for start- and end-of-text")
        self.pad_id: int = backend.padding["pad_id"]
        self.eot_id: int = backend.token_to_id(eot_token)
        if self.eot_id is None:
            raise ValueError(f"the vocabulary has no end-of-text token {eot_token!r}")
        self.vocab_size: int = backend.get_vocab_size()
        unk_token = getattr(backend.model, "unk_token", None)  # None: every text has a spelling (byte-level BPE)
        self.unk_id: int | None = backend.token_to_id(unk_token) if unk_token else None

    @classmethod
    def from_corpus(cls, texts: Sequence[str], context_length: int) -> Tokenizer:
        """A word-level tokenizer whose vocabulary is every word of `texts`.

        Ids: pad 0, unk 1, start-of-text 2, the words in sorted order, end-of-text last.
        Words are lower-cased and split at whitespace and punctuation.
        """
        normalizer = normalizers.Lowercase()
        pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
        words = sorted({word for text in texts
                        for word, _ in pre_tokenizer.pre_tokenize_str(
                            normalizer.normalize_str(text))})
        vocab = {token: i for i, token in enumerate([PAD, UNK, SOT, *words, EOT])}
        backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        backend.normalizer = normalizer
        backend.pre_tokenizer = pre_tokenizer
        backend.post_processor = processors.TemplateProcessing(
            single=f"{SOT} $A {EOT}", special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])])
        backend.enable_truncation(context_length)
        backend.enable_padding(pad_id=vocab[PAD], pad_token=PAD, length=context_length)
        return cls(backend)

    @classmethod
    def for_synthetic(cls, context_length: int = 16) -> Tokenizer:
        """The word-level tokenizer of the synthetic world (`synthetic.corpus()`)."""
        return cls.from_corpus(synthetic.corpus(), context_length)

    @staticmethod
    def _texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):  # a string is a sequence of one-character texts
            raise TypeError("pass a list of strings, not one string")
        return list(texts)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids of `texts`: int32 `[N, context_length]`."""
        encodings = self.backend.encode_batch_fast(self._texts(texts))  # ids only: no character offsets
        return np.array([encoding.ids for encoding in encodings], np.int32).reshape(
            len(encodings), self.context_length)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids `[N]` as the tokenizer wrote them (`__call__`'s row): the start of text and the end
        of text and all after it left out, and no spaces at its ends; a word-level vocabulary joins its words with
        spaces."""
        ids = [int(i) for i in ids]
        ids = ids[:ids.index(self.eot_id)] if self.eot_id in ids else ids
        empty = [int(i) for i in self([""])[0]]
        start = empty[:empty.index(self.eot_id)]  # what every text starts with ([<start of text>], or nothing)
        ids = ids[len(start):] if ids[:len(start)] == start else ids
        return self.backend.decode(ids).strip()

    def unknown_fraction(self, ids: np.ndarray) -> float:
        """The fraction of the word tokens in `ids` `[N, L]` that are the unknown token (0 for a vocabulary
        without one). Word tokens are all but the special ones (start and end of text, padding)."""
        ids = np.asarray(ids)
        special = {i for i, token in self.backend.get_added_tokens_decoder().items() if token.special}
        special |= {self.pad_id, self.eot_id, self.backend.token_to_id(SOT)}
        # transformers' CLIP files name <|endoftext|> as the unknown token too: a byte-level BPE spells every word,
        # and its end-of-text and padding positions are not unknown words
        if self.unk_id is None or self.unk_id in (self.pad_id, self.eot_id):
            return 0.0
        words = ~np.isin(ids, [i for i in special if i is not None and i != self.unk_id])
        return float((ids[words] == self.unk_id).mean()) if words.any() else 0.0

    def save(self, path: str | os.PathLike) -> None:
        """Writes tokenizer.json (padding and truncation, hence the context length, included)."""
        self.backend.save(os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike, eot_token: str = EOT) -> Tokenizer:
        """Reads a tokenizer.json written by `save` (or any fixed-length one)."""
        with reading_tokenizer_file(path):
            backend = tokenizers.Tokenizer.from_file(os.fspath(path))
        try:
            return cls(backend, eot_token)
        except ValueError as error:
            raise ValueError(f"{os.fspath(path)}: {error}") from None
