"""Captioning benchmarks: a captioner's captions of an image–text benchmark, scored against its reference captions.

``caption_benchmark("coco_captions", captioner.caption, image_size=224)`` reads the images and captions of an
image–text benchmark of :mod:`mmjax.eval.benchmarks` — ``coco_captions`` (the Karpathy test split: 5 000 images,
about 5 captions each) or a ``wds:DIR`` of images with ``.txt`` captions — resized and cropped as for retrieval,
has the caller write one caption per image, and scores them with :func:`~mmjax.eval.caption_scores.caption_scores`
(BLEU-1…4 and CIDEr-D as pycocoevalcap computes them).

Multi-process runs: batch ``i`` is captioned by process ``i % process_count``; its captions and references are
gathered (as UTF-8 JSON) to every process in batch order, and every process returns what one process would. An
error in one process fails every process together, as in :func:`~mmjax.eval.benchmarks.run_benchmark`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tqdm

from mmjax.data.preprocess import ImagePreprocess
from mmjax.eval import sources
from mmjax.eval.benchmarks import check_benchmark, checked_preprocess, for_each_batch, open_benchmark
from mmjax.eval.caption_scores import caption_scores
from mmjax.parallel.distributed import default_process, gather_batches, process_max

CaptionImages = Callable[[np.ndarray], list[str]]  # uint8 [b, S, S, 3] -> b captions


def caption_benchmark(
    name_or_path: str,
    caption_images: CaptionImages,
    *,
    image_size: int,
    data_dir: str | None = None,
    batch_size: int = 64,
    max_examples: int | None = None,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    progress: bool = False,
    preprocess: ImagePreprocess | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Captions of an image–text benchmark's images and their scores.

    Args are :func:`~mmjax.eval.benchmarks.run_benchmark`'s, with `caption_images` in place of the encoders;
    `batch_size` images go to each call of it.

    Returns:
      ``(metrics, captions)``: ``bleu_1`` … ``bleu_4``, ``cider``, ``images_per_s`` (reading, decoding, resizing
      and captioning; the slowest process's time), ``num_images`` and ``num_texts`` (references); and for each
      image in benchmark order ``{"caption": written, "references": [...]}``.

    Raises:
      ValueError: a classification benchmark (no reference captions), bad data, an empty benchmark; and the
        errors of :func:`~mmjax.eval.benchmarks.run_benchmark`.
    """
    preprocess = checked_preprocess(image_size, preprocess, num_workers, max_examples)
    process = default_process(process_index, process_count)
    _refuse_a_known_classification(name_or_path)
    task, batches, _, _ = open_benchmark(name_or_path, data_dir, max_examples, preprocess.resized, batch_size,
                                         num_workers, process)
    if task != sources.RETRIEVAL:
        batches.close()
        _refuse_classification(name_or_path)
    written, references = [], []
    start = time.perf_counter()

    def add(images: np.ndarray, batch_references: list[list[str]]) -> None:
        captions = list(caption_images(images))
        if len(captions) != len(images):
            raise ValueError(f"the captioner wrote {len(captions)} captions for {len(images)} images")
        written.append(_utf8_json(captions))
        references.append(_utf8_json(batch_references))

    with tqdm.tqdm(batches, unit="batch", desc=name_or_path, disable=not (progress and process[0] == 0)) as mine:
        for_each_batch(mine, add, process[1])
    seconds = process_max(time.perf_counter() - start, process[1])
    no_bytes = np.zeros(0, np.uint8)
    captions = [caption for batch in gather_batches(written, *process, no_bytes) for caption in _parsed(batch)]
    references = [image for batch in gather_batches(references, *process, no_bytes) for image in _parsed(batch)]
    if not captions:
        raise ValueError("the benchmark has no examples")
    metrics = caption_scores(captions, references) | {
        "images_per_s": len(captions) / seconds, "num_images": len(captions),
        "num_texts": sum(map(len, references))}
    return metrics, [{"caption": caption, "references": image_references}
                     for caption, image_references in zip(captions, references)]


def check_captioning_benchmark(name_or_path: str, data_dir: str | None = None) -> None:
    """The checks :func:`caption_benchmark` makes before it reads images: a benchmark with reference captions (a
    classification one is refused before its data is looked for), and readable (as
    :func:`~mmjax.eval.benchmarks.check_benchmark`)."""
    _refuse_a_known_classification(name_or_path)
    if check_benchmark(name_or_path, data_dir) != sources.RETRIEVAL:
        _refuse_classification(name_or_path)


def _refuse_a_known_classification(name_or_path: str) -> None:
    tfds_benchmark = sources.TFDS_BENCHMARKS.get(name_or_path)
    if tfds_benchmark is not None and tfds_benchmark.task != sources.RETRIEVAL:
        _refuse_classification(name_or_path)


def _refuse_classification(name_or_path: str) -> None:
    raise ValueError(f"{name_or_path} is a classification benchmark, without reference captions to score captions "
                     f"against; use coco_captions or a wds:DIR of images with .txt captions")


def _utf8_json(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), np.uint8)


def _parsed(encoded: np.ndarray) -> Any:
    return json.loads(encoded.tobytes().decode())
