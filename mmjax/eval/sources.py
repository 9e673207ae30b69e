"""Benchmark data readers: TFDS (array_record, no TensorFlow) and clip_benchmark webdataset shards.

Two kinds of benchmark, each read as a stream of examples and batched for a model:

- classification: ``(image, label)``; batches ``(uint8 [b, S, S, 3], int64 [b])``;
- retrieval: ``(image, captions)``; batches ``(uint8 [b, S, S, 3], list of b caption lists)``.

TFDS data sets are opened with ``tfds.builder_from_directory(...).as_data_source`` on the
prepared directory (reads ``features.json``; needs neither TensorFlow nor the builder code,
which for ``coco_captions`` imports TensorFlow), falling back to ``tfds.data_source`` (what
``tfds.testing.mock_data`` patches). A data set that is not prepared raises
``FileNotFoundError`` with one line on how to prepare it.

webdataset benchmarks use clip_benchmark's layout: ``DIR/test/*.tar`` shards, read with
``tarfile`` in sorted order; members are grouped into samples by key (the file name up to its
first dot, as webdataset does). Classification samples hold ``KEY.{webp,jpg,jpeg,png}`` and
``KEY.cls`` (the integer label); retrieval samples ``KEY.{jpg,...}`` and ``KEY.txt`` (captions,
one per line). ``DIR/classnames.txt`` and ``DIR/zeroshot_classification_templates.txt`` hold
one entry per line.

Images are decoded with PIL to RGB and prepared as OpenCLIP / clip_benchmark do
(``Resize(S, bicubic)`` on the shorter side, then ``CenterCrop(S)``), as uint8; normalisation
is the encoder's business.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mmjax.data.transforms import resize_center_crop

CLASSIFICATION = "zeroshot_classification"
RETRIEVAL = "zeroshot_retrieval"

IMAGE_EXTENSIONS = ("webp", "jpg", "jpeg", "png")


# ----------------------------------------------------------------------------- images


def _to_pil(image: Any) -> Image.Image:
    """A PIL image from a decoded TFDS image (uint8 ``[H, W, C]``, C in 1, 3, 4)."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array.astype(np.uint8))


# ----------------------------------------------------------------------------- TFDS


@dataclass(frozen=True)
class TfdsBenchmark:
    """Where a benchmark lives in TFDS and how to read it."""

    tfds_name: str  # name[/config], also the directory under data_dir
    split: str
    task: str = CLASSIFICATION
    classnames: str | None = None  # key of the shipped class names / templates
    image_key: str = "image"
    label_key: str = "label"
    captions_key: str = "captions"  # retrieval: a Sequence({"text": str, ...})
    prepare_hint: str = ""


_BUILD = "pip install tensorflow-cpu; tfds build {name} --data_dir {data_dir} --file_format array_record"

TFDS_BENCHMARKS: dict[str, TfdsBenchmark] = {
    "cifar10": TfdsBenchmark("cifar10", "test", classnames="cifar10"),
    "cifar100": TfdsBenchmark("cifar100", "test", classnames="cifar100"),
    "imagenet2012": TfdsBenchmark(
        "imagenet2012", "validation", classnames="imagenet1k",
        prepare_hint=" (first put ILSVRC2012_img_val.tar and ILSVRC2012_img_train.tar in "
        "{data_dir}/downloads/manual)"),
    "imagenet_v2": TfdsBenchmark("imagenet_v2/matched-frequency", "test", classnames="imagenet1k"),
    "food101": TfdsBenchmark("food101", "validation", classnames="food101"),
    "oxford_iiit_pet": TfdsBenchmark("oxford_iiit_pet", "test", classnames="pets"),
    "coco_captions": TfdsBenchmark("coco_captions/2014", "test", task=RETRIEVAL),
}


