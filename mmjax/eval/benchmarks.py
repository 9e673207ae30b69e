"""Zero-shot classification and retrieval on real benchmarks (TFDS or clip_benchmark webdataset).

``run_benchmark("cifar10", encode_images, encode_texts, image_size=224)`` reads the benchmark
(:mod:`mmjax.eval.sources`), embeds it batch by batch with the caller's encoders and returns
clip_benchmark's task name and metrics:

- classification: the prompt-ensemble classifier of the shipped class names and templates
  (``mmjax/eval/data/*.json``, from LAION-AI/CLIP_benchmark, MIT) or of the webdataset's
  ``classnames.txt`` / ``zeroshot_classification_templates.txt``
  (:func:`~mmjax.eval.zeroshot.build_classifier`), then ``acc1``, ``acc5``,
  ``mean_per_class_recall`` exactly as :func:`~mmjax.eval.zeroshot.zero_shot_metrics`
  (computed from per-batch ranks and predictions, so no ``[N, C]`` logits are kept);
- retrieval: every caption of every image is a text query;
  :func:`~mmjax.eval.retrieval.retrieval_metrics` (blocked) with recall@1/5/10, and their chance
  levels (:func:`~mmjax.eval.retrieval.retrieval_chance`) as ``chance_*`` entries.

Besides the metrics: ``images_per_s`` (images over the wall time of the image phase:
reading, decoding, resizing and ``encode_images``; with ``num_workers`` the first three run in
grain worker processes, whose start-up is counted; with several processes, all images over the
slowest process's time), ``num_images`` and ``num_classes`` or ``num_texts``.

Multi-process (multi-host) runs: batch ``i`` is embedded by process ``i % process_count`` (with
the caller's encoders, which should use that process's devices only, as
:class:`~mmjax.inference.Encoder` does by default), the per-example results (true-class ranks,
predictions and labels; image and caption embeddings) are gathered to every process in batch
order (:mod:`mmjax.parallel.distributed`), and every process returns the metrics one process
would. Each process reads and decodes only its own batches. An error while reading or embedding (bad data,
or any other ``Exception``) fails every process together: the process that meets it raises its own error,
the others a ``ValueError`` naming that process and error
(``raise_if_any_failed``), instead of waiting for it in the next collective.
"""
from __future__ import annotations

import difflib
import functools
import json
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import numpy as np
import tqdm

from mmjax import interrupts
from mmjax.data.preprocess import ImagePreprocess
from mmjax.eval import sources
from mmjax.eval.retrieval import retrieval_chance, retrieval_metrics
from mmjax.eval.zeroshot import (
    build_classifier,
    classify,
    label_rank,
    mean_per_class_recall,
)
from mmjax.parallel.distributed import (
    default_process,
    gather_batches,
    process_max,
    raise_if_any_failed,
)

ImageEncoder = Callable[[np.ndarray], np.ndarray]  # uint8 [N, S, S, 3] -> [N, D]
TextEncoder = Callable[[list[str]], np.ndarray]  # N strings -> [N, D]

WDS_PREFIX = "wds:"


@functools.cache
def shipped_classnames() -> dict[str, list[str]]:
    """Class names per key (``cifar10``, ``cifar100``, ``imagenet1k``, ``food101``, ``pets``)."""
    return _load_json_data("classnames.json")["classnames"]


@functools.cache
def shipped_templates() -> dict[str, list[str]]:
    """clip_benchmark's prompt templates (``{c}`` placeholder) per key, as :func:`shipped_classnames`."""
    return _load_json_data("templates.json")["templates"]


def benchmark_names() -> list[str]:
    """The TFDS benchmark names :func:`run_benchmark` accepts (besides ``wds:PATH``)."""
    return sorted(sources.TFDS_BENCHMARKS)


