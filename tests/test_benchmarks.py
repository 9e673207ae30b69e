"""Benchmark readers and runners: TFDS (mock_data), webdataset shards written here, errors."""
from __future__ import annotations

import gzip
import io
import math
import re
import tarfile
import zlib

import numpy as np
import pytest
from fake_coco import write_fake_coco_captions
from PIL import Image
from test_eval_metrics import naive_balanced_accuracy, naive_topk_accuracy

from mmjax.data.preprocess import ImagePreprocess
from mmjax.data.tar_samples import read_tar_samples
from mmjax.data.transforms import resize_center_crop
from mmjax.eval import benchmarks, sources
from mmjax.eval.zeroshot import (
    l2_normalize,
)

COLOURS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255),
}
NAMES = list(COLOURS)
TEMPLATES = ["a photo of a {c} square.", "a {c} thing"]


def png(colour, size=(6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def pixel_projection(image_size: int):
    """A fixed random linear image encoder: uint8 [N, S, S, 3] -> [N, 8]."""
    projection = np.random.default_rng(2).normal(size=(image_size * image_size * 3, 8))
    return lambda images: images.reshape(len(images), -1).astype(np.float64) @ projection


def write_shard(path, samples) -> None:
    """samples: list of (key, {extension: bytes})."""
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for extension, data in files.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_classification(root, labels_per_shard, classnames=NAMES, templates=TEMPLATES):
    (root / "test").mkdir(parents=True)
    for shard, labels in enumerate(labels_per_shard):
        write_shard(root / "test" / f"{shard:04d}.tar",
                    [(f"s{shard}_{i:03d}", {"png": png(COLOURS[NAMES[label]]),
                                            "cls": str(label).encode()})
                     for i, label in enumerate(labels)])
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return f"wds:{root}"


def colour_index(images: np.ndarray) -> np.ndarray:
    """Index in NAMES of each (solid-colour) image's colour."""
    table = np.array(list(COLOURS.values()))
    means = images.reshape(len(images), -1, 3).mean(axis=1)
    return np.argmin(((means[:, None, :] - table[None]) ** 2).sum(-1), axis=1)


def oracle_images(images: np.ndarray) -> np.ndarray:
    return np.eye(len(NAMES))[colour_index(images)]


def oracle_texts(texts: list[str]) -> np.ndarray:
    return np.stack([np.eye(len(NAMES))[[n in t.split() for n in NAMES].index(True)]
                     for t in texts])


def random_texts(texts: list[str], dim: int = 8) -> np.ndarray:
    return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=dim)
                     for t in texts])


LABELS = [[0, 1, 2, 3, 4, 5, 0], [0, 0, 1, 3, 5]]  # imbalanced, two shards, 12 images


def naive_zero_shot_metrics(image_emb, encode_text, classnames, templates, labels) -> dict[str, float]:
    """clip_benchmark's zero-shot classification written out: a class is the normalised mean of its normalised
    prompt embeddings (`{c}` templates), an image goes to the classes of largest cosine, metrics as sklearn's."""
    unit = lambda x: np.asarray(x, np.float64) / np.linalg.norm(x, axis=-1, keepdims=True)
    prototypes = np.stack([unit(unit(encode_text([t.replace("{c}", name) for t in templates])).mean(axis=0))
                           for name in classnames])
    logits = unit(image_emb) @ prototypes.T
    return {"acc1": naive_topk_accuracy(logits, labels, 1), "acc5": naive_topk_accuracy(logits, labels, 5),
            "mean_per_class_recall": naive_balanced_accuracy(list(labels), list(logits.argmax(axis=1)))}


def test_shipped_classnames_and_templates():
    names, templates = benchmarks.shipped_classnames(), benchmarks.shipped_templates()
    assert len(names["cifar10"]) == 10 and len(names["cifar100"]) == 100
    assert len(names["imagenet1k"]) == 1000 and len(templates["imagenet1k"]) == 80
    assert len(names["food101"]) == 101 and len(names["pets"]) == 37
    assert names["cifar10"][0] == "airplane" and names["pets"][0] == "Abyssinian"
    for key, names_of_key in names.items():
        if key != "imagenet1k":  # OpenAI's ImageNet names repeat two (e.g. "missile")
            assert len(set(names_of_key)) == len(names_of_key), key
        assert all("{c}" in t for t in templates[key]), key
    source = benchmarks._load_json_data("classnames.json")["source"]
    assert "MIT" in source["license"] and "CLIP_benchmark" in source["repository"]
    for name, benchmark in sources.TFDS_BENCHMARKS.items():
        if benchmark.task == sources.CLASSIFICATION:
            assert benchmark.classnames in names, name


