"""CLIP BPE ids equal the references on a few hundred varied strings: OpenCLIP's SimpleTokenizer and
transformers' CLIPTokenizer, built from the real 49 408-token vocabulary the open_clip wheel ships."""

import gzip
import json
import os

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from mmjax.data.clip_bpe import ClipBpeTokenizer, bytes_to_unicode  # noqa: E402

BASE = ["a photo of a cat", "A Photo Of A CAT", "  leading and trailing  ", "tabs\tand\nnewlines\r\n here",
        "it's, they're, we've, I'm, you'll, he'd", "3.14159 and 1,000,000 and 42nd", "e-mail: foo@bar.com",
        "naïve café résumé", "Straße İstanbul ΣΟΦΟΣ σοφός", "日本語のテキスト", "한국어 텍스트", "emoji 🐱🚀👍🏽 flags 🇫🇷",
        "&amp; &lt;b&gt; &quot;quoted&quot; &#39;single&#39;", "&amp;amp; double", "<b>html</b> <br/>",
        "punctuation!!! ??? ... --- ;;; :: (brackets) [square] {curly}", "ﬁ ligature and ½ fraction",
        "mojibake: cafÃ©", "non\u00a0breaking\u2003spaces\u200bzero width", "a" * 300, "word " * 100,
        "", " ", "<|endoftext|> in text", "x <|ENDOFTEXT|> y", "UPPER lower MiXeD", "don't stop", "C++ & C# & F#",
        "$100 €50 £20 ¥1000", "100% of 50° at 3×4", "a—b–c", "“smart quotes” ‘single’", "x\u0301 combining"]


def _strings():
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?'\"-&;:#()") + [
        "é", "ß", "ø", "λ", "中", "🙂", "\t", "\n", "  ", "&amp;", "&lt;", "'s", "'ll", "\u00a0"]
    random = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 120)))) for _ in range(300)]
    return BASE + random


@pytest.fixture(scope="module")
def merges():
    with gzip.open(open_clip.tokenizer.default_bpe()) as f:
        return f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]


def test_open_clip_flavour_matches_simple_tokenizer():
    texts = _strings()
    reference = open_clip.tokenizer.SimpleTokenizer()
    ours = ClipBpeTokenizer.open_clip()
    np.testing.assert_array_equal(ours(texts), reference(texts).numpy())
    assert ours(["a photo of a cat"])[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert (ours.vocab_size, ours.eot_id, ours.pad_id, ours.context_length) == (49408, 49407, 0, 77)


# Where OpenCLIP's case-insensitive Python split differs from a Rust one: the long s folds to s ('ſ is one
# piece), U+0345 is dropped, and a special token's text after punctuation or an emoji is spelt out as text.
OPEN_CLIP_SPLIT = ["it'ſ a cat", "a\u0345b", "<ſtart_of_text> x", "cat 😀<end_of_text>", "fish &amp;<end_of_text> chips",
                   "x <end_of_text> y", "a.<start_of_text>b", "IT'S, WE'LL: <END_OF_TEXT>", "Ünïcödé 'S and 'T"]


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_open_clip_flavour_splits_and_cleans_as_simple_tokenizer(clean):
    texts = OPEN_CLIP_SPLIT + _strings()[:80]
    reference = open_clip.tokenizer.SimpleTokenizer(clean=clean)
    ours = ClipBpeTokenizer.open_clip(clean=clean)
    np.testing.assert_array_equal(ours(texts), reference(texts).numpy())
    # one spelt-out <end_of_text>: 49407 only at the end, where an argmax-pooled model pools
    ids = ours(["fish &amp;<end_of_text> chips"])[0]
    assert (ids == 49407).sum() == 1 and ids[ids.nonzero()[0][-1]] == 49407


def test_a_single_string_and_no_room_for_the_special_tokens_are_refused():
    with pytest.raises(TypeError, match="pass a list of strings, not one string"):
        ClipBpeTokenizer.open_clip()("a photo of a cat")  # 16 one-character texts before
    with pytest.raises(ValueError, match="context_length 1 leaves no room for start- and end-of-text"):
        ClipBpeTokenizer.open_clip(context_length=1)
    with pytest.raises(ValueError, match="clean='upper' is not one of"):
        ClipBpeTokenizer.open_clip(clean="upper")


def test_open_clip_flavour_other_context_length():
    texts = _strings()[:40]
    np.testing.assert_array_equal(ClipBpeTokenizer.open_clip(context_length=16)(texts),
                                  open_clip.tokenizer.SimpleTokenizer(context_length=16)(texts).numpy())


def test_transformers_flavour_matches_clip_tokenizer(merges, tmp_path):
    symbols = list(bytes_to_unicode().values())
    words = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges),
             "<|startoftext|>", "<|endoftext|>"]
    vocab = {w: i for i, w in enumerate(words)}
    reference = transformers.CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])
    reference.save_pretrained(tmp_path)  # tokenizer.json; older Hub repos also hold vocab.json + merges.txt:
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    texts = _strings()
    expected = np.array(reference(texts, padding="max_length", max_length=77, truncation=True)["input_ids"])
    from_files = ClipBpeTokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")
    np.testing.assert_array_equal(from_files(texts), expected)
    np.testing.assert_array_equal(ClipBpeTokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")(texts), expected)
    assert from_files(["a photo of a cat"])[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 49407]


def test_the_two_flavours_differ_where_the_references_do(merges, tmp_path):
    """transformers does not unescape HTML (OpenCLIP does): the ids must differ there, as the references do."""
    text = ["fish &amp; chips"]
    open_clip_ids = ClipBpeTokenizer.open_clip()(text)
    symbols = list(bytes_to_unicode().values())
    words = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges),
             "<|startoftext|>", "<|endoftext|>"]
    reference = transformers.CLIPTokenizer(vocab={w: i for i, w in enumerate(words)},
                                           merges=[tuple(m.split()) for m in merges])
    hf_ids = np.array(reference(text, padding="max_length", max_length=77, truncation=True)["input_ids"])
    assert not np.array_equal(open_clip_ids != 0, hf_ids != 49407)
    np.testing.assert_array_equal(open_clip_ids, open_clip.tokenizer.SimpleTokenizer()(text).numpy())