def open_benchmark(name_or_path: str, data_dir: str | None, max_examples: int | None, resize: sources.Resize,
                   batch_size: int, num_workers: int, process: tuple[int, int] = (0, 1)
                   ) -> tuple[str, Iterator[tuple[np.ndarray, Any]], list[str] | None, list[str] | None]:
    """``(task, batches, classnames, templates)`` of a benchmark (names None for retrieval); the batches
    are process ``process[0]``'s of ``process[1]``."""
    if name_or_path.startswith(WDS_PREFIX):
        directory = name_or_path[len(WDS_PREFIX):]
        task = sources.wds_task(directory)
        classnames = templates = None
        if task == sources.CLASSIFICATION:
            classnames = sources.wds_classnames(directory)
            templates = sources.wds_templates(directory)
        batches = sources.wds_batches(directory, task, resize, batch_size,
                                      len(classnames) if classnames else None, max_examples,
                                      num_workers, process)
        return task, batches, classnames, templates
    if name_or_path not in sources.TFDS_BENCHMARKS:
        # "synthetic" is a name for the CLI and config.eval.benchmarks, which run it themselves
        close = difflib.get_close_matches(name_or_path, [*benchmark_names(), "synthetic"], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown benchmark {name_or_path!r}: {hint}use one of {benchmark_names()}, 'synthetic' "
                         f"(in mmjax eval and config.eval.benchmarks) or {WDS_PREFIX}DIR for a webdataset directory")
    benchmark = sources.TFDS_BENCHMARKS[name_or_path]
    source = sources.open_tfds(name_or_path, data_dir)
    classnames = templates = None
    if benchmark.task == sources.CLASSIFICATION:
        classnames = shipped_classnames()[benchmark.classnames]
        templates = shipped_templates()[benchmark.classnames]
        declared = sources.tfds_classnames_count(source, benchmark)
        if declared is not None and declared != len(classnames):
            raise ValueError(f"{benchmark.tfds_name} has {declared} classes but the shipped "
                             f"class names for {benchmark.classnames} are {len(classnames)}")
    batches = sources.tfds_batches(source, benchmark, resize, batch_size, max_examples,
                                   num_workers, process)
    return benchmark.task, batches, classnames, templates


def check_benchmark(name_or_path: str, data_dir: str | None = None) -> str:
    """The task of a benchmark, after the checks :func:`run_benchmark` makes before it reads images:
    a known name, a prepared TFDS data set, a readable webdataset directory, class names that fit.
    Raises as :func:`run_benchmark` does."""
    task, batches, _, _ = open_benchmark(name_or_path, data_dir, None, ImagePreprocess(1).resized, 1, 0)
    batches.close()
    return task


def run_benchmark(
    name_or_path: str,
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    *,
    image_size: int,
    data_dir: str | None = None,
    batch_size: int = 256,
    max_examples: int | None = None,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    progress: bool = False,
    preprocess: ImagePreprocess | None = None,
) -> tuple[str, dict[str, float]]:
    """Zero-shot evaluation of one benchmark.

    Args:
      name_or_path: a TFDS benchmark (:func:`benchmark_names`) or ``wds:DIR``.
      encode_images: uint8 ``[b, image_size, image_size, 3]`` -> embeddings ``[b, D]``.
      encode_texts: ``n`` strings -> embeddings ``[n, D]``.
      image_size: side of the square model input (resize shorter side + centre crop).
      preprocess: the model's own resize and crop instead (a pretrained checkpoint's, ``Pretrained.preprocess``;
        its ``size`` must be ``image_size``); its normalisation is not applied: ``encode_images`` gets uint8.
      data_dir: TFDS data directory (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      batch_size: images (and texts) per encoder call.
      max_examples: evaluate only the first images.
      num_workers: read, decode, resize and batch the images in this many grain worker
        processes (0: in this process). The batches, hence the metrics, do not depend on it.
      process_index, process_count: this process and the number of processes sharing the
        work (default ``jax.process_index()``, ``jax.process_count()``); every process must
        call this function with the same arguments, and gets the same metrics.
      progress: a progress bar over this process's image batches.

    Returns:
      ``(task, metrics)``: task is ``"zeroshot_classification"`` or ``"zeroshot_retrieval"``.

    Raises:
      FileNotFoundError: a TFDS data set that is not prepared, a missing webdataset file.
      ValueError: bad data (empty shard, undecodable image, class names not fitting labels).
    """
    preprocess = checked_preprocess(image_size, preprocess, num_workers, max_examples)
    process = default_process(process_index, process_count)
    task, batches, classnames, templates = open_benchmark(name_or_path, data_dir, max_examples,
                                                 preprocess.resized, batch_size, num_workers, process)
    progress = progress and process[0] == 0  # one process's bars speak for all
    with tqdm.tqdm(batches, unit="batch", desc=name_or_path, disable=not progress) as mine:  # ends its line on errors
        if task == sources.CLASSIFICATION:
            return task, _classification(mine, classnames, templates, encode_images,
                                         encode_texts, batch_size, process, progress)
        return task, _retrieval(mine, encode_images, encode_texts, batch_size, process, progress)


