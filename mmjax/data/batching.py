"""Batches that leave bad samples out and still count them exactly, across worker processes and resumes.

Worker side, `DecodeBatches`: reads the stream's elements (records, `records.Skip`s)
by position, decodes them (`decode.decode_example`) until it has `batch_size` good
ones, stacks their images and tokenises their captions in one call; the skips it
passed over travel *in the batch*: `skip_counts` int64 `[len(SKIP_REASONS)]` and
`skipped` str `[n]` ("record_id reason"). Counting in the batch, rather than in a
worker's memory, is what makes the counts exact with any number of worker processes.
It reads the stream directly (no per-element grain iterator, thread or generator):
on the demo model that halves the pipeline's CPU time per batch, which on a machine
whose cores the train step keeps busy is what the step waits for.

Main side, `CountSkips`: pops those fields (and `source`, the mixture component of
each example; together `HOST_FIELDS`) and keeps running totals. The totals are part of
the iterator state, which the training checkpoint stores, so they survive a resume.
A device prefetch goes *below* the counting (`CountSkips.count`), so the totals,
the logged ids and the stop rule describe the batches handed to the step.
"""

from __future__ import annotations

from typing import NamedTuple

import grain
import numpy as np

from mmjax.data.decode import UNIFORMS_PER_EXAMPLE, DecodeOptions, decode_example
from mmjax.data.element_random import element_uniforms
from mmjax.data.records import REASON_CODE, SKIP_REASONS, Skip
from mmjax.data.tokenizers import Tokenizer


HOST_FIELDS = ("skip_counts", "skipped", "source")  # per-process bookkeeping, never placed on a device


class TooManySkipsError(ValueError):
    """The data stream is unreadable: every sample in a long run was skipped."""


class StateMismatchError(ValueError):
    """A checkpoint's data-iterator state was written for another pipeline (another version, another number
    of mixture sources): the checkpoint is sound, the config or version is not the run's."""


class Tagged(NamedTuple):
    """A mixture's element: `item` from component `source`."""

    source: int
    item: object


class TagSource(grain.transforms.Map):
    """item → `Tagged(source, item)`: marks the elements of one mixture component."""

    def __init__(self, source: int):
        self.source = source

    def map(self, item) -> Tagged:
        return Tagged(self.source, item)


class DecodeBatches(grain.IterDataset):
    """Batches of `batch_size` good examples decoded from positions `offset, offset + stride, …` of `items`
    (a MapDataset of `RawRecord` | `Sample` | `Skip`, or `Tagged` ones), plus `skip_counts` / `skipped`
    (see the module docstring): `{"image": uint8 [B, S, S, 3], "text": int32 [B, L], "source": int32 [B]}`.

    Element `i`'s random numbers are `element_uniforms(seed, [i], UNIFORMS_PER_EXAMPLE)`. grain's worker
    processes slice the stream (`set_slice`) by narrowing `offset` / `stride`, so the numbers stay those of
    the global position. `finite`: `items` ends (a finite number of epochs) and the last batch may be partial
    (only `skip_counts` / `skipped` when no good example is left); otherwise its length is ignored. A run of
    `max_consecutive` skips with no good example raises `TooManySkipsError` instead of reading forever.
    """

    def __init__(self, items: grain.MapDataset, batch_size: int, options: DecodeOptions, tokenizer: Tokenizer,
                 seed: int, *, offset: int = 0, stride: int = 1, finite: bool = False,
                 max_consecutive: int = 10_000):
        super().__init__(items)
        self.items, self.batch_size, self.options, self.tokenizer, self.seed = (items, batch_size, options,
                                                                                 tokenizer, seed)
        self.offset, self.stride, self.finite, self.max_consecutive = offset, stride, finite, max_consecutive

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """grain's worker sharding (`mp_prefetch`): keep positions `sl` of this stream."""
        if sequential_slice:
            raise ValueError("DecodeBatches supports only interleaved worker slices")
        self.offset += (sl.start or 0) * self.stride
        self.stride *= sl.step or 1

    def __iter__(self) -> _DecodeBatchesIterator:
        return _DecodeBatchesIterator(self)