def test_resize_center_crop():
    image = np.zeros((4, 8, 3), np.uint8)  # height 4, width 8
    image[:, :2] = COLOURS["red"]
    image[:, 2:6] = COLOURS["green"]
    image[:, 6:] = COLOURS["blue"]
    out = resize_center_crop(Image.fromarray(image), 4)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.broadcast_to(COLOURS["green"], (4, 4, 3)))
    tall = resize_center_crop(Image.new("L", (3, 9), 7), 6)  # grey -> RGB, upscaled
    assert tall.shape == (6, 6, 3) and (tall == 7).all()


def test_wds_classification_oracle_and_wrong_encoder(tmp_path):
    name = write_classification(tmp_path, LABELS)
    task, metrics = benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=3,
                                             batch_size=5)
    assert task == "zeroshot_classification"
    assert metrics["acc1"] == 1.0 and metrics["acc5"] == 1.0
    assert metrics["mean_per_class_recall"] == 1.0
    assert metrics["num_images"] == 12 and metrics["num_classes"] == 6
    assert metrics["images_per_s"] > 0

    def wrong_images(images):  # classes 0-2 right; 3-5 -> (c+1) % 6 first, c second
        index = colour_index(images)
        right = np.eye(6)[index]
        return np.where((index < 3)[:, None], right, np.eye(6)[(index + 1) % 6] + 0.5 * right)

    _, metrics = benchmarks.run_benchmark(name, wrong_images, oracle_texts, image_size=3,
                                          batch_size=5)
    labels = np.concatenate(LABELS)
    assert metrics["acc1"] == pytest.approx(np.mean(labels < 3))  # 7 / 12
    assert metrics["acc5"] == 1.0
    assert metrics["mean_per_class_recall"] == pytest.approx(0.5)  # 3 of 6 classes right


def test_wds_classification_matches_dense_metrics(tmp_path):
    name = write_classification(tmp_path, LABELS)
    projection = np.random.default_rng(0).normal(size=(3, 8))

    def random_images(images):
        return images.reshape(len(images), -1, 3).mean(axis=1) @ projection

    _, metrics = benchmarks.run_benchmark(name, random_images, random_texts, image_size=2,
                                          batch_size=4, max_examples=10)
    labels = np.concatenate(LABELS)[:10]
    pixels = np.array([COLOURS[NAMES[label]] for label in labels], np.float64)
    expected = naive_zero_shot_metrics(pixels @ projection, random_texts, NAMES, TEMPLATES, labels)
    assert metrics["num_images"] == 10
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key


def naive_recall(image_emb, text_emb, text_to_image, k):
    """Dense recall@k, ties to the lower index (stable sort)."""
    scores = l2_normalize(text_emb).astype(np.float64) @ l2_normalize(image_emb).T
    top_images = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    image_hits = [text_to_image[t] in top_images[t] for t in range(len(text_emb))]
    top_texts = np.argsort(-scores.T, axis=1, kind="stable")[:, :k]
    text_hits = [(text_to_image[top_texts[i]] == i).any() for i in range(len(image_emb))]
    return float(np.mean(image_hits)), float(np.mean(text_hits))


