"""clip_benchmark webdataset benchmarks: `DIR/test/*.tar` shards, class names and templates."""
from __future__ import annotations

import glob
import io
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmjax.data.tar_samples import (KeyOrder, TruncatedTarError, caption_lines, decode_text, ends_with_end_of_archive,
                                    read_tar_samples, split_key)
from mmjax.eval.sources.batching import Resize, batches, grain_batches
from mmjax.eval.sources.tasks import CLASSIFICATION, IMAGE_EXTENSIONS, RETRIEVAL
from mmjax.eval.text_files import read_text_lines


# A compressed file's first bytes; a plain tar starts with its first member's name (which may be "BZh…"), and a POSIX
# tar has "ustar" at byte 257.
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
BZIP2_MAGIC = re.compile(rb"BZh[1-9]1AY&SY")


def wds_shards(directory: str, split: str = "test") -> list[str]:
    """The sorted ``DIR/split/*.tar`` shards; ``FileNotFoundError`` when there are none."""
    shards = sorted(glob.glob(os.path.join(glob.escape(os.path.join(directory, split)), "*.tar")))
    if not shards:
        raise FileNotFoundError(f"no webdataset shards {os.path.join(directory, split, '*.tar')}")
    for shard in shards:
        with open(shard, "rb") as f:
            start = f.read(262)
        compression = next((name for magic, name in COMPRESSED_MAGIC.items() if start.startswith(magic)),
                           "bzip2" if BZIP2_MAGIC.match(start) else None)
        # worker processes and hosts read samples at their offsets in the file
        if compression and start[257:262] != b"ustar":
            raise ValueError(f"{shard} is a {compression}-compressed tar: benchmark shards are read at their "
                             f"offsets, so decompress it first")
    return shards


def wds_classnames(directory: str) -> list[str]:
    """``DIR/classnames.txt``, one class name per line. Label ``i`` is line ``i + 1`` (clip_benchmark counts every
    line), so an empty line before the last name is an error: leaving it out would shift the names after it."""
    path = os.path.join(directory, "classnames.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (one class name per line)")
    names = read_text_lines(path, "class name")
    with open(path, encoding="utf-8-sig") as f:  # universal newlines: split as read_text_lines splits
        lines = [line.strip() for line in f.read().split("\n")]
    while not lines[-1]:
        lines.pop()
    if len(lines) != len(names):
        raise ValueError(f"{path}: line {lines.index('') + 1} is empty, but label i is line i + 1: name that class "
                         f"(leaving the line out would shift the names after it)")
    return names


def wds_templates(directory: str) -> list[str]:
    """``DIR/zeroshot_classification_templates.txt``, one template (``{c}``) per line."""
    path = os.path.join(directory, "zeroshot_classification_templates.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (one prompt template per line, with {{c}})")
    return read_text_lines(path, "prompt template, with {c},")


def wds_task(directory: str) -> str:
    """:data:`CLASSIFICATION` (samples hold ``.cls``) or :data:`RETRIEVAL` (``.txt``)."""
    shard = wds_shards(directory)[0]
    for _, sample in read_tar_samples(shard):
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
        # PIL names an unknown format by its stream object (`<_io.BytesIO object at 0x…>`), which says nothing here.
        reason = "not an image format PIL reads" if isinstance(error, UnidentifiedImageError) else str(error)
        raise ValueError(f"{shard}: cannot decode image {key}.{extension} ({reason})") from error
    return image  # in its own mode: the model's resize converts it (a checkpoint may composite transparency first)


def _wds_example(sample: dict[str, bytes], shard: str, key: str, task: str,
                 num_classes: int | None, classnames_path: str) -> tuple[Image.Image, Any]:
    """One sample's ``(PIL image, label | captions)``, checked (one-line ``ValueError``)."""
    image = _decode_image(sample, shard, key)
    if task == CLASSIFICATION:
        if "cls" not in sample:
            raise ValueError(f"{shard}: sample {key} has no .cls label")
        try:
            label = int(sample["cls"].decode("utf-8").strip())
        except ValueError:
            raise ValueError(f"{shard}: sample {key} has a .cls that is not an integer label: "
                             f"{sample['cls'][:40]!r}") from None
        if num_classes is not None and not 0 <= label < num_classes:
            raise ValueError(
                f"{classnames_path} has {num_classes} class "
                f"names but {shard} sample {key} has label {label}")
        return image, label
    if "txt" not in sample:
        raise ValueError(f"{shard}: sample {key} has no .txt captions")
    try:  # strictly: a benchmark's captions are not silently changed
        captions = list(caption_lines(decode_text(sample["txt"], errors="strict")))
    except UnicodeDecodeError as error:
        raise ValueError(f"{shard}: sample {key} has a .txt that is neither UTF-8 nor UTF-16 ({error.reason} at "
                         f"byte {error.start})") from None
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
        for key, sample in read_tar_samples(shard):
            empty = False
            if max_examples is not None and count >= max_examples:
                return
            yield _wds_example(sample, shard, key, task, num_classes, classnames_path)
            count += 1
        if empty:
            raise ValueError(f"{shard}: empty shard (no samples)")


def _members(tar: tarfile.TarFile, shard: str, last_key) -> Iterator[tarfile.TarInfo]:
    """The members of `tar`; a shard cut inside a member is a `TruncatedTarError` naming the last sample."""
    try:
        yield from tar
    except (tarfile.TarError, OSError, EOFError) as error:
        raise TruncatedTarError(shard, last_key(), str(error)) from None


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
            key, members, found, order = None, [], False, KeyOrder(shard)
            for member in _members(tar, shard, lambda: key):
                parts = split_key(member.name) if member.isfile() else None
                if parts is None:
                    continue
                member_key, extension = parts
                if member_key != key and members:
                    index.append(WdsSample(shard, key, tuple(members)))
                    members = []
                    if max_examples is not None and len(index) >= max_examples:
                        break
                if member_key != key:
                    order.start(member_key)
                key, found = member_key, True
                members = [m for m in members if m[0] != extension]  # last one wins, as in
                members.append((extension, member.offset_data, member.size))  # a dict
            else:
                if not ends_with_end_of_archive(tar):
                    raise TruncatedTarError(shard, key, "no end-of-archive block")
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
    resize: Resize
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
        return self.resize(image), target


def wds_batches(
    directory: str,
    task: str,
    resize: Resize,
    batch_size: int,
    num_classes: int | None = None,
    max_examples: int | None = None,
    num_workers: int = 0,
    process: tuple[int, int] = (0, 1),
) -> Iterator[tuple[np.ndarray, Any]]:
    """:func:`batches` of :func:`wds_examples`, read and prepared in grain worker processes
    over :func:`wds_index` (in this process, streaming the shards, when ``num_workers`` is 0 and
    there is one process). Same batches, same errors. With ``process = (i, n)``, only batches
    ``i, i + n, …``: the index locates every sample, and only those batches' samples are read."""
    if num_workers == 0 and process[1] == 1:
        yield from batches(wds_examples(directory, task, num_classes, max_examples),
                           resize, batch_size)
        return
    import grain  # noqa: PLC0415

    prepare = _WdsPrepare(task, resize, num_classes,
                          os.path.join(directory, "classnames.txt"))
    dataset = grain.MapDataset.source(wds_index(directory, max_examples)).map(prepare)
    yield from grain_batches(dataset, batch_size, num_workers, process)

