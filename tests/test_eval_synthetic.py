"""The synthetic benchmark, its report and the demo figure, against encoders whose
answers are known.

The encoders here are built from the ground truth: an image is identified by its
bytes (the test renders every example itself) and encoded as one-hot blocks of its
true (colour, shape, size, position); a text is parsed word by word into the same
blocks, with an empty block for an attribute it does not name.
"""
import hashlib
import json
import re
import sys

import numpy as np
import pytest
from PIL import Image

from mmjax.data import synthetic
from mmjax.eval import (
    evaluate_synthetic,
    figure_size,
    format_table,
    results_file_name,
    results_json,
    retrieval_chance,
    text_to_image_examples,
    write_demo_figure,
    write_results,
)

SEED, IMAGE_SIZE = 3, 16
NUM_HELDOUT, NUM_RETRIEVAL = 700, 500
BLOCKS = (synthetic.COLOURS, synthetic.SHAPES, synthetic.SIZES, synthetic.POSITIONS)
OFFSETS = np.cumsum([0] + [len(block) for block in BLOCKS])


def one_hot(colour: int, shape: int, size: int, position: int) -> np.ndarray:
    """[25] float32: one block per attribute; a negative value leaves its block empty."""
    embedding = np.zeros(OFFSETS[-1], np.float32)
    for offset, value in zip(OFFSETS, (colour, shape, size, position)):
        if value >= 0:
            embedding[offset + value] = 1
    return embedding


def parse(text: str) -> tuple[int, int, int, int]:
    """(colour, shape, size, position) named by a caption or prompt, −1 where unnamed."""
    words = re.findall(r"[a-z]+", text.lower())
    found = [next((block.index(w) for w in words if w in block), -1) for block in BLOCKS[:3]]
    place = re.search(r"(?:at|on|in) the ([a-z ]+?)\.?$", text)
    return (*found, synthetic.POSITIONS.index(place.group(1)) if place else -1)


@pytest.fixture(scope="module")
def true_labels() -> dict[bytes, np.ndarray]:
    """Rendered image bytes -> its (shape, colour, size, position), for both eval splits."""
    table = {}
    for split, size in (("heldout", NUM_HELDOUT), ("retrieval", NUM_RETRIEVAL)):
        source = synthetic.SyntheticSource(split, SEED, size)
        for index in range(size):
            record = source[index]
            table[synthetic.render_image(record, IMAGE_SIZE).tobytes()] = record["image_labels"]
    assert len(table) == NUM_HELDOUT + NUM_RETRIEVAL  # every image is told apart by its bytes
    return table


def oracle(true_labels, colour_blind=False):
    """(encode_images, encode_texts) from the ground truth; colour dropped if colour_blind."""
    def encode_images(images):
        assert images.dtype == np.uint8 and images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)
        labels = [true_labels[image.tobytes()] for image in images]
        return np.stack([one_hot(-1 if colour_blind else c, s, z, p) for s, c, z, p in labels])

    def encode_texts(texts):
        parsed = [parse(text) for text in texts]
        return np.stack([one_hot(-1 if colour_blind else c, s, z, p) for c, s, z, p in parsed])

    return encode_images, encode_texts


def random_encoders(dim=32):
    """Encoders that give every input a fixed pseudo-random vector."""
    def embed(key: bytes):
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(dim)

    return (lambda images: np.stack([embed(image.tobytes()) for image in images]),
            lambda texts: np.stack([embed(text.encode()) for text in texts]))


def evaluate(encoders, **kwargs):
    return evaluate_synthetic(*encoders, seed=SEED, image_size=IMAGE_SIZE,
                              num_heldout=NUM_HELDOUT, num_retrieval=NUM_RETRIEVAL,
                              batch_size=128, **kwargs)


def heldout_colours():
    source = synthetic.SyntheticSource("heldout", SEED, NUM_HELDOUT)
    return np.array([source[index]["image_labels"][1] for index in range(NUM_HELDOUT)])


