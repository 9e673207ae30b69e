"""Starting grain worker processes (`mp_prefetch`) the same way for training and evaluation.

When the step runs on the CPU, the workers run at idle priority (Linux `SCHED_IDLE`; `nice 19` elsewhere): the
step's XLA threads and the workers then share the same cores, and at the same priority a worker preempts an XLA
thread in the middle of an operation while the other threads wait for it at the operation's end. At idle
priority the workers use the time the step leaves (its gaps between operations, the host's wait for the step);
the step waits only when that time does not cover the pipeline's work. `mmjax bench input` measures the effect.
On a GPU or TPU host the step leaves the cores to the workers, and they run at normal priority, level with
everything else on a shared machine.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

import grain
import jax
from absl import flags

PARENT_CHECK_S = 1.0


def _run_at_idle_priority() -> None:
    """This worker thread and the threads it starts run only on cores no other process wants."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or a sandbox that refuses it: the lowest nice level
        os.nice(19)


def _start_worker(idle_priority: bool, worker_index: int, worker_count: int) -> None:
    """Ctrl-C and a SIGTERM sent to the whole process group (SLURM, a container stopping, a shutdown) reach the
    workers too. The main process decides what they mean (a training run saves its step on SIGTERM) and stops
    the workers, so they ignore both: a worker killed by SIGTERM crashed the run at its next batch, before it
    could save. A worker whose main process is gone (killed with SIGKILL, by the OOM killer) exits within
    `PARENT_CHECK_S`; it used to live on, holding its memory. `idle_priority`: see the module docstring."""
    del worker_index, worker_count
    if idle_priority:
        _run_at_idle_priority()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()

    def exit_when_orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=exit_when_orphaned, name="mmjax-parent-watch", daemon=True).start()


def start_workers(dataset: grain.IterDataset, num_workers: int,
                  idle_priority: bool | None = None) -> grain.IterDataset:
    """`dataset` produced by `num_workers` worker processes (itself when 0). `idle_priority`: run them at idle
    CPU priority (None: when JAX computes on the CPU; see the module docstring)."""
    if num_workers == 0:
        return dataset
    if not flags.FLAGS.is_parsed():  # grain reads absl flags when it starts workers
        flags.FLAGS.mark_as_parsed()
    if idle_priority is None:
        idle_priority = jax.default_backend() == "cpu"
    return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                               worker_init_fn=functools.partial(_start_worker, idle_priority))
