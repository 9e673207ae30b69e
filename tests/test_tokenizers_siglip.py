"""SigLIP's SentencePiece tokenizer vs transformers' `SiglipTokenizer` on a model trained here,
and vs a hand-written big_vision `tokenize(eos="sticky", pad_value=1)`."""

import io
import random
import string
import warnings

import numpy as np
import pytest
import sentencepiece as spm

from mmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer

CONTEXT = 64
WORDS = ["cat", "dog", "photo", "a", "of", "the", "Bird", "RED", "blue", "über", "café", "naïve", "東京", "Straße",
         "jalapeño", "x-ray", "e-mail", "don't", "it's", "C++", "3.14", "100%", "#tag", "@user", "(paren)", "[b]",
         "emoji🙂", "ﬁne", "Ⅻ", "ＡＢＣ", "tab\there", "new\nline", "  spaces  ", "ß", "İstanbul", "ΣΊΣΥΦΟΣ", "a▁b"]
PUNCTUATION = ["", "", "", ",", ".", "!", "?", ";", ":", "'", '"', "-", "...", "¿", "«", "»", "—"]


def _sentence(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choice(words) + rng.choice(PUNCTUATION) for _ in range(n))


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    """A T5-style SentencePiece model (pad 0, `</s>` 1, `<unk>` 2, no `<s>`) and the words it was trained on."""
    rng = random.Random(0)
    words = WORDS + ["".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(2, 9))) for _ in range(400)]
    corpus = [_sentence(rng, words, rng.randint(1, 20)) for _ in range(3000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=300,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, num_threads=1, minloglevel=2)
    path = tmp_path_factory.mktemp("spm") / "spiece.model"
    path.write_bytes(model.getvalue())
    return str(path), words


def _test_strings(words: list[str]) -> list[str]:
    rng = random.Random(1)
    texts = [_sentence(rng, words, rng.randint(0, 40)) for _ in range(400)]
    unseen = ["☃ snowman", "Ωmega ∑", "ÉCOLE", "ÀÉÎÕÜ", "ǅ", "\u00a0nbsp\u2003em\u3000wide", "zero\u200bwidth"]
    return texts + unseen + ["", " ", "!!!", "a photo of a cat.", "A" * 300, "word " * 100, "▁x", "Hello   World"]


def test_ids_equal_transformers_siglip_tokenizer(spiece):
    transformers = pytest.importorskip("transformers")
    path, words = spiece
    reference = transformers.SiglipTokenizer(vocab_file=path)
    tokenizer = SentencePieceTokenizer.from_file(path, context_length=CONTEXT)
    texts = _test_strings(words)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(texts, padding="max_length", truncation=True, max_length=CONTEXT)["input_ids"]
    ids = tokenizer(texts)
    assert ids.dtype == np.int32 and ids.shape == (len(texts), CONTEXT)
    for text, row, want in zip(texts, ids, expected):
        assert row.tolist() == want, repr(text)
    assert (ids[:, -1] == tokenizer.eot_id).sum() >= 2  # long texts keep </s> last
    assert tokenizer.eot_id == reference.eos_token_id == 1 and tokenizer.pad_id == reference.pad_token_id
    assert tokenizer.vocab_size == reference.vocab_size == 300


def _big_vision_ids(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    """big_vision `tokenize(max_len, eos="sticky", pad_value=1, lower=True)`: tf.strings.lower (ASCII),
    SentencePiece with `</s>` appended, `tokens[:max_len - 1] + tokens[-1:]` when too long, padded with 1."""
    lowered = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    tokens = sp.encode(lowered) + [sp.eos_id()]
    if len(tokens) >= CONTEXT:
        tokens = tokens[:CONTEXT - 1] + tokens[-1:]
    return tokens + [1] * (CONTEXT - len(tokens))


def test_big_vision_normalization_keeps_punctuation_and_lowers_ascii_only(spiece):
    path, words = spiece
    sp = spm.SentencePieceProcessor(model_file=path)
    tokenizer = SentencePieceTokenizer.from_file(path, context_length=CONTEXT, normalization="big_vision")
    texts = _test_strings(words)
    ids = tokenizer(texts)
    for text, row in zip(texts, ids):
        assert row.tolist() == _big_vision_ids(sp, text), repr(text)
    assert tokenizer.normalize("ÀB, C!") == "Àb, c!"


def test_context_length_and_bad_input(spiece):
    path, _ = spiece
    tokenizer = SentencePieceTokenizer.from_file(path, context_length=5)
    ids = tokenizer(["a b c d e f g h", "cat"])
    pieces = spm.SentencePieceProcessor(model_file=path).encode("cat")
    assert ids[0, -1] == 1 and 1 not in ids[0, :-1]
    assert ids[1].tolist() == pieces + [1] * (5 - len(pieces))
    with pytest.raises(TypeError, match="list of strings"):
        tokenizer("one string")
    with pytest.raises(ValueError, match="'<s>' is not a piece"):
        SentencePieceTokenizer.from_file(path, eot_token="<s>")
    with pytest.raises(FileNotFoundError, match="missing.model does not exist"):
        SentencePieceTokenizer.from_file("missing.model")
