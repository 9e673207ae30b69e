"""Caption metrics (BLEU-1…4, CIDEr-D) against pycocoevalcap and values derived by hand, the PTB-like tokenizer,
and `caption_benchmark` on webdataset and TFDS image–text benchmarks written here."""

import math
import shutil

import numpy as np
import pytest
from fake_coco import write_fake_coco_captions
from PIL import Image
from test_benchmarks import COLOURS, png, write_classification, write_shard

from mmjax.eval.caption_scores import bleu, caption_scores, cider_d, tokenize
from mmjax.eval.captioning import caption_benchmark

WORDS = "a dog cat on the grass red ball man woman sitting with".split()


def random_corpus(rng, num_images):
    def sentence(shortest=0):
        return [str(w) for w in rng.choice(WORDS, rng.integers(shortest, 12))]

    candidates = [sentence() for _ in range(num_images)]
    references = [[sentence(1) for _ in range(rng.integers(1, 6))] for _ in range(num_images)]
    return candidates, references


def test_bleu_and_cider_d_equal_pycocoevalcap_on_random_corpora():
    from_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
    from_cider = pytest.importorskip("pycocoevalcap.cider.cider")
    rng = np.random.default_rng(0)
    for num_images in (1, 2, 7, 30):
        candidates, references = random_corpus(rng, num_images)
        gts = {i: [" ".join(r) for r in image] for i, image in enumerate(references)}
        res = {i: [" ".join(candidate)] for i, candidate in enumerate(candidates)}
        want_bleu, _ = from_bleu.Bleu(4).compute_score(gts, res, verbose=0)
        np.testing.assert_allclose(bleu(candidates, references), want_bleu, rtol=1e-12)
        _, want_cider = from_cider.Cider().compute_score(gts, res)  # 0 for one image: every idf is 0
        np.testing.assert_allclose(cider_d(candidates, references), want_cider, rtol=1e-10, atol=1e-12)


def test_scores_derived_by_hand():
    # two images, each caption its single reference: idf("a") = log 2 - log 2 = 0, idf(other n-grams) = log 2;
    # the 1- and 2-gram cosines are 1, no 3- or 4-grams: CIDEr-D = 10 * mean(1, 1, 0, 0) = 5
    candidates = [["a", "dog"], ["a", "cat"]]
    references = [[["a", "dog"]], [["a", "cat"]]]
    np.testing.assert_allclose(cider_d(candidates, references), [5.0, 5.0])
    # BLEU: 4/4 unigrams, 2/2 bigrams, 0/0 trigrams and 4-grams, each read as 1e-15 / 1e-9
    np.testing.assert_allclose(bleu(candidates, references), [1.0, 1.0, 1e-2, 1e-3], rtol=1e-6)
    # brevity: 2 words against a 4-word reference, exp(1 - 4/2)
    assert bleu([["a", "dog"]], [[["a", "big", "brown", "dog"]]])[0] == pytest.approx(math.exp(-1))
    # the closest reference length, the shorter on a tie (1 and 3 around 2): no brevity penalty
    assert bleu([["a", "dog"]], [[["dog"], ["a", "big", "dog"]]])[0] == pytest.approx(1.0)
    # "a dog runs": the unigram and bigram cosines are L² / (L√2 · L) = 1/√2 ("runs", "dog runs": idf L = log 2,
    # not in the reference), no trigram in the reference; the length penalty exp(−δ²/2σ²) with δ = 2 − 1 bigrams
    longer = cider_d([["a", "dog", "runs"], ["a", "cat"]], references)
    np.testing.assert_allclose(longer, [10 * (2 / math.sqrt(2)) / 4 * math.exp(-1 / 72), 5.0], rtol=1e-12)


# Captions with what PTB tokenizes specially; the expected words are CoreNLP 3.4.1's (-lowerCase), read by
# pycocoevalcap's punctuation filter.
PTB_CASES = {
    "A man (in a suit) walks.": "a man -lrb- in a suit -rrb- walks",
    "A dog sits next to a t.v. in the room": "a dog sits next to a t.v. in the room",
    "A sign on Washington St. near the park": "a sign on washington st. near the park",
    "Bananas, apples, oranges, etc.": "bananas apples oranges etc.",
    "He cannot go, gonna stay": "he can not go gon na stay",
    "Some 1,000 birds at 5:30 pm": "some 1,000 birds at 5:30 pm",
    "A tie/scarf at 3 o'clock": "a tie/scarf at 3 o'clock",
    "A “quoted” word and a cat… and — dash": "a quoted word and a cat and dash",
    "It's a man's dog, isn't it?": "it 's a man 's dog is n't it",
    "They're [sic] HERE; really!": "they 're -lsb- sic -rsb- here really",
    "A black-and-white photo of a 3.5 inch thing": "a black-and-white photo of a 3.5 inch thing",
    "Two people on the U.S. flag.": "two people on the u.s. flag",
    "A $5 bill & 10% off #1": "a $ 5 bill & 10 % off # 1",
    "A woman's hat and the dogs' toys": "a woman 's hat and the dogs toys",
    "A sign that says STOP!!": "a sign that says stop !!",
    "A train at 10:00 a.m.": "a train at 10:00 a.m.",
    "I can't, won't, don't": "i ca n't wo n't do n't",
    "A plate w/ food on a bike... -- riding": "a plate w / food on a bike riding",
    "a 5.5. and 5. and 5.x and e-mail and -cold": "a 5.5 and 5 and 5.x and e-mail and cold",
    "A Mr. Smith and Dr. Who": "a mr. smith and dr. who",
    "Photo by J. Smith of plan B. and a_b": "photo by j. smith of plan b. and a_b",
    "Pizza with 'quotes', a man said \"hello\"": "pizza with quotes a man said hello",
}


