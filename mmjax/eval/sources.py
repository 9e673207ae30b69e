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

Batches come from :func:`batches` (decoding in the calling process) or, with
``num_workers > 0``, from :func:`tfds_batches` / :func:`wds_batches`: grain pipelines whose
reading, decoding, resizing and batching run in ``num_workers`` spawned worker processes
(``MapDataset -> map -> batch -> to_iter_dataset -> mp_prefetch``). Both are random access
over the examples (a TFDS data source; for webdataset an index of every sample's member
``(offset, size)`` in its shard, built by one pass over the tar headers, see
:func:`wds_index`), and ``mp_prefetch`` hands worker ``w`` the batches ``w, w + n, ...`` and
interleaves them back in order, so batches, and hence metrics, are the same for any number of
workers. A bad-data ``ValueError`` raised in a worker reaches the caller as the same one-line
``ValueError`` the in-process path raises.
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
from typing import Any, NamedTuple

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
    image_size: int

    def __call__(self, example: dict[str, Any]) -> tuple[np.ndarray, Any]:
        image, target = _tfds_example(example, self.benchmark)
        return resize_center_crop(image, self.image_size), target


def tfds_batches(
    source: Sequence[dict[str, Any]],
    benchmark: TfdsBenchmark,
    image_size: int,
    batch_size: int,
    max_examples: int | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[np.ndarray, Any]]:
    """:func:`batches` of :func:`tfds_examples`, read and prepared in grain worker processes
    (in this process when ``num_workers`` is 0)."""
    if num_workers == 0:
        yield from batches(tfds_examples(source, benchmark, max_examples), image_size,
                           batch_size)
        return
    import grain  # noqa: PLC0415

    dataset = grain.MapDataset.source(source)
    if max_examples is not None:
        dataset = dataset[:max_examples]
    yield from _grain_batches(dataset.map(_TfdsPrepare(benchmark, image_size)), batch_size,
                              num_workers)


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


def _wds_example(sample: dict[str, bytes], shard: str, key: str, task: str,
                 num_classes: int | None, classnames_path: str) -> tuple[Image.Image, Any]:
    """One sample's ``(PIL image, label | captions)``, checked (one-line ``ValueError``)."""
    image = _decode_image(sample, shard, key)
    if task == CLASSIFICATION:
        if "cls" not in sample:
            raise ValueError(f"{shard}: sample {key} has no .cls label")
        label = int(sample["cls"].decode("utf-8").strip())
        if num_classes is not None and not 0 <= label < num_classes:
            raise ValueError(
                f"{classnames_path} has {num_classes} class "
                f"names but {shard} sample {key} has label {label}")
        return image, label
    if "txt" not in sample:
        raise ValueError(f"{shard}: sample {key} has no .txt captions")
    captions = [line.strip() for line in sample["txt"].decode("utf-8").splitlines()
                if line.strip()]
    if not captions:
        raise ValueError(f"{shard}: sample {key} has an empty .txt")
    return image, captions


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
    classnames_path = os.path.join(directory, "classnames.txt")
    count = 0
    for shard in wds_shards(directory):
        empty = True
        for key, sample in _shard_samples(shard):
            empty = False
            if max_examples is not None and count >= max_examples:
                return
            yield _wds_example(sample, shard, key, task, num_classes, classnames_path)
            count += 1
        if empty:
            raise ValueError(f"{shard}: empty shard (no samples)")


class WdsSample(NamedTuple):
    """Where one webdataset sample's files lie: ``members`` is ``((extension, offset, size),
    ...)``, byte ranges of the member data in the (uncompressed) tar ``shard``."""

    shard: str
    key: str
    members: tuple[tuple[str, int, int], ...]


