"""Orbax checkpoints of {train state, grain iterator state, config} in one step directory.

Layout: `WORKDIR/checkpoints/<step>/{state,data,config}`. Saves are async; the
data iterator state makes a resumed run see exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from mmjax.train.state import TrainState


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C (SIGINT) during the block raises `KeyboardInterrupt` after it, not inside it.

    Orbax starts an async save in several steps; interrupted between them, the save's threads fail at
    exit with tracebacks. Only where Python's own handler is installed (the main thread, SIGINT not
    ignored) is anything changed.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _absl_errors_only():
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def has_checkpoint(workdir: str) -> bool:
    """Whether `WORKDIR/checkpoints` holds a finished checkpoint (read without opening a manager)."""
    return bool(ocp.utils.checkpoint_steps(os.path.join(os.path.abspath(workdir), "checkpoints")))


class Checkpoints:
    """A `CheckpointManager` for one workdir. `keep` newest steps are kept."""

    def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        if read_only:  # the options Orbax would otherwise reset, warning about each
            options = ocp.CheckpointManagerOptions(max_to_keep=None, save_interval_steps=0, create=False,
                                                   read_only=True)
            with _absl_errors_only():  # Orbax also warns that a read-only directory "is read only"
                self.manager = ocp.CheckpointManager(self.directory, options=options)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_iterator: Any, config: dict) -> None:
        """Starts an async save of step `step`; Ctrl-C takes effect once it has started."""
        with interrupts_deferred():
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                config=ocp.args.JsonSave(config)), force=True)

    def restore(self, abstract_state: TrainState, data_iterator: Any | None = None,
                step: int | None = None) -> TrainState:
        """Restore the state (onto the shardings in `abstract_state`) and, when given, the iterator in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
        """Only the parameters (onto the shardings in `abstract_params`) and the step:
        the optimizer state, twice the parameters' size for AdamW, is never read."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        item = {"params": abstract_params, "step": jax.ShapeDtypeStruct((), jnp.int32)}
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)))["state"]
        return restored["params"], int(restored["step"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the saves in flight (also after Ctrl-C: no save is left half-written), then closes."""
        self.manager.wait_until_finished()
        self.manager.close()
