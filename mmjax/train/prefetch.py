"""Batches placed on the devices ahead of the step that uses them, without breaking exact resume."""

from __future__ import annotations

import collections
import copy
from typing import Any, Callable

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from mmjax.parallel import batch_sharding


def batch_to_mesh(mesh: Mesh) -> Callable[[Any], Any]:
    """A host batch (this process's rows) → global arrays sharded over the batch axes of `mesh`.

    On CPU the arrays are copied first: a CPU device array may view the host memory, which grain hands
    over in shared memory, and shared memory still viewed when the iterator closes leaks.
    """
    copy_first = mesh.devices.flat[0].platform == "cpu"
    sharding = batch_sharding(mesh)

    def to_mesh(batch: Any) -> Any:
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
            sharding, np.array(x) if copy_first else x), batch)

    return to_mesh


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