def test_parse_reads_captions_and_prompts():
    assert parse("there is a large green circle in the center") == (2, 0, 2, 4)
    assert parse("a photo of a small red star at the top left") == (0, 5, 0, 0)
    assert parse("a picture of a pink cross on the left") == (6, 4, -1, 3)
    assert parse("an image of a blue diamond.") == (4, 3, -1, -1)


def test_oracle_is_perfect(true_labels):
    metrics = evaluate(oracle(true_labels))
    for name in ("acc1", "acc5", "mean_per_class_recall", "image_retrieval_recall@1",
                 "text_retrieval_recall@1", "image_retrieval_recall@10"):
        assert metrics[name] == 1.0, name
    assert metrics["num_classes"] == 42
    assert metrics["num_zeroshot_images"] == NUM_HELDOUT
    assert metrics["num_retrieval_pairs"] == NUM_RETRIEVAL
    assert metrics["chance_acc1"] == pytest.approx(1 / 42)
    assert metrics["chance_recall@1"] == pytest.approx(1 / NUM_RETRIEVAL)


def test_colour_blind_encoder_exact(true_labels):
    """Without colour, the 7 classes of the image's shape tie; ties go to the lower class
    id = colour * 6 + shape, so the prediction is always red and the true class ranks
    at its colour id. Hence acc1 = P(red), acc5 = P(colour < 5), and of the 7 held-out
    classes only the red one has recall (1): mean per-class recall = 1/7."""
    colours = heldout_colours()
    metrics = evaluate(oracle(true_labels, colour_blind=True))
    assert metrics["acc1"] == pytest.approx(np.mean(colours == 0))
    assert metrics["acc5"] == pytest.approx(np.mean(colours < 5))
    assert metrics["mean_per_class_recall"] == pytest.approx(1 / 7)
    # A caption without its colour matches exactly the <= 7 images that differ only in
    # colour (all tied at cosine 1): always in the top 10, at rank 1 only when lowest-indexed.
    source = synthetic.SyntheticSource("retrieval", SEED, NUM_RETRIEVAL)
    keys = [tuple(np.delete(source[i]["image_labels"], 1)) for i in range(NUM_RETRIEVAL)]
    first = {key: keys.index(key) for key in set(keys)}
    expected_r1 = np.mean([first[key] == i for i, key in enumerate(keys)])
    assert metrics["image_retrieval_recall@1"] == pytest.approx(expected_r1)
    assert metrics["image_retrieval_recall@10"] == 1.0
    assert metrics["text_retrieval_recall@10"] == 1.0


def test_random_encoder_is_near_chance():
    metrics = evaluate(random_encoders())
    assert metrics["acc1"] < 0.1  # chance 1/42; 700 images
    assert metrics["image_retrieval_recall@1"] < 0.02  # chance 1/500
    assert metrics["text_retrieval_recall@10"] < 0.06  # chance 10/500


def test_results_json_and_table(tmp_path, true_labels):
    metrics = evaluate(oracle(true_labels, colour_blind=True))
    results = results_json("synthetic_shapes", "oracle", metrics, extra={"seed": SEED})
    assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(results)
    assert results["task"] == "zeroshot_classification+zeroshot_retrieval"
    assert results["seed"] == SEED
    with pytest.raises(ValueError, match=r"^extra may not replace the clip_benchmark keys \['model', 'task'\]$"):
        results_json("d", "m", metrics, extra={"task": "other", "model": "other", "seed": 0})
    write_results(tmp_path / "results.json", results | {"metrics": metrics | {"x": float("nan")}})
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded["metrics"]["acc1"] == metrics["acc1"] and loaded["metrics"]["x"] is None

    table = format_table(metrics | {"images_per_s": 1234.5678})
    lines = table.splitlines()
    assert len({len(line) for line in lines if line.endswith("%")}) == 1  # aligned
    for name, value in metrics.items():
        if not name.startswith("chance_"):
            row = next(line for line in lines if line.split()[0] == name)
            shown = str(value) if isinstance(value, int) else f"{100 * value:.2f} %"
            assert shown in row, (name, row)
    assert next(line for line in lines if line.startswith("images_per_s")).split()[1:] == ["1234.57"]
    acc1_row = next(line for line in lines if line.startswith("acc1 "))
    assert acc1_row.endswith(f"{100 / 42:.2f} %")
    recall_row = next(line for line in lines if line.startswith("text_retrieval_recall@5"))
    assert recall_row.endswith(f"{500 / NUM_RETRIEVAL:.2f} %")
    # acc5 of 2 classes is undefined (NaN, null in the JSON): shown as n/a, with no 100 % chance level
    assert format_table({"num_classes": 2, "acc5": float("nan")}).splitlines()[-1].split() == ["acc5", "n/a"]