def default_tfds_data_dir() -> str:
    """``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets`` (TFDS's own default)."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _version_key(path: str) -> tuple[int, ...]:
    parts = os.path.basename(os.path.dirname(path)).split(".")
    return tuple(int(part) if part.isdigit() else -1 for part in parts)


def _prepared_dir(benchmark: TfdsBenchmark, data_dir: str) -> str | None:
    """The newest prepared version directory of ``benchmark`` under ``data_dir``, if any."""
    infos = glob.glob(os.path.join(data_dir, benchmark.tfds_name, "*", "dataset_info.json"))
    return os.path.dirname(max(infos, key=_version_key)) if infos else None


def open_tfds(name: str, data_dir: str | None = None) -> Sequence[dict[str, Any]]:
    """The random-access source (``len`` / ``[i]`` -> feature dict) of TFDS benchmark ``name``.

    Raises:
      KeyError: ``name`` is not in :data:`TFDS_BENCHMARKS`.
      FileNotFoundError: the data set is not prepared (as array_record) under ``data_dir``;
        the message is one line saying how to prepare it.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415 (import cost only when used)

    if name not in TFDS_BENCHMARKS:
        raise KeyError(f"unknown TFDS benchmark {name!r}; known: {sorted(TFDS_BENCHMARKS)}")
    benchmark = TFDS_BENCHMARKS[name]
    data_dir = data_dir or default_tfds_data_dir()
    builder_name = benchmark.tfds_name.split("/")[0]
    how = _BUILD.format(name=benchmark.tfds_name, data_dir=data_dir) + benchmark.prepare_hint.format(
        data_dir=data_dir)
    prepared = _prepared_dir(benchmark, data_dir)
    try:
        if prepared is not None:
            return tfds.builder_from_directory(prepared).as_data_source(split=benchmark.split)
        # Nothing on disk: tfds.data_source still answers under tfds.testing.mock_data.
        # (Without it, builders whose code imports TensorFlow print a banner: hide it.)
        with contextlib.redirect_stdout(io.StringIO()):
            return tfds.data_source(benchmark.tfds_name, split=benchmark.split,
                                    data_dir=data_dir, download=False)
    except Exception as error:  # noqa: BLE001 - tfds raises many kinds here; all mean "not usable"
        where = prepared or os.path.join(data_dir, builder_name)
        reason = "is not in array_record format" if prepared else "is not prepared"
        raise FileNotFoundError(
            f"TFDS data set {benchmark.tfds_name} ({benchmark.split}) {reason} at {where}; "
            f"prepare it with: {how}") from error


def tfds_classnames_count(source: Any, benchmark: TfdsBenchmark) -> int | None:
    """Number of label classes the TFDS source declares, when it says."""
    try:
        return int(source.dataset_info.features[benchmark.label_key].num_classes)
    except Exception:  # noqa: BLE001 - mock or unusual sources may not carry the info
        return None


def tfds_examples(
    source: Sequence[dict[str, Any]], benchmark: TfdsBenchmark, max_examples: int | None = None
) -> Iterator[tuple[Image.Image, Any]]:
    """``(PIL image, label int | captions list[str])`` for the first examples of ``source``."""
    count = len(source) if max_examples is None else min(len(source), max_examples)
    for index in range(count):
        example = source[index]
        image = _to_pil(example[benchmark.image_key])
        if benchmark.task == CLASSIFICATION:
            yield image, int(example[benchmark.label_key])
        else:
            texts = example[benchmark.captions_key]["text"]
            yield image, [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]


# ----------------------------------------------------------------------------- webdataset


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def wds_shards(directory: str, split: str = "test") -> list[str]:
    """The sorted ``DIR/split/*.tar`` shards; ``FileNotFoundError`` when there are none."""
    shards = sorted(glob.glob(os.path.join(directory, split, "*.tar")))
    if not shards:
        raise FileNotFoundError(f"no webdataset shards {os.path.join(directory, split, '*.tar')}")
    return shards


def wds_classnames(directory: str) -> list[str]:
    """``DIR/classnames.txt``, one class name per line."""
    path = os.path.join(directory, "classnames.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (one class name per line)")
    return _read_lines(path)


def wds_templates(directory: str) -> list[str]:
    """``DIR/zeroshot_classification_templates.txt``, one template (``{c}``) per line."""
    path = os.path.join(directory, "zeroshot_classification_templates.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (one prompt template per line, with {{c}})")
    return _read_lines(path)


def _split_key(member_name: str) -> tuple[str, str]:
    """``("dir/key", "ext")``: the key ends at the first dot of the file name (webdataset)."""
    directory, base = os.path.split(member_name)
    key, _, extension = base.partition(".")
    return os.path.join(directory, key), extension.lower()


