"""Starting grain worker processes (`mp_prefetch`) the same way for training and evaluation."""

from __future__ import annotations

import os
import signal
import threading
import time

import grain
from absl import flags

PARENT_CHECK_S = 1.0


def _leave_signals_to_the_main_process(worker_index: int, worker_count: int) -> None:
    """Ctrl-C and a SIGTERM sent to the whole process group (SLURM, a container stopping, a shutdown) reach the
    workers too. The main process decides what they mean (a training run saves its step on SIGTERM) and stops
    the workers, so they ignore both: a worker killed by SIGTERM crashed the run at its next batch, before it
    could save. A worker whose main process is gone (killed with SIGKILL, by the OOM killer) exits within
    `PARENT_CHECK_S`; it used to live on, holding its memory."""
    del worker_index, worker_count
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()

    def exit_when_orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=exit_when_orphaned, name="mmjax-parent-watch", daemon=True).start()


def start_workers(dataset: grain.IterDataset, num_workers: int) -> grain.IterDataset:
    """`dataset` produced by `num_workers` worker processes (itself when 0)."""
    if num_workers == 0:
        return dataset
    if not flags.FLAGS.is_parsed():  # grain reads absl flags when it starts workers
        flags.FLAGS.mark_as_parsed()
    return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                               worker_init_fn=_leave_signals_to_the_main_process)
