"""SigLIP 2 (fixed resolution) checkpoints: SigLIP's towers with a Gemma vocabulary, tokenized lower-cased, no
`<bos>`, `<eos>` kept, padded with `<pad>`. A random `SiglipModel` with a Gemma-style SentencePiece model trained
here, saved as the Hugging Face SigLIP 2 repositories are (GemmaTokenizer files) and as a big_vision `.npz`, must
tokenize like transformers' `Siglip2Tokenizer` / big_vision's `tok(bos="no", eos="sticky")` and embed like
transformers; export must load in transformers as it is."""

import io
import os
import random
import shutil
import string

import numpy as np
import pytest
import sentencepiece as spm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmjax.convert import checks, hf_siglip  # noqa: E402
from mmjax.data.gemma_tokenizer import siglip2_tokenizer  # noqa: E402
from mmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer, lower_each_character  # noqa: E402
from mmjax.data.tokenizers import Tokenizer  # noqa: E402
from mmjax.pretrained import load_pretrained  # noqa: E402
from test_cli import mmjax  # noqa: E402
from test_convert_siglip import (IMAGE, WIDTH, _assert_same_direction, _big_vision_npz, _images,  # noqa: E402
                                 random_siglip)
from test_tokenizers_siglip import WORDS, _sentence  # noqa: E402

VOCAB, CONTEXT = 420, 16
PAD, EOS, BOS, UNK = 0, 1, 2, 3


@pytest.fixture(scope="module")
def gemma_spm(tmp_path_factory):
    return train_gemma_spm(tmp_path_factory.mktemp("gemma"))


def train_gemma_spm(directory) -> tuple[str, list[str]]:
    """`directory/tokenizer.model` and the words of its corpus: a Gemma-style BPE SentencePiece model (pad 0,
    `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>`, byte fallback, no dummy prefix, spaces kept) trained on mixed-case
    text, so that lower-casing changes the ids."""
    rng = random.Random(0)
    words = WORDS + ["".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(2, 7))) for _ in range(150)]
    corpus = [_sentence(rng, words, rng.randint(1, 12)) for _ in range(2000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=VOCAB, model_type="bpe",
        pad_id=PAD, eos_id=EOS, bos_id=BOS, unk_id=UNK, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<mask>"], byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, character_coverage=1.0, num_threads=1, minloglevel=2)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    return str(directory / "tokenizer.model"), words


@pytest.fixture(scope="module")
def torch_model():
    return random_siglip(VOCAB, CONTEXT, pad_id=PAD, eos_id=EOS, bos_id=BOS, seed=1)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, torch_model, gemma_spm):
    """As the google/siglip2-*-patch*-* repositories hold it: SiglipModel weights, GemmaTokenizer files made as
    transformers' `convert_siglip2_to_hf.py` makes them (no `<bos>`, `<eos>` added, right padding)."""
    path = str(tmp_path_factory.mktemp("hf_siglip2"))
    torch_model.save_pretrained(path)
    shutil.copy(gemma_spm[0], path)
    transformers.GemmaTokenizer.from_pretrained(path, add_bos_token=False, add_eos_token=True, padding_side="right",
                                                model_max_length=CONTEXT).save_pretrained(path)
    transformers.SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE}).save_pretrained(path)
    return path


def _texts(words):
    rng = random.Random(2)
    return [_sentence(rng, words, rng.randint(0, 14)) for _ in range(150)] + [
        "", " ", "A DOG", "ΣΊΣΥΦΟΣ ΟΔΟΣ", "İstanbul", "ÀÉÎÕÜ ǅ", "☃ snowman 🙂", "tab\there  two  spaces",
        "x " * 40, "3.14159 and 100%"]


def _reference_ids(directory, texts):
    """transformers' `Siglip2Tokenizer` (Gemma + lower-casing) on the repository's files."""
    reference = transformers.Siglip2Tokenizer.from_pretrained(directory)
    return np.array(reference(texts, padding="max_length", truncation=True, max_length=CONTEXT)["input_ids"])


def _torch_text(model, ids):
    with torch.no_grad():
        return model.get_text_features(input_ids=torch.tensor(np.asarray(ids, np.int64))).pooler_output.numpy()


