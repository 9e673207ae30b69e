"""A preemption notice (SIGTERM) saves a checkpoint of the step the run has reached, then stops the run.

Schedulers announce that they are about to take the machines away with SIGTERM and a grace period: TPU
VMs and spot GPUs being preempted, `scancel`, Kubernetes evicting a pod, `kill PID`. Without a handler,
a single process died at once and lost every step since its last checkpoint. Worse, once
`jax.distributed` is running, its preemption service takes SIGTERM over, so a multi-process run went on
as if nothing had happened until the machines were taken.

- **Several processes** (`jax.distributed` initialised): JAX's preemption service passes a notice that
  any process receives to all of them and picks a step every process reaches
  (`multihost_utils.reached_preemption_sync_point`), so they all save that same step.
- **One process**: a SIGTERM handler notes the notice, and the run stops after the step it is in.

The loop then saves that step (state, data position, logs), waits for the save, and raises `Preempted`;
`mmjax train` prints its one line and exits with status 143 (128 + SIGTERM), as a process killed by
the signal would. Running the same command again resumes from the saved step.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
    """The run saved step `step` into `checkpoint` and stopped because of a preemption notice."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"stopped by SIGTERM (a preemption notice) at step {step}, saved as {checkpoint}: run the "
                         f"same command to resume from it")
        self.step, self.checkpoint = step, checkpoint


class PreemptionNotice:
    """`with PreemptionNotice() as notice:` … `notice.reached(steps_taken)`, called by every process after each
    step with the steps this run has taken (1, 2, …): True when the run must save and stop. JAX's service counts
    from 0 in each process and picks the step after the largest it has seen, so a resumed run's global step
    numbers (2501, 2502, …) would never meet a notice that arrived before its first step. The service lives as
    long as the process and never forgets that largest step, so the numbers it is given go on from one run
    (`train()` call) to the next: a second run of 5 steps after one of 100 reports 101 … 105, not 1 … 5 (a notice
    would otherwise be due at step 101 of a run that ends at 5).

    With one process the handler is installed only where Python can install one (the main thread) and SIGTERM
    still has its default action; a handler of the caller's own is left in place, and `reached` is then False.
    """

    _sync_points_reported = 0  # in this process, to JAX's preemption service, by every run so far

    def __init__(self):
        self._received = threading.Event()
        self._installed = False
        self._distributed = False
        self._first_sync_point = 0

    def __enter__(self) -> PreemptionNotice:
        self._distributed = jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service
        self._first_sync_point = PreemptionNotice._sync_points_reported
        if (not self._distributed and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
            signal.signal(signal.SIGTERM, lambda *_: self._received.set())
            self._installed = True
        return self

    def reached(self, steps_taken: int) -> bool:
        if self._distributed:
            sync_point = self._first_sync_point + steps_taken
            PreemptionNotice._sync_points_reported = max(PreemptionNotice._sync_points_reported, sync_point)
            return multihost_utils.reached_preemption_sync_point(sync_point)
        return self._received.is_set()

    def __exit__(self, *exc_info) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._installed = False
