"""Training sources named in a config, and their weighted mixture.

A source is a string: a data directory written by `mmjax data convert` (ArrayRecord
shards + index.json) or `tfds:NAME` (a TFDS data set prepared as array_record).
Each source is shuffled with its own seed and repeated; grain's `MapDataset.mix`
then interleaves them deterministically in the integer proportions nearest to the
weights (`grain`'s `_float_to_int_proportions`), so every window of the stream holds
each source in proportion — closer than independent sampling, whose count of source
`k` in `n` examples would have standard deviation `sqrt(n p_k (1 − p_k))`.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain

from mmjax.data.arrayrecord_source import RecordSource
from mmjax.data.batching import TagSource
from mmjax.data.tfds_source import TFDS_PREFIX, TfdsSamples


def open_source(spec: str, tfds_split: str = "train", tfds_data_dir: str | None = None) -> RecordSource | TfdsSamples:
    """`DIR` → `RecordSource`, `tfds:NAME` → `TfdsSamples` (one-line FileNotFoundError when absent)."""
    if spec.startswith(TFDS_PREFIX):
        return TfdsSamples(spec[len(TFDS_PREFIX):], tfds_split, tfds_data_dir or None)
    return RecordSource(spec)


def shuffled_component(source, index: int, seed: int, num_epochs: int | None = None,
                       tagged: bool = False) -> grain.MapDataset:
    """Source `index` of a mixture, shuffled (seed `seed + index`) and repeated `num_epochs` times (None:
    forever); `tagged`: its elements are `Tagged(index, element)`, so batches can say where they came from."""
    dataset = grain.MapDataset.source(source).shuffle(seed=seed + index).repeat(num_epochs)
    return dataset.map(TagSource(index)) if tagged else dataset


def mix(components: Sequence[grain.MapDataset], weights: Sequence[float] | None) -> grain.MapDataset:
    """One component as is; several interleaved in the proportions of `weights` (default uniform)."""
    if len(components) == 1:
        return components[0]
    if weights is not None and (len(weights) != len(components) or min(weights) <= 0):
        raise ValueError(f"mixture weights {tuple(weights)} must be {len(components)} positive numbers")
    return grain.MapDataset.mix(list(components), None if weights is None else list(weights))
