"""Text → fixed-length token ids with a SentencePiece model (SigLIP, SigLIP 2).

SigLIP's convention (big_vision's `tokenize(eos="sticky", pad_value=1)`, which
transformers' `SiglipTokenizer` reproduces): no beginning-of-text token, the
end-of-text token `</s>` appended, padded with `pad_id` to `context_length`
(SigLIP pads with `</s>` itself) and, when too long, cut so that the last
position still holds `</s>` — the text tower pools at the last position.
SigLIP 2 keeps it on the Gemma vocabulary with Gemma's own padding (big_vision's
`tok(bos="no", eos="sticky")`): `<eos>` appended and kept, padded with `<pad>`;
`SentencePieceTokenizer.for_siglip` picks the convention from the model's end-of-text piece.

Three text clean-ups, named after the checkpoints that use them:
- `"hf"` (transformers' `SiglipTokenizer.canonicalize_text`): lower-case, delete
  ASCII punctuation (`string.punctuation`), collapse runs of whitespace to one
  space, strip the ends;
- `"big_vision"` (big_vision's `tokenize(lower=True)`, i.e. `tf.strings.lower`):
  lower-case ASCII letters only, nothing else;
- `"lowercase"` (transformers' `Siglip2Tokenizer`, the `tokenizers` `Lowercase`
  normalizer): every character lower-cased on its own, Unicode's full mapping
  without the final-sigma rule ("Σ" → "σ" everywhere).

One deliberate difference from transformers: text that literally contains a special
token (`"</s>"`, `"<unk>"`) is tokenized as text here (as big_vision does), whereas
`SiglipTokenizer` turns it into the special id.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Sequence

import numpy as np
import sentencepiece
from tokenizers import normalizers

NORMALIZATIONS = ("hf", "big_vision", "lowercase")
GEMMA_EOS, GEMMA_PAD = "<eos>", "<pad>"  # SigLIP 2's end of text and padding
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_WHITESPACE = re.compile(r"\s+")
_META_SPACE = "\u2581"


def canonicalize_hf(text: str) -> str:
    """transformers' `SiglipTokenizer` clean-up (after it maps its meta-space `▁` to a space)."""
    text = text.replace(_META_SPACE, " ").lower().translate(_PUNCTUATION)
    return _WHITESPACE.sub(" ", text).strip()


def lower_ascii(text: str) -> str:
    """`tf.strings.lower` with its default encoding: A–Z → a–z, every other character kept."""
    return text.translate(_ASCII_LOWER)


_LOWERCASE = normalizers.Lowercase()


def lower_each_character(text: str) -> str:
    """`tokenizers.normalizers.Lowercase` itself: each character's lower case on its own (no final sigma), with
    the Unicode tables of the `tokenizers` build, which may be newer than this Python's."""
    return _LOWERCASE.normalize_str(text)


_NORMALIZE = {"hf": canonicalize_hf, "big_vision": lower_ascii, "lowercase": lower_each_character}


class SentencePieceTokenizer:
    """Fixed-length ids from a SentencePiece model: `texts → int32 [N, context_length]`.

    model: the serialized model (`bytes`, as read from `spiece.model` /
    `sentencepiece.model`). eot_token and pad_token must be pieces of the model;
    eot_token defaults to the model's own end-of-sentence piece (`</s>` in T5's
    vocabularies, `<eos>` in Gemma's), pad_token to eot_token (SigLIP pads with `</s>`).
    """

    def __init__(self, model: bytes, context_length: int = 64, normalization: str = "hf",
                 eot_token: str | None = None, pad_token: str | None = None):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {normalization!r} is not one of {NORMALIZATIONS}")
        if context_length < 1:
            raise ValueError(f"context_length must be positive, got {context_length}")
        self.model_proto = bytes(model)
        try:
            self.backend = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
        except RuntimeError as error:  # sentencepiece reports a bad protobuf as RuntimeError
            raise ValueError(f"not a SentencePiece model ({str(error).strip()})") from None
        if eot_token is None:
            if self.backend.eos_id() < 0:
                raise ValueError("the SentencePiece model has no end-of-sentence piece; name eot_token")
            eot_token = self.backend.id_to_piece(self.backend.eos_id())
        self.eot_token = eot_token
        self.pad_token = eot_token if pad_token is None else pad_token
        self.eot_id: int = self._piece_id(self.eot_token, "end-of-text")
        self.pad_id: int = self._piece_id(self.pad_token, "padding")
        self.vocab_size: int = self.backend.get_piece_size()
        self.context_length = int(context_length)
        self.normalization = normalization

    def _piece_id(self, piece: str, role: str) -> int:
        piece_id = self.backend.piece_to_id(piece)
        if self.backend.id_to_piece(piece_id) != piece:
            raise ValueError(f"{role} token {piece!r} is not a piece of the SentencePiece model")
        return piece_id

    @classmethod
    def for_siglip(cls, path: str | os.PathLike, context_length: int, normalization: str) -> SentencePieceTokenizer:
        """SigLIP's tokenizer from the model at `path`, padded as its family pads: a Gemma vocabulary (end of
        text `<eos>`: SigLIP 2) with `<pad>`, any other (T5's `</s>`: SigLIP) with its end-of-text piece."""
        tokenizer = cls.from_file(path, context_length=context_length, normalization=normalization)
        if tokenizer.eot_token != GEMMA_EOS:
            return tokenizer
        return cls.from_file(path, context_length=context_length, normalization=normalization,
                             eot_token=GEMMA_EOS, pad_token=GEMMA_PAD)

    @property
    def is_gemma(self) -> bool:
        """Whether this is SigLIP 2's Gemma vocabulary (end of text `<eos>`)."""
        return self.eot_token == GEMMA_EOS

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> SentencePieceTokenizer:
        """Reads a `.model` file; keyword arguments as in the constructor."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SentencePiece model {path} does not exist")
        with open(path, "rb") as f:
            model = f.read()
        try:
            return cls(model, **kwargs)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def normalize(self, text: str) -> str:
        """The text clean-up applied before SentencePiece."""
        return _NORMALIZE[self.normalization](text)

    def encode(self, text: str) -> list[int]:
        """Ids of one text, the end-of-text token appended, neither padded nor truncated."""
        return self.backend.encode(self.normalize(text)) + [self.eot_id]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids of `texts`: int32 `[N, context_length]`, the end-of-text token kept at the end of long
        texts."""
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not one string")
        length = self.context_length
        out = np.full((len(texts), length), self.pad_id, np.int32)
        for row, ids in enumerate(self.backend.encode([self.normalize(text) for text in texts])):
            ids = ids[:length - 1] + [self.eot_id]
            out[row, :len(ids)] = ids
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Writes the SentencePiece model (e.g. as `spiece.model`)."""
        with open(os.fspath(path), "wb") as f:
            f.write(self.model_proto)
