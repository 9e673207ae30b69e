"""SigLIP 2's text convention on a Hugging Face Gemma `tokenizer.json`.

SigLIP 2 was trained on lower-cased text (the SigLIP 2 paper; big_vision's demo runs
`lower|tok(model="gemma", bos="no", eos="sticky")`): no `<bos>`, `<eos>` appended and kept when the
text is cut to `context_length`, padded with `<pad>` at the end, the text tower pooling at the last
position. The Hugging Face SigLIP 2 repositories ship Gemma's `tokenizer.json` with
`tokenizer_class: "GemmaTokenizer"`, which transformers' `AutoTokenizer` loads without lower-casing;
transformers' `Siglip2Tokenizer` adds the `Lowercase` normalizer. mmjax tokenizes as the model was
trained, so its ids equal `Siglip2Tokenizer(add_bos_token=False, add_eos_token=True,
padding_side="right")` with `padding="max_length", truncation=True`.
"""

from __future__ import annotations

import os

import tokenizers
from tokenizers import normalizers, processors

from mmjax.data.sentencepiece_tokenizer import GEMMA_EOS, GEMMA_PAD
from mmjax.data.tokenizers import Tokenizer, reading_tokenizer_file

# tokenizer_config.json classes of a Gemma vocabulary (what the SigLIP 2 repositories and transformers write)
GEMMA_CLASSES = ("GemmaTokenizer", "GemmaTokenizerFast", "Siglip2Tokenizer")


def siglip2_tokenizer(path: str | os.PathLike, context_length: int) -> Tokenizer:
    """The `Tokenizer` of a Gemma `tokenizer.json` at `path` with SigLIP 2's convention, whatever
    special tokens, truncation and padding the file itself sets."""
    path = os.fspath(path)
    with reading_tokenizer_file(path):
        backend = tokenizers.Tokenizer.from_file(path)
    ids = {token: backend.token_to_id(token) for token in (GEMMA_EOS, GEMMA_PAD)}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
        raise ValueError(f"{path}: the vocabulary has no {missing[0]} token; not a Gemma (SigLIP 2) tokenizer")
    lowercase = normalizers.Lowercase()
    backend.normalizer = normalizers.Sequence([lowercase, backend.normalizer]) if backend.normalizer else lowercase
    backend.post_processor = processors.TemplateProcessing(single=f"$A {GEMMA_EOS}",
                                                           special_tokens=[(GEMMA_EOS, ids[GEMMA_EOS])])
    backend.enable_truncation(context_length)  # counts the appended <eos>, so it survives the cut
    backend.enable_padding(direction="right", pad_id=ids[GEMMA_PAD], pad_token=GEMMA_PAD, length=context_length)
    try:
        return Tokenizer(backend, eot_token=GEMMA_EOS)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
