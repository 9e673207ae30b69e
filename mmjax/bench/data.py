"""Input-pipeline throughput: images/s on one core for decode + random-resized-crop + tokenise.

mmjax: an ArrayRecord data directory through `records_train_dataset` (no worker process, so one core),
tokenised with OpenCLIP's BPE vocabulary and text cleaning (`ClipBpeTokenizer.open_clip`, the copy mmjax ships).
Reference: OpenCLIP's training transform (`open_clip.image_transform(size, is_train=True)`: RandomResizedCrop
(0.9, 1.0) bicubic, RGB, ToTensor, Normalize) and tokenizer over the same JPEGs in a webdataset tar, through a
torch `DataLoader` with `num_workers=0` and one torch thread: `webdataset.WebDataset` when webdataset is
installed, otherwise the tar's members read by offset (the same decode work; the message says which).
The reference also normalises on the CPU, which mmjax leaves to the jitted train step.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from collections.abc import Iterable

import numpy as np
from PIL import Image

from mmjax.data import shards
from mmjax.data.arrayrecord_source import RecordSource
from mmjax.data.clip_bpe import ClipBpeTokenizer
from mmjax.data.decode import DecodeOptions
from mmjax.data.pipeline import records_train_dataset
from mmjax.data.records import Sample


def _photo_like(rng: np.random.Generator, side: int) -> bytes:
    """A JPEG (quality 90) of smooth colour gradients plus noise: compresses like a photo, not like noise."""
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)), x * y], -1)
    pixels = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_bench_data(directory: str, count: int, side: int) -> tuple[str, str]:
    """`count` JPEGs (`side` px) with captions as an mmjax data directory and as one webdataset tar."""
    rng = np.random.default_rng(0)
    samples = [Sample(f"{n:06d}", (f"a photo of thing number {n} on a table",), _photo_like(rng, side))
               for n in range(count)]
    records = os.path.join(directory, "records")
    os.makedirs(records)
    shards.write_index(records, [shards.write_shard(records, shards.shard_name(0), samples, "bench")])
    tar_path = os.path.join(directory, "bench.tar")
    write_tar(tar_path, [(f"{sample.key}.{extension}", data) for sample in samples
                         for extension, data in (("jpg", sample.image), ("txt", sample.captions[0].encode()))])
    return records, tar_path


def write_tar(path: str, members: Iterable[tuple[str, bytes]]) -> None:
    """A webdataset shard: a tar of `(name, bytes)` members in the given order (`KEY.jpg`, `KEY.txt`, …)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def mmjax_images_per_s(records: str, image_size: int, batch_size: int) -> float:
    """Images/s of `records_train_dataset` over `records` (one epoch, no worker process)."""
    tokenizer = ClipBpeTokenizer.open_clip()
    tokenizer(["warm-up"])  # its text cleaning imports ftfy on first use; OpenCLIP's import did that untimed
    dataset = records_train_dataset([RecordSource(records)], None, 0, batch_size, DecodeOptions(image_size),
                                    tokenizer, 0, process_index=0, process_count=1, num_epochs=1)
    start, count = time.perf_counter(), 0
    for batch in dataset:
        count += len(batch["image"])
    return count / (time.perf_counter() - start)


def open_clip_images_per_s(tar_path: str, image_size: int, batch_size: int) -> tuple[float | None, str]:
    """(images/s, how) for OpenCLIP's transform + tokenizer in a torch DataLoader; (None, why) when unavailable."""
    try:
        import open_clip  # noqa: PLC0415
        import torch  # noqa: PLC0415
    except ImportError as error:
        return None, f"OpenCLIP comparison skipped: {error.name} is not installed (pip install open_clip_torch)"
    torch.set_num_threads(1)
    transform = open_clip.image_transform(image_size, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    tokenizer(["warm-up"])
    try:
        import webdataset as wds  # noqa: PLC0415
        dataset = (wds.WebDataset(tar_path, shardshuffle=False).decode("pil").to_tuple("jpg", "txt")
                   .map_tuple(transform, lambda text: tokenizer([text])[0]))
        how = "webdataset.WebDataset + torch DataLoader"
    except ImportError:
        dataset = _TarPairs(tar_path, transform, tokenizer)
        how = "webdataset is not installed: tar members read by offset + torch DataLoader (same decode work)"
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
    start, count = time.perf_counter(), 0
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start), how


class _TarPairs:
    """A map-style torch dataset over a tar's (jpg, txt) pairs, read by offset."""

    def __init__(self, tar_path: str, transform, tokenizer):
        self.path, self.transform, self.tokenizer = tar_path, transform, tokenizer
        with tarfile.open(tar_path) as tar:
            members = [m for m in tar if m.isfile()]
        self.pairs = [(a.offset_data, a.size, b.offset_data, b.size) for a, b in zip(members[::2], members[1::2])]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image_at, image_size, text_at, text_size = self.pairs[index]
        with open(self.path, "rb") as f:
            f.seek(image_at)
            image = Image.open(io.BytesIO(f.read(image_size)))
            f.seek(text_at)
            text = f.read(text_size).decode()
        return self.transform(image), self.tokenizer([text])[0]


def run(count: int = 512, side: int = 256, image_size: int = 224, batch_size: int = 64) -> dict:
    """Both pipelines over the same `count` JPEGs of `side` px → `image_size` crops; returns the numbers."""
    with tempfile.TemporaryDirectory() as directory:
        records, tar_path = write_bench_data(directory, count, side)
        ours = mmjax_images_per_s(records, image_size, batch_size)
        theirs, how = open_clip_images_per_s(tar_path, image_size, batch_size)
    return {"images": count, "source_px": side, "image_size": image_size,
            "mmjax_images_per_s_per_core": ours, "open_clip_images_per_s_per_core": theirs,
            "ratio": None if theirs is None else ours / theirs, "reference": how}