def test_the_tokenizer_splits_and_drops_as_ptb_does():
    assert {caption: " ".join(tokenize(caption)) for caption in PTB_CASES} == PTB_CASES
    assert tokenize("  ") == []


def test_the_tokenizer_equals_the_java_ptb_tokenizer_pycocoevalcap_runs():
    """pycocoevalcap's own PTBTokenizer (Stanford CoreNLP through Java), where Java is installed."""
    ptbtokenizer = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    if shutil.which("java") is None:
        pytest.skip("no java to run pycocoevalcap's PTB tokenizer")
    captions = {i: [{"caption": caption}] for i, caption in enumerate(PTB_CASES)}
    want = ptbtokenizer.PTBTokenizer().tokenize(captions)
    assert {i: [" ".join(tokenize(caption))] for i, caption in enumerate(PTB_CASES)} == want


def test_caption_scores_refuse_what_cannot_be_scored():
    with pytest.raises(ValueError, match="2 candidate captions for 1 images' references"):
        caption_scores(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="image 1 has no reference captions"):
        caption_scores(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="no captions to score"):
        caption_scores([], [])


def colour_of(image: np.ndarray) -> str:
    mean = image.reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda name: np.abs(np.array(COLOURS[name]) - mean).sum())


def colour_captioner(images: np.ndarray) -> list[str]:
    """Writes "a <colour> square" for each image, the colour read from its pixels."""
    return [f"a {colour_of(image)} square" for image in images]


REFERENCES = {"red": ["a red square", "Red."], "green": ["a green block"], "blue": ["the blue one", "blue",
              "a blue tile"], "yellow": ["a yellow square"], "cyan": ["cyan thing", "a cyan square"]}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_webdataset_benchmark_is_captioned_in_order_and_scored_against_its_references(tmp_path, num_workers):
    (tmp_path / "test").mkdir()
    order = ["red", "green", "blue", "yellow", "cyan", "red"]
    write_shard(tmp_path / "test" / "0.tar", [(f"k{i}", {"png": png(COLOURS[c]), "txt": "\n".join(
        REFERENCES[c]).encode()}) for i, c in enumerate(order[:4])])
    write_shard(tmp_path / "test" / "1.tar", [(f"k{i}", {"png": png(COLOURS[c]), "txt": "\n".join(
        REFERENCES[c]).encode()}) for i, c in enumerate(order[4:], start=4)])
    seen = []

    def captioner(images):
        seen.append(len(images))
        return colour_captioner(images)

    metrics, captions = caption_benchmark(f"wds:{tmp_path}", captioner, image_size=3, batch_size=4,
                                          num_workers=num_workers)
    assert captions == [{"caption": f"a {c} square", "references": REFERENCES[c]} for c in order]
    assert seen == [4, 2] and metrics["num_images"] == 6 and metrics["num_texts"] == 11
    pycocoevalcap = pytest.importorskip("pycocoevalcap.bleu.bleu")
    tokenized = {i: [r.lower().rstrip(".") for r in REFERENCES[c]] for i, c in enumerate(order)}  # by hand
    written = {i: [f"a {c} square"] for i, c in enumerate(order)}
    want, _ = pycocoevalcap.Bleu(4).compute_score(tokenized, written, verbose=0)
    assert [metrics[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(want, rel=1e-12)
    from pycocoevalcap.cider.cider import Cider

    assert metrics["cider"] == pytest.approx(Cider().compute_score(tokenized, written)[0], rel=1e-10)
    assert 0 < metrics["bleu_4"] < metrics["bleu_1"] < 1 and metrics["cider"] > 1

    first_two, _ = caption_benchmark(f"wds:{tmp_path}", captioner, image_size=3, batch_size=4, max_examples=2)
    assert first_two["num_images"] == 2 and first_two["num_texts"] == 3


def test_coco_captions_from_a_prepared_tfds_directory(tmp_path):
    pairs = [("red", ["A red square.", "red"]), ("green", ["a green block"]), ("blue", ["a blue tile", "blue"])]
    write_fake_coco_captions(str(tmp_path), "test",
                             [(Image.new("RGB", (5, 3), COLOURS[colour]), texts) for colour, texts in pairs])
    metrics, captions = caption_benchmark("coco_captions", colour_captioner, image_size=3, data_dir=str(tmp_path),
                                          batch_size=2)
    # the stored order is TFDS's; each caption stays with its image's references
    assert sorted((c["caption"], tuple(c["references"])) for c in captions) == sorted(
        (f"a {colour} square", tuple(texts)) for colour, texts in pairs)
    assert metrics["num_images"] == 3 and metrics["num_texts"] == 5
    assert metrics["bleu_1"] == pytest.approx(caption_scores(
        [c["caption"] for c in captions], [c["references"] for c in captions])["bleu_1"])


def test_a_classification_benchmark_or_a_miscounting_captioner_is_one_line(tmp_path):
    name = write_classification(tmp_path, [[0, 1]])
    with pytest.raises(ValueError, match=f"{name} is a classification benchmark, without reference captions"):
        caption_benchmark(name, colour_captioner, image_size=3)
    (tmp_path / "pairs" / "test").mkdir(parents=True)
    write_shard(tmp_path / "pairs" / "test" / "0.tar", [("k0", {"png": png(COLOURS["red"]), "txt": b"red"})])
    with pytest.raises(ValueError, match="the captioner wrote 2 captions for 1 images"):
        caption_benchmark(f"wds:{tmp_path / 'pairs'}", lambda images: ["a", "b"], image_size=3)
