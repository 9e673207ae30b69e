"""Limiting the CPU threads of XLA (and torch) for a benchmark.

Measured with jax 0.10 on a 2-core machine (a 2048² float32 matmul): the default
reaches ~360 GFLOP/s; `PJRT_NPROC=1` or an affinity of one core (`taskset -c 0`)
halve it to ~180; `--xla_cpu_multi_thread_eigen=false` changes nothing. XLA sizes
its CPU thread pool from the CPUs the process may run on, so `limit_threads` sets
both the affinity and `PJRT_NPROC`; it must run before JAX creates its CPU backend.
"""

from __future__ import annotations

import os


def checked_cpus(threads: int | None) -> list[int]:
    """The CPUs this process may use; a one-line ValueError when `threads` (None: all) is more than that."""
    available = sorted(os.sched_getaffinity(0))
    if threads is not None and not 1 <= threads <= len(available):
        raise ValueError(f"--threads={threads}: this process may use 1 to {len(available)} CPUs")
    return available


def limit_threads(threads: int | None) -> int:
    """Run this process (XLA's and torch's thread pools) on `threads` CPUs; None: all.

    Returns the number of CPUs in use. Raises ValueError for more CPUs than the process may use.
    """
    available = checked_cpus(threads)
    if threads is None:
        return len(available)
    os.sched_setaffinity(0, available[:threads])
    os.environ["PJRT_NPROC"] = str(threads)
    try:
        import torch
    except ImportError:
        return threads
    torch.set_num_threads(threads)
    return threads