def test_wds_retrieval_several_captions(tmp_path):
    (tmp_path / "test").mkdir()
    captions = {  # image colour -> its captions (2 or 3 each)
        "red": ["a red square", "red", "something red here"],
        "green": ["a green square", "green block"],
        "blue": ["blue", "a blue tile", "the blue one"],
        "yellow": ["yellow", "a yellow square"],
        "cyan": ["cyan thing", "a cyan square"],
    }
    order = list(captions)
    write_shard(tmp_path / "test" / "0000.tar",
                [(f"k{i}", {"jpg": png(COLOURS[c]),
                            "txt": "\n".join(captions[c]).encode()})
                 for i, c in enumerate(order[:3])])
    write_shard(tmp_path / "test" / "0001.tar",
                [(f"k{i}", {"png": png(COLOURS[c]), "txt": "\n".join(captions[c]).encode()})
                 for i, c in enumerate(order[3:], start=3)])
    name = f"wds:{tmp_path}"
    task, metrics = benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2,
                                             batch_size=2)
    assert task == "zeroshot_retrieval"
    assert metrics["num_images"] == 5 and metrics["num_texts"] == 12
    assert metrics["image_retrieval_recall@1"] == 1.0
    assert metrics["text_retrieval_recall@1"] == 1.0
    # random ranking: an image with m of the 12 captions finds one first with chance m / 12
    assert metrics["chance_text_retrieval_recall@1"] == pytest.approx((3 + 2 + 3 + 2 + 2) / 12 / 5)
    assert metrics["chance_image_retrieval_recall@1"] == pytest.approx(1 / 5)
    # top 5 of 12: an image with m captions misses them all with chance C(12 - m, 5) / C(12, 5) = 126 or 252 / 792
    assert metrics["chance_text_retrieval_recall@5"] == pytest.approx((2 * (1 - 126 / 792) + 3 * (1 - 252 / 792)) / 5)

    projection = np.random.default_rng(1).normal(size=(3, 8))

    def random_images(images):
        return images.reshape(len(images), -1, 3).mean(axis=1) @ projection

    _, metrics = benchmarks.run_benchmark(name, random_images, random_texts, image_size=2,
                                          batch_size=2)
    image_emb = np.array([COLOURS[c] for c in order], np.float64) @ projection
    texts = [t for c in order for t in captions[c]]
    text_to_image = np.array([i for i, c in enumerate(order) for _ in captions[c]])
    for k in (1, 5, 10):
        image_recall, text_recall = naive_recall(image_emb, random_texts(texts), text_to_image, k)
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(image_recall), k
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(text_recall), k
    assert 0 < metrics["image_retrieval_recall@1"] < 1  # a non-trivial case


def test_tfds_cifar10_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    encode_images = pixel_projection(32)

    with tfds.testing.mock_data(num_examples=12):
        task, metrics = benchmarks.run_benchmark("cifar10", encode_images, random_texts,
                                                 image_size=32, data_dir=str(tmp_path),
                                                 batch_size=5)
        source = tfds.data_source("cifar10", split="test")
        examples = [source[i] for i in range(len(source))]
    assert task == "zeroshot_classification" and metrics["num_images"] == 12
    images = np.stack([example["image"] for example in examples])  # 32 px: no resize
    labels = np.array([example["label"] for example in examples])
    expected = naive_zero_shot_metrics(encode_images(images), random_texts, benchmarks.shipped_classnames()["cifar10"],
                                       benchmarks.shipped_templates()["cifar10"], labels)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_tfds_dataset(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match=r"tfds build cifar10 --data_dir") as excinfo:
        benchmarks.run_benchmark("cifar10", oracle_images, oracle_texts, image_size=8,
                                 data_dir=str(tmp_path))
    assert "tensorflow-cpu" in one_line(excinfo)
    with pytest.raises(FileNotFoundError, match=r"coco_captions/2014.*not prepared") as excinfo:
        benchmarks.run_benchmark("coco_captions", oracle_images, oracle_texts, image_size=8,
                                 data_dir=str(tmp_path))
    one_line(excinfo)


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark 'cifar11'"):
        benchmarks.run_benchmark("cifar11", oracle_images, oracle_texts, image_size=8)


