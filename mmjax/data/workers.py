"""Starting grain worker processes (`mp_prefetch`) the same way for training and evaluation."""

from __future__ import annotations

import signal

import grain
from absl import flags


def _leave_interrupts_to_the_main_process(worker_index: int, worker_count: int) -> None:
    """Ctrl-C reaches the whole process group; the main process stops the workers, so they ignore it
    (instead of each printing a KeyboardInterrupt traceback)."""
    del worker_index, worker_count
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_workers(dataset: grain.IterDataset, num_workers: int) -> grain.IterDataset:
    """`dataset` produced by `num_workers` worker processes (itself when 0)."""
    if num_workers == 0:
        return dataset
    if not flags.FLAGS.is_parsed():  # grain reads absl flags when it starts workers
        flags.FLAGS.mark_as_parsed()
    return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                               worker_init_fn=_leave_interrupts_to_the_main_process)