def wds_index(directory: str, max_examples: int | None = None) -> list[WdsSample]:
    """The first ``max_examples`` samples of ``DIR/test/*.tar`` in :func:`wds_examples`'s
    order, located by one pass over the tar headers (member data is skipped, not read).

    Raises:
      ValueError (one line, naming the file): an unreadable or compressed tar, an empty shard.
    """
    index: list[WdsSample] = []
    for shard in wds_shards(directory):
        if max_examples is not None and len(index) >= max_examples:
            break
        try:
            tar = tarfile.open(shard, "r:")  # plain tar: data lies at offsets in the file
        except tarfile.TarError as error:
            raise ValueError(f"{shard}: not a readable uncompressed tar file ({error})") from error
        with tar:
            key, members, found = None, [], False
            for member in tar:
                if not member.isfile():
                    continue
                member_key, extension = _split_key(member.name)
                if member_key != key and members:
                    index.append(WdsSample(shard, key, tuple(members)))
                    members = []
                    if max_examples is not None and len(index) >= max_examples:
                        break
                key, found = member_key, True
                members = [m for m in members if m[0] != extension]  # last one wins, as in
                members.append((extension, member.offset_data, member.size))  # a dict
            else:
                if members:
                    index.append(WdsSample(shard, key, tuple(members)))
            if not found:
                raise ValueError(f"{shard}: empty shard (no samples)")
    return index


@dataclass(frozen=True)
class _WdsPrepare:
    """:class:`WdsSample` -> ``(uint8 [S, S, 3], target)``: reads the member bytes at their
    offsets, checks and decodes as :func:`wds_examples` (a grain map, run in the workers)."""

    task: str
    image_size: int
    num_classes: int | None
    classnames_path: str

    def __call__(self, entry: WdsSample) -> tuple[np.ndarray, Any]:
        sample = {}
        with open(entry.shard, "rb") as f:
            for extension, offset, size in entry.members:
                f.seek(offset)
                sample[extension] = f.read(size)
        image, target = _wds_example(sample, entry.shard, entry.key, self.task,
                                     self.num_classes, self.classnames_path)
        return resize_center_crop(image, self.image_size), target


def wds_batches(
    directory: str,
    task: str,
    image_size: int,
    batch_size: int,
    num_classes: int | None = None,
    max_examples: int | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[np.ndarray, Any]]:
    """:func:`batches` of :func:`wds_examples`, read and prepared in grain worker processes
    over :func:`wds_index` (in this process, streaming the shards, when ``num_workers`` is 0).
    Same batches, same errors."""
    if num_workers == 0:
        yield from batches(wds_examples(directory, task, num_classes, max_examples),
                           image_size, batch_size)
        return
    import grain  # noqa: PLC0415

    prepare = _WdsPrepare(task, image_size, num_classes,
                          os.path.join(directory, "classnames.txt"))
    dataset = grain.MapDataset.source(wds_index(directory, max_examples)).map(prepare)
    yield from _grain_batches(dataset, batch_size, num_workers)


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


def _collate(elements: Sequence[tuple[np.ndarray, Any]]) -> tuple[np.ndarray, Any]:
    return _finish([image for image, _ in elements], [target for _, target in elements])


def _grain_batches(dataset: Any, batch_size: int, num_workers: int
                   ) -> Iterator[tuple[np.ndarray, Any]]:
    """Batches of the ``(uint8 image, target)`` grain ``MapDataset``, in order, prepared in
    ``num_workers`` processes; their bad-data errors re-raised here as one line."""
    import grain  # noqa: PLC0415
    from absl import flags  # noqa: PLC0415

    iter_dataset = dataset.batch(batch_size, drop_remainder=False, batch_fn=_collate)
    iter_dataset = iter_dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    if not flags.FLAGS.is_parsed():  # grain reads absl flags when it starts workers
        flags.FLAGS.mark_as_parsed()
    iterator = iter(iter_dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers)))
    try:
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except Exception as error:  # noqa: BLE001 - re-raised, only trimmed
                raise _as_raised_here(error) from None
            yield batch
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _as_raised_here(error: BaseException) -> BaseException:
    """A worker's exception as the in-process path raises it: grain re-raises the worker's
    exception object (same type and message) with the worker's frames and a note about
    its traceback filtering; drop both, so the user sees the one-line error alone."""
    if getattr(error, "__notes__", None):
        del error.__notes__
    return error.with_traceback(None)


def load_json_data(file_name: str) -> dict[str, Any]:
    """A JSON file shipped in ``mmjax/eval/data``."""
    from importlib import resources  # noqa: PLC0415

    return json.loads(resources.files("mmjax.eval").joinpath("data", file_name).read_text("utf-8"))
