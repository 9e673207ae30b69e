"""Gathering host-local NumPy results from every process (multi-host evaluation).

Work is split by batches: batch ``i`` of a stream goes to process ``i % process_count``.
:func:`gather_batches` brings every process's batches back to every process in the order of
the stream, so all processes compute the same metrics as one process would. With one process
nothing is communicated. The collective is :func:`jax.experimental.multihost_utils.process_allgather`
(gloo on CPU), on arrays padded to one size.

Gloo gives a process 30 s to join a new communicator, so a process that reaches its first
collective much later than the others (a slower compile, a busy machine) fails the run.
:func:`wait_for_all_processes` is a coordination-service barrier with a long timeout and no
collective; it runs right before the collectives whose arrival times can differ.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import numpy as np

BARRIER_TIMEOUT_S = 1800
_barrier_numbers = itertools.count()


def wait_for_all_processes(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
    """Block until every JAX process has called this with the same `name` (a no-op with one process).

    Every process must make the same sequence of calls: each call is a fresh barrier.
    """
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost

    barrier = multihost.get_barrier_sync_fn()
    barrier(key=f"mmjax/{name}/{next(_barrier_numbers)}", timeout_ms=timeout_s * 1000)


def allgather_rows(rows: np.ndarray, process_count: int) -> list[np.ndarray]:
    """Every process's ``[n_p, ...]`` array (``n_p`` may differ), in process order.

    All processes must pass arrays of the same ``ndim`` and dtype; trailing dimensions are
    taken from the processes with rows (an empty array may say 0 for them).
    """
    rows = np.asarray(rows)
    if process_count == 1:
        return [rows]
    from jax.experimental.multihost_utils import process_allgather

    wait_for_all_processes("allgather_rows")
    shapes = np.asarray(process_allgather(np.asarray(rows.shape, np.int32)))  # [P, ndim]
    size = shapes.max(axis=0)
    padded = np.zeros(tuple(size), rows.dtype)
    padded[tuple(slice(0, n) for n in rows.shape)] = rows
    gathered = np.asarray(process_allgather(padded))  # [P, *size]
    return [gathered[p, :shapes[p, 0]] for p in range(process_count)]


def gather_batches(batches: Sequence[np.ndarray], process_index: int, process_count: int,
                   empty: np.ndarray) -> list[np.ndarray]:
    """All processes' batches in stream order; this process holds batches ``process_index::process_count``.

    Args:
      batches: this process's batches, in its order (arrays of one dtype and ``ndim``).
      empty: a zero-row array of that dtype and ``ndim``, for a process without batches.
    """
    if process_count == 1:
        return list(batches)
    sizes = allgather_rows(np.asarray([len(b) for b in batches], np.int32), process_count)
    rows = allgather_rows(np.concatenate(batches) if batches else empty, process_count)
    per_process = [np.split(r, np.cumsum(s)[:-1]) if len(s) else [] for r, s in zip(rows, sizes)]
    total = sum(len(s) for s in sizes)
    return [per_process[i % process_count][i // process_count] for i in range(total)]


def raise_if_any_failed(error: Exception | None, process_count: int) -> None:
    """Every process raises when any did: processes that read disjoint data fail together, rather than the
    others waiting in the next collective for the one that stopped.

    A failed process re-raises its own ``error``; the others raise ``ValueError`` with the message of the
    first process that failed, prefixed by its index (and by the error's type, unless it is a ``ValueError`` or
    ``OSError``: bad data). Every process must call this at the same point.
    """
    report = b"ok" if error is None else b"!" + _describe(error).encode()
    reports = allgather_rows(np.frombuffer(report, np.uint8), process_count)
    failures = [(p, bytes(rows[1:]).decode()) for p, rows in enumerate(reports) if rows[0] == ord("!")]
    if error is not None:
        raise error
    if failures:
        process, message = failures[0]
        raise ValueError(f"process {process}: {message}")


def _describe(error: Exception) -> str:
    if isinstance(error, (ValueError, OSError)):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def process_max(value: float, process_count: int) -> float:
    """The largest of every process's ``value``."""
    if process_count == 1:
        return value
    return float(np.max(allgather_rows(np.asarray([value], np.float32), process_count)))


def default_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """``(process_index, process_count)``, JAX's where None."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} is not in [0, {count})")
    return index, count