def test_empty_shard(tmp_path):
    name = write_classification(tmp_path, [[0, 1], []])
    with pytest.raises(ValueError, match=r"0001\.tar: empty shard") as excinfo:
        benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2)
    one_line(excinfo)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_image(tmp_path, num_workers):
    (tmp_path / "test").mkdir()
    write_shard(tmp_path / "test" / "0000.tar",
                [("a", {"png": png((255, 0, 0)), "cls": b"0"}),
                 ("b", {"png": b"\x89PNG not really", "cls": b"1"})])
    (tmp_path / "classnames.txt").write_text("red\ngreen\n")
    (tmp_path / "zeroshot_classification_templates.txt").write_text("a {c} thing\n")
    with pytest.raises(ValueError, match=r"0000\.tar: cannot decode image b\.png \(not an image format PIL reads\)$") \
            as excinfo:
        benchmarks.run_benchmark(f"wds:{tmp_path}", oracle_images, oracle_texts, image_size=2,
                                 batch_size=1, num_workers=num_workers)
    one_line(excinfo)
    assert not getattr(excinfo.value, "__notes__", None)  # grain's note about its worker traceback dropped


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_label_that_is_not_an_integer_is_one_line_naming_the_sample(tmp_path, num_workers):
    name = write_classification(tmp_path, [[0, 1]])
    write_shard(tmp_path / "test" / "0001.tar", [("odd", {"png": png((255, 0, 0)), "cls": b"dog"})])
    with pytest.raises(ValueError, match=r"0001\.tar: sample odd has a \.cls that is not an integer label: b'dog'$") \
            as info:
        benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2, num_workers=num_workers)
    one_line(info)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_caption_that_is_not_utf8_is_one_line_and_utf16_is_read(tmp_path, num_workers):
    """A benchmark's captions are read strictly (never silently changed to U+FFFD); UTF-16 with its byte-order
    mark is text."""
    (tmp_path / "test").mkdir()
    write_shard(tmp_path / "test" / "0000.tar", [
        ("k0", {"png": png((255, 0, 0)), "txt": "a red square".encode("utf-16")}),
        ("k1", {"png": png((0, 255, 0)), "txt": "un caf\u00e9 vert".encode("latin-1")})])
    with pytest.raises(ValueError, match=r"0000\.tar: sample k1 has a \.txt that is neither UTF-8 nor UTF-16 "
                                         r"\(invalid continuation byte at byte 6\)$") as info:
        benchmarks.run_benchmark(f"wds:{tmp_path}", oracle_images, oracle_texts, image_size=2,
                                 num_workers=num_workers)
    one_line(info)


def test_a_template_with_another_placeholder_or_no_class_names_is_one_line(tmp_path, capsys):
    name = write_classification(tmp_path / "a", [[0, 1]], templates=["a {c} thing", "a {size} {c}"])
    with pytest.raises(ValueError, match=r"prompt template 'a \{size\} \{c\}' needs one \{c\} or \{\} placeholder") \
            as info:
        benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2)
    one_line(info)
    name = write_classification(tmp_path / "b", [[0, 1]], classnames=[])
    with pytest.raises(ValueError, match=r"classnames\.txt has no non-empty lines \(one class name per line\)$"):
        benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2)
    # no placeholder: every class got the same prompts, so every image the first class, with no word said
    name = write_classification(tmp_path / "c", [[0, 1]], templates=["a {c} thing", "a photo"])
    with pytest.raises(ValueError, match=r"prompt template 'a photo' needs one \{c\} or \{\} placeholder"):
        benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2)
    # a field of the class name ({c.upper}, {c[0]}) gave a raw AttributeError / TypeError traceback
    for directory, template in (("e", "a {c.upper} thing"), ("f", "a {c[0]} thing"), ("g", "a {c:{c[x]}} thing")):
        name = write_classification(tmp_path / directory, [[0, 1]], templates=[template])
        with pytest.raises(ValueError, match=rf"prompt template {re.escape(repr(template))} needs one \{{c\}} or "
                                             rf"\{{\}} placeholder and no other \("):
            benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2)
    name = write_classification(tmp_path / "h", [[0, 1]], templates=["a photo"])
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"prompt template 'a photo' needs one") as info:
        benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2, progress=True)
    bar = capsys.readouterr().err  # read while the error is alive, as the CLI prints it (its frames hold the bar)
    assert bar and bar.endswith("\n") and info  # the bar ended its line, so `mmjax: error: …` starts its own
    name = write_classification(tmp_path / "d", [[0, 1]])
    (tmp_path / "d" / "classnames.txt").write_bytes(b"red\ngr\xffen\n")
    with pytest.raises(ValueError, match=r"classnames\.txt is not UTF-8 \(line 2: invalid start byte\)$"):
        benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2)


def test_negative_max_examples_is_refused(tmp_path):
    name = write_classification(tmp_path, [[0, 1, 2]])
    for num_workers in (0, 1):  # the two paths read "first -1" differently: none, or all but the last
        with pytest.raises(ValueError, match="max_examples must be >= 0, got -1"):
            benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2, max_examples=-1,
                                     num_workers=num_workers)


