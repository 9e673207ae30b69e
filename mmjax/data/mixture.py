"""Training sources named in a config, and their weighted mixture.

A source is a string: a data directory written by `mmjax data convert` (ArrayRecord
shards + index.json) or `tfds:NAME` (a TFDS data set prepared as array_record).
Each source is shuffled with its own seed and repeated; grain's `MapDataset.mix`
then interleaves them deterministically in the integer proportions nearest to the
weights (`grain`'s `_float_to_int_proportions`), so every window of the stream holds
each source in proportion — closer than independent sampling, whose count of source
`k` in `n` examples would have standard deviation `sqrt(n p_k (1 − p_k))`.

That interleaving is periodic (a, b, a, b, … for equal weights), and worker processes
and JAX processes each take every n-th position of the stream: alone, it would give a
worker or a host only some of the sources (with two workers, batches all of a, then all
of b). So the mixed stream is also shuffled within windows of `MIX_WINDOW` positions
(`ShuffleWithinWindows`): each window still holds every source in proportion, and every
n-th position of it is a random draw from the window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import grain
import numpy as np

from mmjax.data.arrayrecord_source import RecordSource
from mmjax.data.batching import TagSource
from mmjax.data.tfds_source import TFDS_PREFIX, TfdsSamples


def open_source(spec: str, tfds_split: str = "train", tfds_data_dir: str | None = None,
                record_reads: str = "auto") -> RecordSource | TfdsSamples:
    """`DIR` → `RecordSource` (reading a batch's records as `record_reads` says), `tfds:NAME` → `TfdsSamples`
    (one-line FileNotFoundError when absent)."""
    if spec.startswith(TFDS_PREFIX):
        return TfdsSamples(spec[len(TFDS_PREFIX):], tfds_split, tfds_data_dir or None)
    return RecordSource(spec, record_reads)


def shuffled_component(source, index: int, seed: int, num_epochs: int | None = None,
                       tagged: bool = False) -> grain.MapDataset:
    """Source `index` of a mixture, shuffled (seed `seed + index`) and repeated `num_epochs` times (None:
    forever); `tagged`: its elements are `Tagged(index, element)`, so batches can say where they came from."""
    dataset = grain.MapDataset.source(source).shuffle(seed=seed + index).repeat(num_epochs)
    return dataset.map(TagSource(index)) if tagged else dataset


MIX_WINDOW = 4096  # positions; a window's permutation takes ~50 µs to draw, once per window and process


class ShuffleWithinWindows(grain.MapDataset):
    """`parent` with the positions of each window `[k·window, (k+1)·window)` permuted (seeded by `seed` and
    `k`): element `i` is `parent[k·window + permutation_k[i − k·window]]`. A bijection on positions, so every
    element of `parent` still appears once; the last window of a finite `parent` may be shorter."""

    def __init__(self, parent: grain.MapDataset, window: int, seed: int):
        super().__init__(parent)
        self.window, self.seed = window, seed
        self._permutations: dict[int, np.ndarray] = {}  # the windows in use (readers move through them in order)

    def __len__(self) -> int:
        return len(self._parent)

    def _permutation(self, window_index: int) -> np.ndarray:
        permutation = self._permutations.get(window_index)
        if permutation is None:
            size = min(self.window, len(self._parent) - window_index * self.window)
            permutation = np.random.default_rng([self.seed, window_index]).permutation(size)
            if len(self._permutations) >= 4:
                self._permutations.clear()
            self._permutations[window_index] = permutation
        return permutation

    def _parent_index(self, index: int) -> int:
        window_index, offset = divmod(index, self.window)
        return window_index * self.window + int(self._permutation(window_index)[offset])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._parent_index(index)]

    def _getitems(self, indices: Sequence[int]) -> Sequence:
        """grain's batched read: the mixture reads each component's elements in one call."""
        parent_indices = [self._parent_index(index) for index in indices]
        return self._parent._getitems(parent_indices)  # pylint: disable=protected-access


def usable_weights(weights: Sequence[float], count: int) -> bool:
    """`count` finite positive weights whose ratio is finite too (grain divides by the smallest)."""
    return (len(weights) == count and all(math.isfinite(w) and w > 0 for w in weights)
            and math.isfinite(max(weights) / min(weights)))


def mix(components: Sequence[grain.MapDataset], weights: Sequence[float] | None, seed: int) -> grain.MapDataset:
    """One component as is; several interleaved in the proportions of `weights` (default uniform) and shuffled
    within windows of `MIX_WINDOW` positions (seed `seed`; see the module docstring)."""
    if len(components) == 1:
        return components[0]
    if weights is not None and not usable_weights(weights, len(components)):
        raise ValueError(f"mixture weights {tuple(weights)} must be {len(components)} finite positive numbers")
    mixed = grain.MapDataset.mix(list(components), None if weights is None else list(weights))
    return ShuffleWithinWindows(mixed, MIX_WINDOW, seed)
