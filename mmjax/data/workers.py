"""Starting grain worker processes (`mp_prefetch`) the same way for training and evaluation.

Priority (`config.data.worker_priority`): "normal", or "idle" (Linux `SCHED_IDLE`; `nice 19` elsewhere). When
the step runs on the CPU, its XLA threads and the workers share the same cores; at the same priority a worker
preempts an XLA thread in the middle of an operation while the other threads wait for it at the operation's end.
At idle priority the workers use only the time the step leaves (its gaps between operations, the host's wait for
the step). On the 2-core CPU machine the two were within its noise of each other (`mmjax bench input`, README
"Input-bound or not"), and a busy process of normal priority elsewhere on the machine takes the cores before an
idle worker, which next to one that never sleeps gets well under 1 % of a core: normal is the default.

A worker tokenises on its own thread (`TOKENIZERS_PARALLELISM=false`): the worker processes are the pipeline's
parallelism, and the Hugging Face tokenizer's thread pool cost a third more CPU for the same batch (4.5 ms against
3.4 ms for 256 demo captions on the 2-core machine), time the train step waits for when it shares the cores.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

import grain
from absl import flags

PARENT_CHECK_S = 1.0
WORKER_PRIORITIES = ("normal", "idle")


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
    `PARENT_CHECK_S`; it used to live on, holding its memory. The tokenizer runs on the worker's own thread (see the
    module docstring). `idle_priority`: see the module docstring (the
    thread that watches the main process keeps the normal priority, so it is never starved)."""
    del worker_index, worker_count
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    parent = os.getppid()

    def exit_when_orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=exit_when_orphaned, name="mmjax-parent-watch", daemon=True).start()
    if idle_priority:
        _run_at_idle_priority()


def start_workers(dataset: grain.IterDataset, num_workers: int, priority: str = "normal") -> grain.IterDataset:
    """`dataset` produced by `num_workers` worker processes (itself when 0), at CPU `priority` (one of
    `WORKER_PRIORITIES`; see the module docstring)."""
    if priority not in WORKER_PRIORITIES:
        raise ValueError(f"worker priority {priority!r} is not one of {WORKER_PRIORITIES}")
    if num_workers == 0:
        return dataset
    if not flags.FLAGS.is_parsed():  # grain reads absl flags when it starts workers
        flags.FLAGS.mark_as_parsed()
    return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                               worker_init_fn=functools.partial(_start_worker, priority == "idle"))
