"""Batches placed on the devices ahead of the step that uses them, without breaking exact resume."""

from __future__ import annotations

import collections
import copy
from typing import Any, Callable

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from mmjax.data.batching import HOST_FIELDS, CountSkips
from mmjax.parallel import batch_sharding


def batch_to_mesh(mesh: Mesh) -> Callable[[dict], dict]:
    """A host batch (this process's rows) → global arrays sharded over the batch axes of `mesh`; the
    `HOST_FIELDS` (skip bookkeeping) stay numpy arrays on the host.

    On CPU the arrays are copied first: a CPU device array may view the host memory, which grain hands
    over in shared memory, and shared memory still viewed when the iterator closes leaks.
    """
    copy_first = mesh.devices.flat[0].platform == "cpu"
    sharding = batch_sharding(mesh)

    def to_mesh(batch: dict) -> dict:
        return {key: value if key in HOST_FIELDS else jax.make_array_from_process_local_data(
            sharding, np.array(value) if copy_first else value) for key, value in batch.items()}

    return to_mesh


def prefetch_to_mesh(dataset: grain.IterDataset, mesh: Mesh, ahead: int) -> grain.DatasetIterator:
    """`iter(dataset)` with each batch placed on `mesh` `ahead` batches before the step asks for it.

    For a real-data stream (`CountSkips`) the prefetch goes below the skip counting, so the skip totals,
    the logged record ids and the stop rule describe the batches handed to the step, not those read ahead.
    """
    if isinstance(dataset, CountSkips):
        return dataset.count(DevicePrefetch(iter(dataset.parents[0]), batch_to_mesh(mesh), ahead))
    return DevicePrefetch(iter(dataset), batch_to_mesh(mesh), ahead)


class DevicePrefetch(grain.DatasetIterator):
    """`iterator`'s batches, each passed through `to_device` (host → global arrays on the mesh) `ahead`
    batches before the step asks for it, so the host-to-device copy overlaps the steps before.

    The state this iterator reports (and the training checkpoint stores) is `iterator`'s state before the
    oldest batch not yet returned: batches that were prefetched but never trained on are read again by a
    resumed run. `ahead=0` places each batch when it is asked for.
    """

    def __init__(self, iterator: Any, to_device: Callable[[Any], Any], ahead: int):
        super().__init__()
        if ahead < 0:
            raise ValueError(f"prefetch ahead={ahead} must be ≥ 0")
        self._iterator, self._to_device, self._size = iterator, to_device, ahead + 1
        self._queue: collections.deque[tuple[dict, Any]] = collections.deque()

    def _fill(self) -> None:
        while len(self._queue) < self._size:
            state = copy.deepcopy(self._iterator.get_state())
            try:
                batch = next(self._iterator)
            except StopIteration:
                return
            self._queue.append((state, self._to_device(batch)))

    def __next__(self) -> Any:
        self._fill()
        if not self._queue:
            raise StopIteration
        return self._queue.popleft()[1]

    def get_state(self) -> dict:
        return copy.deepcopy(self._queue[0][0]) if self._queue else self._iterator.get_state()

    def set_state(self, state: dict) -> None:
        self._queue.clear()
        self._iterator.set_state(state)

    def close(self) -> None:
        """Drops the prefetched batches (grain may hand batches over in shared memory that the device
        arrays still view) before closing `iterator`."""
        self._queue.clear()
        if hasattr(self._iterator, "close"):
            self._iterator.close()