class _DecodeBatchesIterator(grain.DatasetIterator):
    def __init__(self, spec: DecodeBatches):
        super().__init__()
        self._spec, self._position = spec, 0  # the next element is at global position offset + position × stride
        self._end = len(spec.items) if spec.finite else None

    def _read(self, count: int) -> list[tuple[object, list[float]]]:
        """The next `count` elements (fewer at the end of a finite stream) with their uniforms; advances the position.
        The elements are read in one `_getitems` call, which a `RecordSource` serves with one ArrayRecord read per
        shard instead of a trip through every grain layer per element."""
        spec = self._spec
        positions = spec.offset + spec.stride * np.arange(self._position, self._position + count)
        if self._end is not None:
            positions = positions[positions < self._end]
        self._position += len(positions)
        uniforms = element_uniforms(spec.seed, positions, UNIFORMS_PER_EXAMPLE).tolist()
        return list(zip(spec.items._getitems(positions.tolist()), uniforms))  # pylint: disable=protected-access

    def __next__(self) -> dict[str, np.ndarray]:
        spec = self._spec
        captions, images, sources, counts, skipped, consecutive = [], [], [], np.zeros(len(SKIP_REASONS), np.int64), [], 0
        while len(images) < spec.batch_size:
            block = self._read(spec.batch_size - len(images))  # each element gives at most one example
            if not block:
                if not (images or skipped):
                    raise StopIteration
                break
            for item, uniforms in block:
                source, item = item if isinstance(item, Tagged) else (0, item)
                result = decode_example(item, spec.options, uniforms)
                if isinstance(result, Skip):
                    counts[REASON_CODE[result.reason]] += 1
                    skipped.append(f"{result.record_id} {result.reason}")
                    consecutive += 1
                    if consecutive >= spec.max_consecutive:
                        raise TooManySkipsError(f"{consecutive} samples in a row were skipped (the last: "
                                                f"{skipped[-1]}): the data cannot be read")
                    continue
                consecutive = 0
                captions.append(result[0])
                images.append(result[1])
                sources.append(source)
        batch = {"image": np.stack(images), "text": spec.tokenizer(captions),
                 "source": np.array(sources, np.int32)} if images else {}
        batch.update(skip_counts=counts, skipped=np.array(skipped, dtype=str))
        return batch

    def get_state(self) -> dict:
        return {"position": self._position}

    def set_state(self, state: dict) -> None:
        if "position" not in state:
            raise StateMismatchError(f"the checkpoint's data-iterator state {sorted(state)} was written by another version "
                             f"of the mmjax pipeline (this one stores 'position'); resume with that version or "
                             f"start a new workdir")
        self._position = state["position"]


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
        if len(state["examples_per_source"]) != len(self.examples_per_source):
            raise StateMismatchError(f"the checkpoint's data stream mixes {len(state['examples_per_source'])} source(s), "
                             f"this config's data.sources {len(self.examples_per_source)}: resume with the same "
                             f"sources, or start a new workdir")
        self._parent.set_state(state["parent"])
        self.skip_counts = np.zeros(len(SKIP_REASONS), np.int64)  # a checkpoint from before a reason was added
        self.skip_counts[:len(state["skip_counts"])] = state["skip_counts"]  # has fewer: new reasons count from 0
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
        return self.count(self._parent.__iter__())

    def count(self, iterator: grain.DatasetIterator) -> _CountSkipsIterator:
        """Totals the skips of `iterator`: an iterator over this dataset's parent, or one that wraps such an
        iterator batch for batch and passes the `HOST_FIELDS` through (`train.prefetch.DevicePrefetch`)."""
        return _CountSkipsIterator(iterator, self._num_sources)