def test_classnames_count_mismatch(tmp_path):
    name = write_classification(tmp_path, [[0, 1, 5]], classnames=["red", "green"])
    with pytest.raises(ValueError, match=r"classnames\.txt has 2 class names .* label 5") as info:
        benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2)
    one_line(info)


def test_missing_shards(tmp_path):
    with pytest.raises(FileNotFoundError, match="no webdataset shards"):
        benchmarks.run_benchmark(f"wds:{tmp_path}", oracle_images, oracle_texts, image_size=2)


def test_acc5_nan_with_few_classes(tmp_path):
    name = write_classification(tmp_path, [[0, 1, 2, 1]], classnames=NAMES[:3])
    _, metrics = benchmarks.run_benchmark(name, lambda x: oracle_images(x)[:, :3],
                                          lambda t: oracle_texts(t)[:, :3], image_size=2)
    assert metrics["acc1"] == 1.0 and math.isnan(metrics["acc5"])


def test_tfds_prepared_directory_retrieval(tmp_path):
    """A real array_record data set on disk (written here without TensorFlow: PIL images
    encode without it), read through ``builder_from_directory`` like a prepared coco_captions."""
    pytest.importorskip("tensorflow_datasets")
    pairs = [("red", ["a red one", "red"]), ("green", ["green"]),
             ("blue", ["blue square", "a blue", "blue!"]), ("yellow", ["yellow", "the yellow"])]

    write_fake_coco_captions(str(tmp_path), "test",
                             [(Image.new("RGB", (5, 3), COLOURS[colour]), texts) for colour, texts in pairs])
    projection = np.random.default_rng(3).normal(size=(3, 8))

    def random_images(images):
        return images.reshape(len(images), -1, 3).mean(axis=1) @ projection

    task, metrics = benchmarks.run_benchmark("coco_captions", random_images, random_texts,
                                             image_size=3, data_dir=str(tmp_path), batch_size=3)
    assert task == "zeroshot_retrieval"
    assert metrics["num_images"] == 4 and metrics["num_texts"] == 8
    image_emb = np.array([COLOURS[c] for c, _ in pairs], np.float64) @ projection
    texts = [t for _, ts in pairs for t in ts]
    text_to_image = np.array([i for i, (_, ts) in enumerate(pairs) for _ in ts])
    for k in (1, 5):  # no ties, so the stored (shuffled) order does not matter
        image_recall, text_recall = naive_recall(image_emb, random_texts(texts), text_to_image, k)
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(image_recall), k
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(text_recall), k


def test_tfds_benchmark_data_dir_with_a_tilde_and_a_prepared_data_set_without_the_split(tmp_path, monkeypatch):
    """`--data_dir=~/tfds` (no shell expands `~` after `=`) was "not prepared"; a data set prepared without the
    benchmark's split was "not in array_record format", with advice to build it again."""
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    pairs = [(Image.new("RGB", (5, 3), COLOURS[c]), [c]) for c in ("red", "green")]
    write_fake_coco_captions(str(tmp_path / "home" / "tfds"), "test", pairs)
    projection = np.random.default_rng(0).normal(size=(3, 8))
    task, metrics = benchmarks.run_benchmark(
        "coco_captions", lambda images: images.reshape(len(images), -1, 3).mean(axis=1) @ projection, random_texts,
        image_size=3, data_dir="~/tfds", batch_size=2)
    assert task == "zeroshot_retrieval" and metrics["num_images"] == 2
    write_fake_coco_captions(str(tmp_path / "train_only"), "train", pairs)
    with pytest.raises(ValueError, match=r"^TFDS data set coco_captions/2014 at .*train_only/coco_captions/2014/"
                                         r"1.1.0 has no split 'test' \(split 'test'\); its prepared splits: train$"):
        benchmarks.run_benchmark("coco_captions", random_texts, random_texts, image_size=3,
                                 data_dir=str(tmp_path / "train_only"))


# ----------------------------------------------------------------------------- grain workers
# Each run with workers spawns processes (a few seconds on a small machine): one run each.


def random_colour_images(images):
    projection = np.random.default_rng(4).normal(size=(3, 8))
    return images.reshape(len(images), -1, 3).mean(axis=1) @ projection


