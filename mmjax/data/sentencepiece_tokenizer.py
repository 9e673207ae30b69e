"""Text → fixed-length token ids with a SentencePiece model (SigLIP).

SigLIP's convention (big_vision's `tokenize(eos="sticky", pad_value=1)`, which
transformers' `SiglipTokenizer` reproduces): no beginning-of-text token, the
end-of-text token `</s>` appended, padded with `pad_id` to `context_length`
(SigLIP pads with `</s>` itself) and, when too long, cut so that the last
position still holds `</s>` — the text tower pools at the last position.

Two text clean-ups, named after the checkpoints that use them:
- `"hf"` (transformers' `SiglipTokenizer.canonicalize_text`): lower-case, delete
  ASCII punctuation (`string.punctuation`), collapse runs of whitespace to one
  space, strip the ends;
- `"big_vision"` (big_vision's `tokenize(lower=True)`, i.e. `tf.strings.lower`):
  lower-case ASCII letters only, nothing else.

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

NORMALIZATIONS = ("hf", "big_vision")
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


class SentencePieceTokenizer:
    """Fixed-length ids from a SentencePiece model: `texts → int32 [N, context_length]`.

    model: the serialized model (`bytes`, as read from `spiece.model` /
    `sentencepiece.model`). eot_token and pad_token must be pieces of the model;
    pad_token defaults to eot_token (SigLIP pads with `</s>`).
    """

    def __init__(self, model: bytes, context_length: int = 64, normalization: str = "hf",
                 eot_token: str = "</s>", pad_token: str | None = None):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {normalization!r} is not one of {NORMALIZATIONS}")
        if context_length < 1:
            raise ValueError(f"context_length must be positive, got {context_length}")
        self.model_proto = bytes(model)
        try:
            self.backend = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
        except RuntimeError as error:  # sentencepiece reports a bad protobuf as RuntimeError
            raise ValueError(f"not a SentencePiece model ({str(error).strip()})") from None
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
        return canonicalize_hf(text) if self.normalization == "hf" else lower_ascii(text)

    def encode(self, text: str) -> list[int]:
        """Ids of one text, `</s>` appended, neither padded nor truncated."""
        return self.backend.encode(self.normalize(text)) + [self.eot_id]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids of `texts`: int32 `[N, context_length]`, `</s>` kept at the end of long texts."""
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
