"""Any mmjax tokenizer written to a directory and read back as the same tokenizer.

A run fine-tuned from a pretrained checkpoint keeps that checkpoint's tokenizer in its workdir, whatever its
kind, so that evaluating, converting or resuming the run needs neither the checkpoint nor the network:

    description = save_tokenizer(tokenizer, workdir)   # writes tokenizer.json or tokenizer.model
    tokenizer = load_tokenizer(workdir, description)     # the description is JSON (kept in pretrained.json)

Kinds: a `tokenizers`-backed `Tokenizer` (a word-level vocabulary, a Gemma tokenizer.json), CLIP's BPE in either
flavour (OpenCLIP's text clean-up runs in Python: its name is recorded and the tokenizer rebuilt with it), a
transformers tokenizer.json behind OpenCLIP's clean-up (OpenCLIP's SigLIP models, recorded the same way), and a
SentencePiece model with its normalization and end-of-text and padding pieces.
"""

from __future__ import annotations

import os

import tokenizers

from mmjax.data.clip_bpe import OPEN_CLIP_CLEANS, ClipBpeTokenizer
from mmjax.data.open_clip_hf_tokenizer import OpenClipHfTokenizer
from mmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer
from mmjax.data.tokenizers import Tokenizer, reading_tokenizer_file
from mmjax.files import write_atomically

JSON_FILE, SENTENCEPIECE_FILE = "tokenizer.json", "tokenizer.model"
# The keys of each kind's description, with their types.
KEYS = {"tokenizers": dict(file=str, eot_token=str),
        "clip_bpe": dict(file=str, eot_token=str, context_length=int, pad_id=int, open_clip_clean=(str, type(None))),
        "open_clip_hf": dict(file=str, eot_token=str, open_clip_clean=str),
        "sentencepiece": dict(file=str, context_length=int, normalization=str, eot_token=str, pad_token=str)}


def save_tokenizer(tokenizer: Tokenizer | SentencePieceTokenizer, directory: str) -> dict:
    """Writes `tokenizer`'s file into `directory` (through a temporary file and a rename); returns the JSON
    description `load_tokenizer` rebuilds it from."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        write_atomically(os.path.join(directory, SENTENCEPIECE_FILE), tokenizer.save)
        return dict(kind="sentencepiece", file=SENTENCEPIECE_FILE, context_length=tokenizer.context_length,
                    normalization=tokenizer.normalization, eot_token=tokenizer.eot_token,
                    pad_token=tokenizer.pad_token)
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"cannot record a {type(tokenizer).__name__} tokenizer")
    # the backend itself: ClipBpeTokenizer.save refuses the OpenCLIP flavour, whose clean-up is recorded here
    write_atomically(os.path.join(directory, JSON_FILE), tokenizer.backend.save)
    description = dict(kind="tokenizers", file=JSON_FILE, eot_token=tokenizer.backend.id_to_token(tokenizer.eot_id))
    if isinstance(tokenizer, OpenClipHfTokenizer):
        description.update(kind="open_clip_hf", open_clip_clean=tokenizer.open_clip_clean)
    if isinstance(tokenizer, ClipBpeTokenizer):
        description.update(kind="clip_bpe", context_length=tokenizer.context_length, pad_id=tokenizer.pad_id,
                           open_clip_clean=tokenizer.open_clip_clean)
    return description


def check_description(description) -> None:
    """A one-line ValueError unless `description` is one `save_tokenizer` could have returned (its kind, its keys
    and their types)."""
    if not isinstance(description, dict) or description.get("kind") not in KEYS:
        kind = description.get("kind") if isinstance(description, dict) else description
        raise ValueError(f"the tokenizer's kind {kind!r} is not one of {tuple(KEYS)}")
    for key, types in KEYS[description["kind"]].items():
        if key not in description:
            raise ValueError(f"the {description['kind']} tokenizer's description has no {key!r}")
        if not isinstance(description[key], types) or isinstance(description[key], bool):
            raise ValueError(f"the {description['kind']} tokenizer's {key!r} is {description[key]!r}, not a "
                             f"{getattr(types, '__name__', 'str or null')}")
    if description.get("open_clip_clean") not in (None, *OPEN_CLIP_CLEANS):
        raise ValueError(f"the {description['kind']} tokenizer's 'open_clip_clean' is "
                         f"{description['open_clip_clean']!r}, not one of {OPEN_CLIP_CLEANS}")


def load_tokenizer(directory: str, description: dict) -> Tokenizer | SentencePieceTokenizer:
    """The tokenizer `save_tokenizer` wrote into `directory` and described; a one-line ValueError naming the
    file when it is missing or damaged."""
    check_description(description)
    kind, path = description["kind"], os.path.join(directory, description["file"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: the run's tokenizer was saved there")
    if kind == "sentencepiece":
        return SentencePieceTokenizer.from_file(path, context_length=description["context_length"],
                                                normalization=description["normalization"],
                                                eot_token=description["eot_token"], pad_token=description["pad_token"])
    if kind == "tokenizers":
        return Tokenizer.load(path, eot_token=description["eot_token"])
    with reading_tokenizer_file(path):
        backend = tokenizers.Tokenizer.from_file(path)
    if kind == "open_clip_hf":
        return OpenClipHfTokenizer(backend, description["eot_token"], description["open_clip_clean"])
    return ClipBpeTokenizer(backend, description["context_length"], description["pad_id"], description["eot_token"],
                            open_clip_clean=description["open_clip_clean"])

