"""A transformers `tokenizer.json` as OpenCLIP's `HFTokenizer` runs it (OpenCLIP's SigLIP models): OpenCLIP's text
clean-up in Python (`clip_bpe.open_clip_clean`: ftfy, HTML unescaped, then "lower", "whitespace" or
"canonicalize"), then the file's own normalizer, model and post-processor (which must append the end-of-text
token alone), the end-of-text token kept when the text is cut to `context_length`, padded at the end with the
pad token (`padding="max_length", truncation=True`)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tokenizers

from mmjax.data.clip_bpe import OPEN_CLIP_CLEANS, open_clip_clean
from mmjax.data.tokenizers import Tokenizer, reading_tokenizer_file


def read_backend(path: str | os.PathLike) -> tokenizers.Tokenizer:
    """The `tokenizers.Tokenizer` of a tokenizer.json; one line naming a missing, truncated or corrupt file."""
    with reading_tokenizer_file(path):
        return tokenizers.Tokenizer.from_file(os.fspath(path))


class OpenClipHfTokenizer(Tokenizer):
    """`__call__(texts) -> int32 [N, context_length]`; `open_clip_clean` names the clean-up."""

    def __init__(self, backend: tokenizers.Tokenizer, eot_token: str, open_clip_clean: str):
        if open_clip_clean not in OPEN_CLIP_CLEANS:
            raise ValueError(f"OpenCLIP clean={open_clip_clean!r} is not one of {OPEN_CLIP_CLEANS}")
        super().__init__(backend, eot_token)
        self.open_clip_clean = open_clip_clean

    @classmethod
    def from_backend(cls, backend: tokenizers.Tokenizer, path: str, context_length: int, eot_token: str,
                     pad_token: str, open_clip_clean: str) -> OpenClipHfTokenizer:
        """The tokenizer.json read from `path` (`read_backend`), truncated and padded with `pad_token` to
        `context_length`; a one-line ValueError naming `path` unless its post-processor appends `eot_token` alone
        (what SigLIP's text tower reads)."""
        pad_id = backend.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"{path}: the padding token {pad_token!r} is not in the vocabulary")
        backend.no_padding()  # a file saved after use keeps its last padding and truncation
        backend.no_truncation()
        added = backend.encode("a").tokens
        if added != [*backend.encode("a", add_special_tokens=False).tokens, eot_token]:
            raise ValueError(f"{path}: its post-processor makes 'a' {added}, not the text and {eot_token} alone as "
                             f"the SigLIP text tower reads it")
        backend.enable_truncation(context_length)  # counts the appended end of text, so it survives the cut
        backend.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token, length=context_length)
        return cls(backend, eot_token, open_clip_clean)

    def save(self, path: str | os.PathLike) -> None:
        """Refused: the clean-up runs in Python, outside tokenizer.json, so the file alone would tokenize otherwise
        (`mmjax.data.tokenizer_record` keeps both for a run)."""
        raise ValueError(f"a tokenizer behind OpenCLIP's clean-up (clean={self.open_clip_clean!r}) cannot be saved as "
                         f"{os.fspath(path)}: the clean-up is not part of tokenizer.json")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids of `texts`: int32 `[N, context_length]`."""
        return super().__call__([open_clip_clean(text, self.open_clip_clean) for text in self._texts(texts)])
