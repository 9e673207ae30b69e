"""TFDS benchmarks: prepared ArrayRecord data sets, read without TensorFlow."""
from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mmjax.data.tfds_source import UnknownSplitError, check_split, prepared_dir, resolve_data_dir
from mmjax.eval.sources.batching import Resize, batches, grain_batches
from mmjax.eval.sources.tasks import CLASSIFICATION, RETRIEVAL


def _to_pil(image: Any) -> Image.Image:
    """A PIL image from a decoded TFDS image (uint8 ``[H, W, C]``, C in 1, 3, 4)."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array.astype(np.uint8))



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
    data_dir = resolve_data_dir(data_dir)
    builder_name = benchmark.tfds_name.split("/")[0]
    how = _BUILD.format(name=benchmark.tfds_name, data_dir=data_dir) + benchmark.prepare_hint.format(
        data_dir=data_dir)
    prepared = prepared_dir(benchmark.tfds_name, data_dir)
    try:
        if prepared is not None:
            builder = tfds.builder_from_directory(prepared)
            check_split(builder, benchmark.split, f"TFDS data set {benchmark.tfds_name} at {prepared}")
            return builder.as_data_source(split=benchmark.split)
        # Nothing on disk: tfds.data_source still answers under tfds.testing.mock_data.
        # (Without it, builders whose code imports TensorFlow print a banner: hide it.)
        with contextlib.redirect_stdout(io.StringIO()):
            return tfds.data_source(benchmark.tfds_name, split=benchmark.split,
                                    data_dir=data_dir, download=False)
    except UnknownSplitError:
        raise
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
        yield _tfds_example(source[index], benchmark)


def _tfds_example(example: dict[str, Any], benchmark: TfdsBenchmark) -> tuple[Image.Image, Any]:
    image = _to_pil(example[benchmark.image_key])
    if benchmark.task == CLASSIFICATION:
        return image, int(example[benchmark.label_key])
    texts = example[benchmark.captions_key]["text"]
    return image, [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]


@dataclass(frozen=True)
class _TfdsPrepare:
    """Feature dict -> ``(uint8 [S, S, 3], target)`` (a grain map, run in the workers)."""

    benchmark: TfdsBenchmark
    resize: Resize

    def __call__(self, example: dict[str, Any]) -> tuple[np.ndarray, Any]:
        image, target = _tfds_example(example, self.benchmark)
        return self.resize(image), target


def tfds_batches(
    source: Sequence[dict[str, Any]],
    benchmark: TfdsBenchmark,
    resize: Resize,
    batch_size: int,
    max_examples: int | None = None,
    num_workers: int = 0,
    process: tuple[int, int] = (0, 1),
) -> Iterator[tuple[np.ndarray, Any]]:
    """:func:`batches` of :func:`tfds_examples`, read and prepared in grain worker processes
    (in this process when ``num_workers`` is 0); with ``process = (i, n)``, only batches ``i, i + n, …``."""
    if num_workers == 0 and process[1] == 1:
        yield from batches(tfds_examples(source, benchmark, max_examples), resize, batch_size)
        return
    import grain  # noqa: PLC0415

    dataset = grain.MapDataset.source(source)
    if max_examples is not None:
        dataset = dataset[:max_examples]
    yield from grain_batches(dataset.map(_TfdsPrepare(benchmark, resize)), batch_size,
                              num_workers, process)

