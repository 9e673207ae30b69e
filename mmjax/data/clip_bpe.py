"""The CLIP byte-level BPE tokenizer, in the two flavours checkpoints were trained with.

- transformers (`from_tokenizer_json`, `from_vocab_merges`): exactly `CLIPTokenizer`'s backend —
  NFC, whitespace runs → one space, lower case, no ftfy; padded with the pad token
  (`<|endoftext|>` = 49407 for OpenAI's checkpoints).
- OpenCLIP (`open_clip`): `SimpleTokenizer` — `ftfy.fix_text`, HTML unescaped twice,
  whitespace collapsed, lower case (its `clean="lower"`; also "whitespace", "canonicalize");
  padded with 0. Words are split with OpenCLIP's own pattern and semantics (`regex`,
  case-insensitive): in Rust for lower-case ASCII text, where the two agree, and in Python
  (`OPEN_CLIP_WORDS`) for any other text — case folding (`'ſ` is `'s`), Unicode classes and
  a special token's text after punctuation (`&<end_of_text>` is spelt out, not the token)
  differ from the Rust split there.

Both wrap the text as `<start> … <end>` and truncate to the context length keeping the
end-of-text token last; `"a photo of a cat"` → `[49406, 320, 1125, 539, 320, 2368, 49407]`.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import string
from collections.abc import Sequence

import numpy as np
import regex
import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors

from mmjax.data.tokenizers import Tokenizer, reading_tokenizer_file

HF_SOT, HF_EOT = "<|startoftext|>", "<|endoftext|>"
OPEN_CLIP_SOT, OPEN_CLIP_EOT = "<start_of_text>", "<end_of_text>"
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
OPEN_CLIP_WORDS = regex.compile(f"{OPEN_CLIP_SOT}|{OPEN_CLIP_EOT}|{_WORDS}", regex.IGNORECASE)  # SimpleTokenizer.pat
OPEN_CLIP_CLEANS = ("lower", "whitespace", "canonicalize")  # SimpleTokenizer(clean=…)
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def _backend(vocab: dict[str, int], merges: list[tuple[str, str]], sot: str, eot: str,
             unk: str | None, gpt2_split: bool = False) -> tokenizers.Tokenizer:
    """`gpt2_split`: also split each piece with GPT-2's pattern, as transformers' CLIP tokenizer does; it
    differs from OpenCLIP's only on a special token typed in capitals (`<|ENDOFTEXT|>`, lower-cased into the
    token's text: transformers then splits `<|`, `endoftext`, `|>`)."""
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                              end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(f"{_escape(sot)}|{_escape(eot)}|{_WORDS}"), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=gpt2_split),
    ])
    backend.add_special_tokens([sot, eot])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, vocab[sot]), (eot, vocab[eot])])
    return backend


def _escape(token: str) -> str:
    return "".join(f"\\{c}" if c in r"|<>\.^$*+?()[]{}" else c for c in token)