def checked_preprocess(image_size: int, preprocess: ImagePreprocess | None, num_workers: int,
                       max_examples: int | None) -> ImagePreprocess:
    """The resize and crop of a benchmark's images (`preprocess`, default an mmjax model's), after the checks
    of the reading arguments :func:`run_benchmark` takes."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if max_examples is not None and max_examples < 0:
        raise ValueError(f"max_examples must be >= 0, got {max_examples}")
    preprocess = ImagePreprocess(image_size) if preprocess is None else preprocess
    if preprocess.size != image_size:
        raise ValueError(f"preprocess makes {preprocess.size} px images, not image_size {image_size}")
    return preprocess


def for_each_batch(batches: Iterator[tuple[np.ndarray, Any]], add: Callable[[np.ndarray, Any], None],
                    process_count: int) -> None:
    """``add(images, targets)`` for each of this process's batches; an error in one process (bad data, or any
    other ``Exception``) fails every process together (:func:`~mmjax.parallel.distributed.raise_if_any_failed`)
    rather than leaving the others in the next collective."""
    error = None
    try:
        for images, targets in batches:
            interrupts.check()  # a Ctrl-C Python dropped in a gc callback
            add(images, targets)
    except Exception as failure:  # noqa: BLE001 - re-raised by raise_if_any_failed, after the others are told
        error = failure
    raise_if_any_failed(error, process_count)


def _classification(batches, classnames, templates, encode_images, encode_texts,
                    batch_size, process, progress) -> dict[str, float]:
    classifier = build_classifier(encode_texts, classnames, templates, batch_size, progress)
    ranks, predictions, labels = [], [], []
    start = time.perf_counter()

    def add(images: np.ndarray, batch_labels: np.ndarray) -> None:
        logits = classify(np.asarray(encode_images(images), np.float32), classifier)
        ranks.append(label_rank(logits, batch_labels))
        predictions.append(logits.argmax(axis=1))
        labels.append(np.asarray(batch_labels))

    for_each_batch(batches, add, process[1])
    seconds = process_max(time.perf_counter() - start, process[1])
    empty = np.zeros(0, np.int32)
    ranks, predictions, labels = (gather_batches(x, *process, empty)
                                  for x in (ranks, predictions, labels))
    num_images = sum(map(len, ranks))
    if not num_images:
        raise ValueError("the benchmark has no examples")
    ranks, predictions, labels = map(np.concatenate, (ranks, predictions, labels))
    return {
        "acc1": float(np.mean(ranks < 1)),
        "acc5": float(np.mean(ranks < 5)) if len(classnames) >= 5 else float("nan"),
        "mean_per_class_recall": mean_per_class_recall(predictions, labels),
        "images_per_s": num_images / seconds,
        "num_images": num_images,
        "num_classes": len(classnames),
    }


def _retrieval(batches, encode_images, encode_texts, batch_size, process, progress) -> dict[str, float]:
    image_embeddings, captions, captions_per_image = [], [], []
    start = time.perf_counter()

    def add(images: np.ndarray, batch_captions: list[list[str]]) -> None:
        image_embeddings.append(np.asarray(encode_images(images), np.float32))
        captions_per_image.append(np.asarray([len(c) for c in batch_captions], np.int32))
        captions.extend(caption for image_captions in batch_captions for caption in image_captions)

    for_each_batch(batches, add, process[1])
    seconds = process_max(time.perf_counter() - start, process[1])
    no_embeddings = np.zeros((0, 0), np.float32)
    text_embeddings = np.concatenate([
        np.asarray(encode_texts(captions[i:i + batch_size]), np.float32)
        for i in tqdm.tqdm(range(0, len(captions), batch_size), desc="captions", unit="batch",
                           disable=not progress)]) if captions else no_embeddings
    # this process's caption embeddings per batch, to gather them in batch order
    text_embeddings = np.split(text_embeddings,
                               np.cumsum([c.sum() for c in captions_per_image])[:-1])
    image_embeddings = gather_batches(image_embeddings, *process, no_embeddings)
    text_embeddings = gather_batches(text_embeddings[:len(captions_per_image)], *process,
                                     no_embeddings)
    captions_per_image = gather_batches(captions_per_image, *process, np.zeros(0, np.int32))
    num_images = sum(map(len, image_embeddings))
    if not num_images:
        raise ValueError("the benchmark has no examples")
    captions_per_image = np.concatenate(captions_per_image)
    text_to_image = np.repeat(np.arange(num_images), captions_per_image)
    metrics = retrieval_metrics(np.concatenate(image_embeddings), np.concatenate(text_embeddings),
                                text_to_image)
    return metrics | {"images_per_s": num_images / seconds, "num_images": num_images,
                      "num_texts": len(text_to_image)} | retrieval_chance(captions_per_image)


def _load_json_data(file_name: str) -> dict[str, Any]:
    """A JSON file shipped in ``mmjax/eval/data``."""
    return json.loads(resources.files("mmjax.eval").joinpath("data", file_name).read_text("utf-8"))
