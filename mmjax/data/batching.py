"""Batches that leave bad samples out and still count them exactly, across worker processes and resumes.

Worker side, `SkipAndBatch`: pulls decoded examples (or `records.Skip`s) until it
has `batch_size` good ones and stacks them; the skips it passed over travel *in the
batch*: `skip_counts` int64 `[len(SKIP_REASONS)]` and `skipped` str `[n]`
("record_id reason"). Counting in the batch, rather than in a worker's memory, is
what makes the counts exact with any number of worker processes.

Main side, `CountSkips`: pops those fields (and `source`, the mixture component of
each example) and keeps running totals. The totals are part of the iterator state,
which the training checkpoint stores, so they survive a resume; `get_state` of
`SkipAndBatch` is its parent's, because it holds nothing between batches.
"""

from __future__ import annotations

import grain
import numpy as np

from mmjax.data.records import REASON_CODE, SKIP_REASONS, Skip

SKIP_FIELDS = ("skip_counts", "skipped")


class TooManySkipsError(ValueError):
    """The data stream is unreadable: every sample in a long run was skipped."""


class _SkipAndBatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int, drop_remainder: bool, max_consecutive: int):
        super().__init__(parent)
        self._batch_size, self._drop_remainder, self._max_consecutive = batch_size, drop_remainder, max_consecutive

    def __next__(self) -> dict[str, np.ndarray]:
        examples, counts, skipped, consecutive = [], np.zeros(len(SKIP_REASONS), np.int64), [], 0
        while len(examples) < self._batch_size:
            try:
                item = next(self._parent)
            except StopIteration:
                if self._drop_remainder or not (examples or skipped):
                    raise
                break
            if isinstance(item, Skip):
                counts[REASON_CODE[item.reason]] += 1
                skipped.append(f"{item.record_id} {item.reason}")
                consecutive += 1
                if consecutive >= self._max_consecutive:
                    raise TooManySkipsError(f"{consecutive} samples in a row were skipped (the last: {skipped[-1]}): "
                                            f"the data cannot be read")
                continue
            consecutive = 0
            examples.append(item)
        batch = {key: np.stack([example[key] for example in examples]) for key in examples[0]} if examples else {}
        batch.update(skip_counts=counts, skipped=np.array(skipped, dtype=str))
        return batch

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


class SkipAndBatch(grain.IterDataset):
    """Batches of `batch_size` good examples plus `skip_counts` / `skipped` (see the module docstring).

    A run of `max_consecutive` skips with no good example raises `TooManySkipsError`
    instead of reading forever. With `drop_remainder=False` a finite stream ends with a
    partial batch (only `skip_counts` / `skipped` when no good example is left).
    """

    def __init__(self, parent: grain.IterDataset, batch_size: int, drop_remainder: bool = True,
                 max_consecutive: int = 10_000):
        super().__init__(parent)
        self._batch_size, self._drop_remainder, self._max_consecutive = batch_size, drop_remainder, max_consecutive

    def __iter__(self) -> _SkipAndBatchIterator:
        return _SkipAndBatchIterator(self._parent.__iter__(), self._batch_size, self._drop_remainder,
                                     self._max_consecutive)


class _CountSkipsIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, num_sources: int):
        super().__init__(parent)
        self.skip_counts = np.zeros(len(SKIP_REASONS), np.int64)
        self.examples_per_source = np.zeros(num_sources, np.int64)
        self.new_skipped: list[str] = []  # "record_id reason" since the caller last emptied it

    def __next__(self) -> dict[str, np.ndarray]:
        batch = dict(next(self._parent))
        self.skip_counts += batch.pop("skip_counts")
        self.new_skipped.extend(batch.pop("skipped").tolist())
        if "source" in batch:
            self.examples_per_source += np.bincount(batch.pop("source"), minlength=len(self.examples_per_source))
        return batch

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "skip_counts": self.skip_counts.tolist(),
                "examples_per_source": self.examples_per_source.tolist()}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self.skip_counts = np.array(state["skip_counts"], np.int64)
        self.examples_per_source = np.array(state["examples_per_source"], np.int64)
        self.new_skipped = []

    def close(self) -> None:
        if hasattr(self._parent, "close"):
            self._parent.close()


class CountSkips(grain.IterDataset):
    """Strips `skip_counts`, `skipped` and `source` from each batch and totals them on the iterator:
    `skip_counts` int64 `[len(SKIP_REASONS)]`, `examples_per_source` int64 `[num_sources]`, and
    `new_skipped` (the "record_id reason" lines not yet taken by the caller)."""

    def __init__(self, parent: grain.IterDataset, num_sources: int):
        super().__init__(parent)
        self._num_sources = num_sources

    def __iter__(self) -> _CountSkipsIterator:
        return _CountSkipsIterator(self._parent.__iter__(), self._num_sources)