def test_wds_index_matches_streamed_samples(tmp_path):
    write_classification(tmp_path, LABELS)
    index = sources.wds_index(str(tmp_path))
    streamed = [(shard, key, sample) for shard in sources.wds_shards(str(tmp_path))
                for key, sample in read_tar_samples(shard)]
    assert [(e.shard, e.key) for e in index] == [(s, k) for s, k, _ in streamed]
    for entry, (_, _, sample) in zip(index, streamed):
        with open(entry.shard, "rb") as f:
            read = {}
            for extension, offset, size in entry.members:
                f.seek(offset)
                read[extension] = f.read(size)
        assert read == sample
    assert [e.key for e in sources.wds_index(str(tmp_path), max_examples=8)] == \
        [k for _, k, _ in streamed[:8]]


def test_wds_workers_same_batches_and_metrics(tmp_path):
    name = write_classification(tmp_path, LABELS)
    seen = {0: [], 2: []}
    results = {}
    for workers in (0, 2):
        def encode(images, workers=workers):
            seen[workers].append(images.copy())
            return random_colour_images(images)

        results[workers] = benchmarks.run_benchmark(
            name, encode, random_texts, image_size=3, batch_size=4, max_examples=11,
            num_workers=workers)
    assert [b.shape for b in seen[2]] == [(4, 3, 3, 3), (4, 3, 3, 3), (3, 3, 3, 3)]
    for zero, two in zip(seen[0], seen[2], strict=True):
        np.testing.assert_array_equal(zero, two)
    (task0, metrics0), (task2, metrics2) = results[0], results[2]
    assert task0 == task2 == "zeroshot_classification"
    for key in ("acc1", "acc5", "mean_per_class_recall", "num_images", "num_classes"):
        assert metrics2[key] == metrics0[key], key
    assert metrics2["num_images"] == 11 and 0 < metrics0["acc1"] < 1


def test_wds_retrieval_workers_same_metrics(tmp_path):
    (tmp_path / "test").mkdir()
    captions = [["a red square", "red"], ["green"], ["blue", "a blue tile", "blue one"],
                ["yellow", "a yellow square"], ["cyan thing"]]
    for shard, keys in enumerate([(0, 1, 2), (3, 4)]):
        write_shard(tmp_path / "test" / f"{shard:04d}.tar",
                    [(f"k{i}", {"jpg": png(COLOURS[NAMES[i]]),
                                "txt": "\n".join(captions[i]).encode()}) for i in keys])
    name = f"wds:{tmp_path}"
    results = [benchmarks.run_benchmark(name, random_colour_images, random_texts,
                                        image_size=2, batch_size=2, num_workers=workers)
               for workers in (0, 2)]
    (task0, metrics0), (task2, metrics2) = results
    assert task0 == task2 == "zeroshot_retrieval" and metrics2["num_texts"] == 9
    assert {k: v for k, v in metrics0.items() if k != "images_per_s"} == \
        {k: v for k, v in metrics2.items() if k != "images_per_s"}


def test_tfds_mock_data_workers_same_metrics(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    encode_images = pixel_projection(16)

    with tfds.testing.mock_data(num_examples=13):
        results = [benchmarks.run_benchmark("cifar10", encode_images, random_texts,
                                            image_size=16, data_dir=str(tmp_path),
                                            batch_size=5, max_examples=12, num_workers=workers)
                   for workers in (0, 2)]
    (_, metrics0), (_, metrics2) = results
    assert metrics0["num_images"] == metrics2["num_images"] == 12
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert metrics2[key] == metrics0[key], key


class RecordingSource(list):
    """A TFDS-like random-access source that records which examples were read."""

    def __init__(self, examples):
        super().__init__(examples)
        self.read = set()

    def __getitem__(self, index):
        self.read.add(index)
        return super().__getitem__(index)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_each_process_reads_only_its_batches(num_workers):
    rng = np.random.default_rng(0)
    examples = [{"image": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), "label": i % 3} for i in range(11)]
    benchmark = sources.TFDS_BENCHMARKS["cifar10"]
    want = [(np.stack([resize_center_crop(Image.fromarray(e["image"]), 4) for e in examples[i:i + 3]]),
             [e["label"] for e in examples[i:i + 3]]) for i in range(0, 11, 3)]  # batches 0-3, the last of 2
    for process_index in (0, 1):
        source = RecordingSource(examples)
        got = list(sources.tfds_batches(source, benchmark, ImagePreprocess(4).resized, 3, num_workers=num_workers,
                                        process=(process_index, 2)))
        mine = want[process_index::2]
        assert len(got) == len(mine) == 2
        for (images, labels), (want_images, want_labels) in zip(got, mine):
            np.testing.assert_array_equal(images, want_images)
            assert labels.tolist() == want_labels
        if num_workers == 0:  # a worker process reads its own copy of the source
            assert source.read == {i for b in range(process_index, 4, 2) for i in range(3 * b, min(3 * b + 3, 11))}