def test_hf_siglip2_tokenizes_lower_cased_and_embeds_like_transformers(hf_dir, torch_model, gemma_spm):
    pretrained = load_pretrained(hf_dir)
    assert pretrained.format == "hf_siglip" and pretrained.config.text.vocab_size == VOCAB
    texts = _texts(gemma_spm[1])
    want = _reference_ids(hf_dir, texts)
    hub = transformers.AutoTokenizer.from_pretrained(hf_dir)  # the class the repositories name: no lower-casing
    assert type(hub).__name__ == "GemmaTokenizer"
    assert hub(["A DOG"], padding="max_length", max_length=CONTEXT)["input_ids"][0] != want[texts.index("A DOG")].tolist()
    ids = pretrained.tokenizer(texts)
    for text, row, expected in zip(texts, ids, want):
        assert row.tolist() == expected.tolist(), repr(text)
    assert (ids[:, -1] == EOS).sum() >= 2 and (ids == PAD).any() and not (ids == BOS).any()
    _assert_same_direction(pretrained.encode_text(texts), _torch_text(torch_model, want))
    processor = transformers.AutoImageProcessor.from_pretrained(hf_dir, backend="pil")
    pixels = torch.tensor(processor(images=_images(), return_tensors="np")["pixel_values"])
    with torch.no_grad():
        image_ref = torch_model.get_image_features(pixel_values=pixels).pooler_output.numpy()
    _assert_same_direction(pretrained.encode_image(_images()), image_ref)


def _big_vision_tok(sp, text):
    """big_vision's `lower|tok(length, model="gemma", bos="no", eos="sticky")`: tf.strings.lower (A–Z only),
    SentencePiece ids + `<eos>`, cut to `length - 1` + `<eos>` when too long, padded with the model's pad id."""
    ids = sp.encode("".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)) + [sp.eos_id()]
    ids = ids[:CONTEXT - 1] + ids[-1:] if len(ids) > CONTEXT else ids
    return ids + [sp.pad_id()] * (CONTEXT - len(ids))


def test_big_vision_siglip2_npz_tokenizes_as_big_vision_and_exports_a_siglip2_tokenizer(torch_model, gemma_spm,
                                                                                        tmp_path):
    spm_path, words = gemma_spm
    np.savez(tmp_path / "siglip2_b16_32.npz", **_big_vision_npz(torch_model, scanned=True))
    shutil.copy(spm_path, tmp_path / "gemma_tokenizer.model")
    pretrained = load_pretrained(str(tmp_path / "siglip2_b16_32.npz"))
    assert pretrained.format == "big_vision"
    texts = _texts(words)
    sp = spm.SentencePieceProcessor(model_file=spm_path)
    want = np.array([_big_vision_tok(sp, text) for text in texts])
    ids = pretrained.tokenizer(texts)
    for text, row, expected in zip(texts, ids, want):
        assert row.tolist() == expected.tolist(), repr(text)
    _assert_same_direction(pretrained.encode_text(texts), _torch_text(torch_model, want))

    out = str(tmp_path / "hf")
    hf_siglip.export(pretrained, out)
    reference = _reference_ids(out, texts)
    assert type(transformers.AutoTokenizer.from_pretrained(out)).__name__ == "Siglip2Tokenizer"
    ascii_capitals_only = [i for i, text in enumerate(texts) if text.lower() == lower_each_character(text)
                           and not any(c.isupper() and not "A" <= c <= "Z" for c in text)]
    assert len(ascii_capitals_only) > 100
    np.testing.assert_array_equal(ids[ascii_capitals_only], reference[ascii_capitals_only])
    again = load_pretrained(out)  # tokenizer.model with Siglip2Tokenizer's lower-casing
    assert isinstance(again.tokenizer, SentencePieceTokenizer) and again.tokenizer.normalization == "lowercase"
    np.testing.assert_array_equal(again.tokenizer(texts), reference)
    exported = transformers.SiglipModel.from_pretrained(out).state_dict()
    for key, value in torch_model.state_dict().items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)
    result = mmjax("convert", str(tmp_path / "siglip2_b16_32.npz"), "--to", "hf", "--out", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    assert "(big_vision SigLIP, " in result.stdout
    assert "the Siglip2Tokenizer written to " in result.stderr and "capitals outside A-Z" in result.stderr
    bv = tmp_path / "bv"  # back to big_vision: the tensors big_vision's names give, with no caveat to warn of
    result = mmjax("convert", str(tmp_path / "siglip2_b16_32.npz"), "--to", "big_vision", "--out", str(bv))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr and f"-> {bv} (big_vision)" in result.stdout
    assert sorted(os.listdir(bv)) == [f"siglip_{IMAGE}.model", f"siglip_{IMAGE}.npz"]
    written, reference = dict(np.load(bv / f"siglip_{IMAGE}.npz")), _big_vision_npz(torch_model, scanned=False)
    assert sorted(written) == sorted(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)
    assert (bv / f"siglip_{IMAGE}.model").read_bytes() == open(spm_path, "rb").read()


def test_hf_siglip2_export_loads_in_transformers_and_reimports_bit_identical(hf_dir, gemma_spm, tmp_path):
    pretrained = load_pretrained(hf_dir)
    out = str(tmp_path / "exported")
    hf_siglip.export(pretrained, out)
    texts = _texts(gemma_spm[1])
    written = transformers.AutoTokenizer.from_pretrained(out)
    np.testing.assert_array_equal(
        written(texts, padding="max_length", truncation=True, max_length=CONTEXT)["input_ids"],
        _reference_ids(hf_dir, texts))
    again = load_pretrained(out)
    np.testing.assert_array_equal(again.tokenizer(texts), pretrained.tokenizer(texts))
    for path, value in checks.flatten(pretrained.params).items():
        np.testing.assert_array_equal(checks.flatten(again.params)[path], value, err_msg=path)


def test_lowercase_normalization_lowers_each_character_on_its_own():
    """Hand-derived: "Σ" at a word's end is "σ" (Python's `str.lower` gives the final "ς"), "İ" is "i" and a
    combining dot above, A–Z and "Ü" are lowered, other characters kept."""
    assert lower_each_character("ΟΔΟΣ İ Über 3-D!") == "οδοσ i\u0307 über 3-d!"
    assert "ΟΔΟΣ".lower() == "οδος"


def test_a_tokenizer_json_without_gemma_special_tokens_is_one_line(tmp_path):
    path = tmp_path / "tokenizer.json"
    Tokenizer.for_synthetic().save(path)
    with pytest.raises(ValueError, match=r"tokenizer.json: the vocabulary has no <eos> token; not a Gemma \(SigLIP 2\) "
                                         r"tokenizer$"):
        siglip2_tokenizer(path, CONTEXT)


def test_a_naflex_siglip2_directory_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "siglip2"}')
    with pytest.raises(ValueError, match=r"config.json: SigLIP 2 NaFlex \(model_type 'siglip2', native aspect ratio\) "
                                         r"is not supported; the fixed-resolution SigLIP 2 checkpoints") as error:
        load_pretrained(str(tmp_path))
    assert "\n" not in str(error.value)