def test_retrieval_chance_matches_hand_counts_and_random_rankings():
    # images with 2, 1 and 0 of the 3 captions; k=1: (2/3 + 1/3 + 0) / 3; k=2: (1 + 2/3 + 0) / 3
    chance = retrieval_chance(np.array([2, 1, 0]), ks=(1, 2))
    assert chance["chance_text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert chance["chance_text_retrieval_recall@2"] == pytest.approx(5 / 9)
    assert chance["chance_image_retrieval_recall@2"] == pytest.approx(2 / 3)
    # exact: one caption per image among 1000 gives 1/1000 itself, not 1 − 0.999 (0.0010000000000000009)
    assert retrieval_chance(np.ones(1000, int), ks=(1,))["chance_text_retrieval_recall@1"] == 0.001
    with pytest.raises(ValueError, match="at least one image"):
        retrieval_chance(np.array([], int))
    # against simulated uniformly random rankings of 8 captions for 6 images
    counts = np.array([3, 2, 1, 0, 1, 1])
    owner = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    trials = 20_000
    rankings = np.argsort(rng.random((trials, len(counts), len(owner))), axis=2)
    hits = owner[rankings] == np.arange(len(counts))[None, :, None]
    chance = retrieval_chance(counts, ks=(1, 3, 10))
    for k in (1, 3, 10):
        simulated = hits[:, :, :k].any(axis=2).mean()
        assert chance[f"chance_text_retrieval_recall@{k}"] == pytest.approx(simulated, abs=0.01)
    assert chance["chance_image_retrieval_recall@10"] == 1.0
    table = format_table({"text_retrieval_recall@3": 0.9} | chance)
    assert table.splitlines()[1].split()[-2:] == [f"{100 * chance['chance_text_retrieval_recall@3']:.2f}", "%"]


def test_results_file_is_named_after_the_benchmark_however_its_path_is_written():
    assert results_file_name(None) == "eval.json"
    assert results_file_name("cifar10") == "eval_cifar10.json"
    assert results_file_name("wds:/data/cifar10") != results_file_name("cifar10")
    for written in ("wds:bench_cls", "wds:bench_cls/", "wds:/data/bench_cls", "wds:./data/bench_cls/"):
        assert results_file_name(written) == "eval_wds_bench_cls.json", written


def test_examples_and_figure(tmp_path, true_labels):
    examples = text_to_image_examples(*oracle(true_labels), seed=SEED, image_size=IMAGE_SIZE,
                                      queries=3, k=4, num_images=NUM_RETRIEVAL)
    source = synthetic.SyntheticSource("retrieval", SEED, NUM_RETRIEVAL)
    assert [example.query for example in examples] == [source[i]["caption"] for i in range(3)]
    for index, (query, images, correct) in enumerate(examples):
        assert correct == [True, False, False, False]
        assert np.array_equal(images[0], synthetic.render_image(source[index], IMAGE_SIZE))
        assert all(image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) for image in images)

    # fewer retrieval images than queries: one example an image
    assert len(text_to_image_examples(*oracle(true_labels), seed=SEED, image_size=IMAGE_SIZE, queries=5, k=2,
                                      num_images=3)) == 3

    records = [{"step": step, "loss": 5 / (1 + step)} for step in range(0, 100, 10)]
    path = tmp_path / "demo.png"
    write_demo_figure(path, records + [{"step": 100, "acc1": 0.5}], examples)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == figure_size(3, 4)


def test_figure_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    with pytest.raises(ImportError, match=re.escape("pip install mmjax[viz]")):
        write_demo_figure(tmp_path / "demo.png", [], [("q", [], [])])