def _shard_samples(shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for the consecutive samples of one tar shard."""
    try:
        tar = tarfile.open(shard, "r")
    except tarfile.TarError as error:
        raise ValueError(f"{shard}: not a readable tar file ({error})") from error
    with tar:
        key, sample = None, {}
        for member in tar:
            if not member.isfile():
                continue
            member_key, extension = _split_key(member.name)
            if member_key != key and sample:
                yield key, sample
                sample = {}
            key = member_key
            sample[extension] = tar.extractfile(member).read()
        if sample:
            yield key, sample


def wds_task(directory: str) -> str:
    """:data:`CLASSIFICATION` (samples hold ``.cls``) or :data:`RETRIEVAL` (``.txt``)."""
    shard = wds_shards(directory)[0]
    for _, sample in _shard_samples(shard):
        if "cls" in sample:
            return CLASSIFICATION
        if "txt" in sample:
            return RETRIEVAL
        raise ValueError(f"{shard}: first sample has neither .cls nor .txt ({sorted(sample)})")
    raise ValueError(f"{shard}: empty shard (no samples)")


def _decode_image(sample: dict[str, bytes], shard: str, key: str) -> Image.Image:
    extension = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if extension is None:
        raise ValueError(f"{shard}: sample {key} has no image ({'/'.join(IMAGE_EXTENSIONS)})")
    try:
        image = Image.open(io.BytesIO(sample[extension]))
        image.load()
    except Exception as error:  # noqa: BLE001 - PIL raises several types for bad data
        raise ValueError(f"{shard}: cannot decode image {key}.{extension} ({error})") from error
    return image.convert("RGB")


def wds_examples(
    directory: str,
    task: str,
    num_classes: int | None = None,
    max_examples: int | None = None,
) -> Iterator[tuple[Image.Image, Any]]:
    """``(PIL image, label int | captions list[str])`` for the samples of ``DIR/test/*.tar``.

    Args:
      directory: the benchmark directory.
      task: :data:`CLASSIFICATION` or :data:`RETRIEVAL`.
      num_classes: with classification, labels must lie in ``[0, num_classes)`` (the
        length of ``classnames.txt``).
      max_examples: stop after this many.

    Raises:
      ValueError (one line, naming the file): an empty shard, a sample without image or
        label/captions, an image PIL cannot decode, a label outside ``classnames.txt``.
    """
    count = 0
    for shard in wds_shards(directory):
        empty = True
        for key, sample in _shard_samples(shard):
            empty = False
            if max_examples is not None and count >= max_examples:
                return
            image = _decode_image(sample, shard, key)
            if task == CLASSIFICATION:
                if "cls" not in sample:
                    raise ValueError(f"{shard}: sample {key} has no .cls label")
                label = int(sample["cls"].decode("utf-8").strip())
                if num_classes is not None and not 0 <= label < num_classes:
                    raise ValueError(
                        f"{os.path.join(directory, 'classnames.txt')} has {num_classes} class "
                        f"names but {shard} sample {key} has label {label}")
                yield image, label
            else:
                if "txt" not in sample:
                    raise ValueError(f"{shard}: sample {key} has no .txt captions")
                captions = [line.strip() for line in sample["txt"].decode("utf-8").splitlines()
                            if line.strip()]
                if not captions:
                    raise ValueError(f"{shard}: sample {key} has an empty .txt")
                yield image, captions
            count += 1
        if empty:
            raise ValueError(f"{shard}: empty shard (no samples)")


# ----------------------------------------------------------------------------- batching


def batches(
    examples: Iterator[tuple[Image.Image, Any]], image_size: int, batch_size: int
) -> Iterator[tuple[np.ndarray, Any]]:
    """``(uint8 [b, S, S, 3], targets)``, ``b <= batch_size``; targets are int64 ``[b]``
    labels or a list of ``b`` caption lists, following the examples."""
    images, targets = [], []
    for image, target in examples:
        images.append(resize_center_crop(image, image_size))
        targets.append(target)
        if len(images) == batch_size:
            yield _finish(images, targets)
            images, targets = [], []
    if images:
        yield _finish(images, targets)


def _finish(images: list[np.ndarray], targets: list[Any]) -> tuple[np.ndarray, Any]:
    stacked = np.stack(images)
    if isinstance(targets[0], list):
        return stacked, targets
    return stacked, np.asarray(targets, np.int64)


def load_json_data(file_name: str) -> dict[str, Any]:
    """A JSON file shipped in ``mmjax/eval/data``."""
    from importlib import resources  # noqa: PLC0415

    return json.loads(resources.files("mmjax.eval").joinpath("data", file_name).read_text("utf-8"))