def test_empty_shard_with_workers(tmp_path):
    """Found by the index pass, in this process, before any worker starts."""
    name = write_classification(tmp_path, [[0, 1], []])
    with pytest.raises(ValueError, match=r"0001\.tar: empty shard") as excinfo:
        benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2, num_workers=2)
    one_line(excinfo)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_benchmark_shard_cut_short_is_an_error_and_hidden_members_are_passed_over(tmp_path, num_workers):
    """A shard cut at a member header looks complete to `tarfile`: scoring the samples before the cut would give
    other numbers without a word. macOS `._KEY.png` members are not samples (webdataset passes over them)."""
    name = write_classification(tmp_path, [[0, 1, 2, 3]])
    shard = tmp_path / "test" / "0000.tar"
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("._s0_000.png")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\x00\x05\x16\x07"))
    _, metrics = benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2, num_workers=num_workers)
    assert metrics["num_images"] == 4 and metrics["acc1"] == 1.0
    whole = shard.read_bytes()
    for cut, where in [(members[4].offset, r"s0_001 \(no end-of-archive block\)"),  # the last two samples gone
                       (members[4].offset_data + 3, r"s0_002 \(.+\)")]:  # cut inside a member's data
        shard.write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=r"0000\.tar: truncated or damaged tar at or after sample " + where
                           ) as excinfo:
            benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2, num_workers=num_workers)
        one_line(excinfo)


def test_an_empty_class_name_line_before_the_last_is_refused_and_trailing_ones_are_not(tmp_path):
    """Labels count every line (as clip_benchmark reads the file): dropping an empty line shifted every later name,
    silently when the last class had no image."""
    name = write_classification(tmp_path / "a", [[0, 2]], classnames=[NAMES[0], "", NAMES[2]])
    with pytest.raises(ValueError, match=r"classnames.txt: line 2 is empty, but label i is line i \+ 1: name that "
                                         r"class \(leaving the line out would shift the names after it\)$"):
        benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2)
    name = write_classification(tmp_path / "b", [[0, 1]], classnames=NAMES[:2] + ["", ""])
    _, metrics = benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2)
    assert metrics["acc1"] == 1.0


def test_a_plain_shard_whose_first_member_is_named_like_a_compressed_file_is_read(tmp_path):
    """A tar starts with its first member's name: `BZh_0001.cls` was taken for bzip2's magic."""
    (tmp_path / "test").mkdir()
    write_shard(tmp_path / "test" / "0000.tar", [("BZh_0001", {"png": png(COLOURS[NAMES[1]]), "cls": b"1"})])
    (tmp_path / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    (tmp_path / "zeroshot_classification_templates.txt").write_text("a {c} thing\n")
    _, metrics = benchmarks.run_benchmark(f"wds:{tmp_path}", oracle_images, oracle_texts, image_size=2)
    assert metrics["acc1"] == 1.0


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_compressed_benchmark_shard_is_refused_whatever_the_workers(tmp_path, num_workers):
    """In the training process a gzip tar was read (transparently decompressed); with workers it was refused."""
    name = write_classification(tmp_path, [[0, 1]])
    shard = tmp_path / "test" / "0000.tar"
    shard.write_bytes(gzip.compress(shard.read_bytes()))
    with pytest.raises(ValueError, match=r"0000.tar is a gzip-compressed tar: benchmark shards are read at their "
                                         r"offsets, so decompress it first$"):
        benchmarks.run_benchmark(name, oracle_images, oracle_texts, image_size=2, num_workers=num_workers)