def test_training_tokenizer_choices(tmp_path):
    """`config.data.tokenizer`: "clip-bpe" is OpenCLIP's tokenizer; a file is copied into the workdir and must pad
    to the model's context length; a missing file is one clear error."""
    from mmjax.data.tokenizers import Tokenizer
    from mmjax.train.workdir import save_tokenizer, workdir_tokenizer

    texts = _strings()[:40]
    clip = workdir_tokenizer(str(tmp_path / "a"), 32, "clip-bpe")
    np.testing.assert_array_equal(clip(texts), open_clip.tokenizer.SimpleTokenizer(context_length=32)(texts).numpy())
    spec = str(tmp_path / "words.json")
    Tokenizer.from_corpus(["a red circle", "a blue square"], context_length=8).save(spec)
    (tmp_path / "b").mkdir()
    copied = workdir_tokenizer(str(tmp_path / "b"), 8, spec, fresh=True)
    assert copied(["a red square"]).tolist() == [[2, 3, 6, 7, 8, 0, 0, 0]]  # pad 0, unk 1, sot 2, words, eot last
    assert not os.listdir(tmp_path / "b")  # written once the run's checks pass
    save_tokenizer(str(tmp_path / "b"), copied)
    assert workdir_tokenizer(str(tmp_path / "b"), 8, "")(["a red square"]).tolist() == [[2, 3, 6, 7, 8, 0, 0, 0]]
    save_tokenizer(str(tmp_path / "b"), clip)  # a replaced run's file would describe another tokenizer
    assert not os.listdir(tmp_path / "b")
    with pytest.raises(ValueError, match="pads to 8 tokens but the model reads 16"):
        workdir_tokenizer(str(tmp_path / "c"), 16, spec)
    with pytest.raises(FileNotFoundError, match="no such file"):
        workdir_tokenizer(str(tmp_path / "d"), 8, str(tmp_path / "missing.json"))


def test_saving_keeps_the_transformers_flavour_and_refuses_the_open_clip_one(merges, tmp_path):
    """The OpenCLIP flavour cleans and splits words in Python: its saved tokenizer.json read "A Photo Of A Cat"
    as capitals and lost end-of-text (the SigLIP export wrote such a file). Saving it is refused; the
    transformers flavour, all in its backend, saves and loads to the same ids."""
    from mmjax.data.tokenizers import Tokenizer

    with pytest.raises(ValueError, match=r"^an OpenCLIP-flavour CLIP BPE tokenizer cannot be saved as .*"
                                         r"clean='lower'"):
        ClipBpeTokenizer.open_clip().save(tmp_path / "open_clip.json")
    assert not (tmp_path / "open_clip.json").exists()
    symbols = list(bytes_to_unicode().values())
    words = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges),
             "<|startoftext|>", "<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    hf_flavour = ClipBpeTokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")
    hf_flavour.save(tmp_path / "hf.json")
    texts = _strings()
    np.testing.assert_array_equal(Tokenizer.load(tmp_path / "hf.json", "<|endoftext|>")(texts), hf_flavour(texts))


def test_a_vocabulary_without_the_end_of_text_token_is_refused(tmp_path):
    from mmjax.data.tokenizers import Tokenizer

    Tokenizer.from_corpus(["a red square"], context_length=8).save(tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match=r"tokenizer.json: the vocabulary has no end-of-text token '</s>'$"):
        Tokenizer.load(tmp_path / "tokenizer.json", eot_token="</s>")