class ClipBpeTokenizer(Tokenizer):
    """`__call__(texts) -> int32 [N, context_length]`. `open_clip_clean`: OpenCLIP's cleaning ("lower",
    "whitespace" or "canonicalize") runs before the backend, and words are split as OpenCLIP splits them;
    None: the transformers flavour."""

    def __init__(self, backend: tokenizers.Tokenizer, context_length: int, pad_id: int, eot_token: str,
                 open_clip_clean: str | None = None):
        if open_clip_clean not in (None, *OPEN_CLIP_CLEANS):
            raise ValueError(f"OpenCLIP clean={open_clip_clean!r} is not one of {OPEN_CLIP_CLEANS}")
        backend.enable_truncation(context_length)
        backend.enable_padding(pad_id=pad_id, pad_token=backend.id_to_token(pad_id) or "", length=context_length)
        # ids back to text as OpenCLIP's SimpleTokenizer.decode: the bytes of each piece, "</w>" ending a word
        backend.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
        super().__init__(backend, eot_token)
        self.open_clip_clean = open_clip_clean
        if open_clip_clean is not None:  # the same tokenizer for words OPEN_CLIP_WORDS has already split
            self._split_words = tokenizers.Tokenizer.from_str(backend.to_str())
            self._split_words.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)

    @classmethod
    def from_tokenizer_json(cls, path: str, context_length: int = 77, pad_token: str = HF_EOT,
                            eot_token: str = HF_EOT) -> ClipBpeTokenizer:
        """transformers flavour from a `tokenizer.json` (its own normaliser, pre-tokeniser and post-processor)."""
        with reading_tokenizer_file(path):
            backend = tokenizers.Tokenizer.from_file(os.fspath(path))
        pad_id = backend.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"{path}: pad token {pad_token!r} is not in the vocabulary")
        return cls(backend, context_length, pad_id, eot_token)

    @classmethod
    def from_vocab_merges(cls, vocab_path: str, merges_path: str, context_length: int = 77,
                          pad_token: str = HF_EOT) -> ClipBpeTokenizer:
        """transformers flavour from `vocab.json` + `merges.txt`, built as `CLIPTokenizer` builds it."""
        with reading_tokenizer_file(vocab_path), open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        with reading_tokenizer_file(merges_path), open(merges_path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        backend = _backend(vocab, merges, HF_SOT, HF_EOT, HF_EOT, gpt2_split=True)
        backend.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        if pad_token not in vocab:
            raise ValueError(f"{vocab_path}: pad token {pad_token!r} is not in the vocabulary")
        return cls(backend, context_length, vocab[pad_token], HF_EOT)

    @classmethod
    def open_clip(cls, bpe_path: str | None = None, context_length: int = 77, clean: str = "lower") -> ClipBpeTokenizer:
        """OpenCLIP flavour from `bpe_simple_vocab_16e6.txt.gz` (default: the copy mmjax ships); `clean` as
        `SimpleTokenizer`'s."""
        bpe_path = bpe_path or find_open_clip_bpe()
        with reading_tokenizer_file(bpe_path), gzip.open(bpe_path) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
        symbols = list(bytes_to_unicode().values())
        words = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), OPEN_CLIP_SOT, OPEN_CLIP_EOT]
        vocab = {token: i for i, token in enumerate(words)}
        backend = _backend(vocab, merges, OPEN_CLIP_SOT, OPEN_CLIP_EOT, None)
        return cls(backend, context_length, 0, OPEN_CLIP_EOT, open_clip_clean=clean)

    def save(self, path: str | os.PathLike) -> None:
        """Writes tokenizer.json. Refused for the OpenCLIP flavour: its cleaning and word split run in Python,
        outside the backend, so the file would tokenize differently ("A Cat" as capitals, "&amp;" unescaped)."""
        if self.open_clip_clean is not None:
            raise ValueError(f"an OpenCLIP-flavour CLIP BPE tokenizer cannot be saved as {os.fspath(path)}: its text "
                             f"cleaning (clean={self.open_clip_clean!r}) and word split are not part of tokenizer.json "
                             f"(name it data.tokenizer='clip-bpe' instead)")
        super().save(path)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids of `texts`: int32 `[N, context_length]`."""
        if self.open_clip_clean is None:
            return super().__call__(texts)
        texts = [open_clip_clean(text, self.open_clip_clean) for text in self._texts(texts)]
        # Lower-case ASCII without a special token's text splits the same in Rust; the rest as OpenCLIP does.
        in_python = [i for i, text in enumerate(texts)
                     if not text.isascii() or text != text.lower() or "_of_text>" in text]
        if not in_python:
            return super().__call__(texts)
        ids = np.empty((len(texts), self.context_length), np.int32)
        in_rust = np.setdiff1d(np.arange(len(texts)), in_python)
        if len(in_rust):
            ids[in_rust] = super().__call__([texts[i] for i in in_rust])
        words = [OPEN_CLIP_WORDS.findall(texts[i]) for i in in_python]
        ids[in_python] = [e.ids for e in self._split_words.encode_batch_fast(words, is_pretokenized=True)]
        return ids


def open_clip_clean(text: str, clean: str = "lower") -> str:
    """OpenCLIP's text cleaning: ftfy and HTML unescape ×2, then "lower": whitespace collapsed, lower case;
    "whitespace": whitespace collapsed; "canonicalize": big_vision's (`_` → space, ASCII punctuation removed,
    lower case, whitespace collapsed)."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if clean == "canonicalize":
        text = text.replace("_", " ").translate(_NO_PUNCTUATION).lower()
    text = " ".join(text.split()).strip()
    return text.lower() if clean == "lower" else text


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def find_open_clip_bpe(*directories: str) -> str:
    """`bpe_simple_vocab_16e6.txt.gz` in one of `directories`, else the copy shipped with mmjax
    (OpenAI CLIP's vocabulary, MIT licence, byte-identical to the one in open_clip)."""
    for directory in directories:
        path = os.path.join(directory, BPE_FILE)
        if os.path.isfile(path):
            return path
    return os.path.join(os.path.dirname(__file__), "assets", BPE_FILE)
