"""Batching benchmark examples: in this process, or in grain worker processes."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

# A decoded image → uint8 `[S, S, 3]` (the model's resize and crop: `mmjax.data.preprocess.ImagePreprocess.resized`)
Resize = Callable[[Image.Image], np.ndarray]


def batches(
    examples: Iterator[tuple[Image.Image, Any]], resize: Resize, batch_size: int
) -> Iterator[tuple[np.ndarray, Any]]:
    """``(uint8 [b, S, S, 3], targets)``, ``b <= batch_size``, each image through ``resize``; targets are int64
    ``[b]`` labels or a list of ``b`` caption lists, following the examples."""
    images, targets = [], []
    for image, target in examples:
        images.append(resize(image))
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


def grain_batches(dataset: Any, batch_size: int, num_workers: int, process: tuple[int, int] = (0, 1)
                   ) -> Iterator[tuple[np.ndarray, Any]]:
    """Batches ``i, i + n, …`` (``process = (i, n)``) of the ``(uint8 image, target)`` grain ``MapDataset``,
    in order, prepared in ``num_workers`` processes (0: this one); only those batches' examples are read.
    Their bad-data errors are re-raised here as one line."""
    import grain  # noqa: PLC0415

    from mmjax.data.workers import start_workers  # noqa: PLC0415

    process_index, process_count = process
    iter_dataset = dataset.batch(batch_size, drop_remainder=False, batch_fn=_collate)[process_index::process_count]
    iter_dataset = iter_dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    # Batches come back pickled, not in shared memory: grain frees a shared-memory batch on a background thread,
    # and a finite stream's last batches were still waiting for it when the process exited, which Python reported
    # as "leaked shared_memory objects". A pickled batch costs a copy, far less than decoding its images.
    iter_dataset = grain.experimental.WithOptionsIterDataset(
        iter_dataset, grain.experimental.DatasetOptions(min_shm_size=2**62))
    iterator = iter(start_workers(iter_dataset, num_workers))
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