def test_a_siglip2_npz_with_another_tokenizer_is_refused_in_one_line(torch_model, tmp_path):
    """A T5-style SentencePiece model beside a SigLIP 2 checkpoint (256 000-token table) loaded with `</s>`
    padding and no error; the ids were meaningless to the model."""
    npz = _big_vision_npz(torch_model, scanned=False)
    npz["txt/Embed_0/embedding"] = np.zeros((256_000, WIDTH), np.float32)
    np.savez(tmp_path / "siglip2_b16_32.npz", **npz)
    t5 = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a photo of a cat", "a dog"] * 50), model_writer=t5,
                                   vocab_size=14, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   num_threads=1, minloglevel=2)
    (tmp_path / "t5.model").write_bytes(t5.getvalue())
    with pytest.raises(ValueError, match=r"siglip2_b16_32.npz: its 256,000-token table is Gemma's \(SigLIP 2\), but "
                                         r"the tokenizer .*t5.model is not \(no <eos> piece\): pass "
                                         r"gs://big_vision/gemma_tokenizer.model$"):
        load_pretrained(str(tmp_path / "siglip2_b16_32.npz"))


def test_an_index_records_the_tokenizer_its_checkpoint_was_loaded_with(torch_model, gemma_spm, tmp_path):
    """`search` of an index embedded with `--tokenizer` loads it again (it said the tokenizer was missing), and
    warns when `--tokenizer` names another file."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "other").mkdir()
    npz = str(tmp_path / "ckpt" / "siglip2_b16_32.npz")
    np.savez(npz, **_big_vision_npz(torch_model, scanned=False))
    shutil.copy(gemma_spm[0], tmp_path / "gemma.model")
    shutil.copy(gemma_spm[0], tmp_path / "other" / "gemma.model")
    texts = ["a photo of a cat", "a dog", "A BIRD's nest", "über café"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    index = str(tmp_path / "texts.npz")
    embedded = mmjax("embed", "--model", npz, "--tokenizer", str(tmp_path / "gemma.model"), "--texts",
                     str(tmp_path / "texts.txt"), "--out", index)
    assert embedded.returncode == 0, embedded.stderr
    found = mmjax("search", "--index", index, "--text", "a cat", "-k", "4")
    assert found.returncode == 0 and "warning" not in found.stderr, found.stderr
    pretrained = load_pretrained(npz, tokenizer=str(tmp_path / "gemma.model"))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    cosine = unit(pretrained.encode_text(texts)) @ unit(pretrained.encode_text(["a cat"]))[0]
    assert [line.split(maxsplit=2)[2] for line in found.stdout.strip().splitlines()] == [
        texts[i] for i in np.argsort(-cosine)]
    other = mmjax("search", "--index", index, "--text", "a cat", "--tokenizer", str(tmp_path / "other" / "gemma.model"))
    assert other.returncode == 0, other.stderr
    assert (f"mmjax: warning: the index was embedded with --tokenizer {tmp_path / 'gemma.model'}, not "
            f"{tmp_path / 'other' / 'gemma.model'}") in other.stderr
