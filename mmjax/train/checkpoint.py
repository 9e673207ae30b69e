"""Orbax checkpoints of {train state, grain iterator state, config} in one step directory.

Layout: `WORKDIR/checkpoints/<step>/{state,data,config}`. Saves are async; the
data iterator state makes a resumed run see exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import glob
import logging as python_logging
import os
import re
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint._src.metadata import array_metadata_store  # the default handler's; no public name

from mmjax import interrupts
from mmjax.data.batching import StateMismatchError
from mmjax.train.state import TrainState


@contextlib.contextmanager
def _absl_errors_only():
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _in_chain(error: BaseException, kind: type) -> BaseException | None:
    """The first exception of type `kind` among `error` and the exceptions it was raised from or during."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def latest_saved_step(workdir: str) -> int | None:
    """The step of the newest finished checkpoint in `WORKDIR/checkpoints`, or None. Read without opening a
    checkpoint manager, whose start is a barrier of every process of a multi-process job; as the manager, only
    all-digit names are steps (`ocp.utils.checkpoint_steps` alone would read `backup_2000` as step 2000)."""
    paths = ocp.utils.checkpoint_steps_paths(os.path.join(os.path.abspath(workdir), "checkpoints"))
    return max((int(path.name) for path in paths if path.name.isdigit()), default=None)


def has_checkpoint(workdir: str) -> bool:
    """Whether `WORKDIR/checkpoints` holds a finished checkpoint (read without opening a manager)."""
    return latest_saved_step(workdir) is not None


def saved_process_count(workdir: str) -> int | None:
    """How many processes wrote the latest checkpoint's data-iterator states (`data/process_I-of-N.json`, one
    per process), or None when it holds none."""
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    for step in sorted(ocp.utils.checkpoint_steps(root), reverse=True):
        names = glob.glob(os.path.join(glob.escape(os.path.join(root, str(step), "data")), "process_*-of-*.json"))
        counts = {int(match.group(1)) for name in names if (match := re.search(r"-of-(\d+)\.json$", name))}
        if counts:
            return max(counts)
    return None


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored (damaged, or written for another model layout), or not written."""


class _OrbaxErrorReports(python_logging.Filter):
    """Drops the error reports Orbax's save threads log (a traceback per thread: 350 lines for a full disk); the
    failure itself reaches the main thread, where `Checkpoints` says it in one line."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        return record.levelno < python_logging.ERROR or "/orbax/checkpoint/" not in record.pathname.replace(os.sep, "/")


_one_replica_handler = None  # the handler `_write_arrays_from_one_replica_on_cpu` registered


def _write_arrays_from_one_replica_on_cpu() -> None:
    """Orbax (0.12) splits the writing of a replicated array among its replicas by slicing it on each device: on
    8 CPU devices that is one compile per device and array shape (88 for clip-test's state, 2.5-8 s of a 3-step
    run on two busy cores) to spread work over devices that share one host memory. Orbax writes from one replica
    when JAX_PLATFORMS names a GPU; this does the same on CPU, once per process, when the registered handler is
    Orbax's `ArrayHandler` (a handler of another type stays). It keeps the default's array metadata store, so the
    files are the same either way."""
    global _one_replica_handler
    current = ocp.type_handlers.get_type_handler(jax.Array)
    if jax.default_backend() != "cpu" or type(current) is not ocp.type_handlers.ArrayHandler:
        return
    if current is _one_replica_handler:
        return
    _one_replica_handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False,
                                                          array_metadata_store=array_metadata_store.Store())
    ocp.type_handlers.register_type_handler(jax.Array, _one_replica_handler, override=True)


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
            _write_arrays_from_one_replica_on_cpu()
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._saving: int | None = None  # the step of the save in flight
        self._quiet = None if read_only else _OrbaxErrorReports()
        if self._quiet is not None:
            python_logging.getLogger("absl").addFilter(self._quiet)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_iterator: Any, config: dict) -> None:
        """Starts an async save of step `step`; Ctrl-C takes effect once it has started. A save that failed (the
        one before, which Orbax finishes first) is a `CheckpointError` naming its step."""
        with interrupts.deferred():
            self.wait()  # Orbax would wait for it inside `save`, where its failure would be taken for this one's
            self._saving = step
            with self._saves_reported():
                self.manager.save(step, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=grain.checkpoint.CheckpointSave(data_iterator),
                    config=ocp.args.JsonSave(config)), force=True)

    @contextlib.contextmanager
    def _saves_reported(self):
        try:
            yield
        except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many types for a failed write
            failed, self._saving = self._saving, None
            written = [s for s in self.manager.all_steps() if s != failed]
            last = f"the last one written is {max(written)}" if written else "none was written"
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:400]
            raise CheckpointError(f"checkpoint {failed} could not be written to {self.directory} ({first_line}); "
                                  f"{last}") from error

    def restore(self, abstract_state: TrainState, data_iterator: Any | None = None,
                step: int | None = None) -> TrainState:
        """Restore the state (onto the shardings in `abstract_state`) and, when given, the iterator in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._restore(step, ocp.args.Composite(**items))["state"]

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
        """Only the parameters (onto the shardings in `abstract_params`) and the step:
        the optimizer state, twice the parameters' size for AdamW, is never read."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        item = {"params": abstract_params, "step": jax.ShapeDtypeStruct((), jnp.int32)}
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
        restored = self._restore(step, ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)))["state"]
        unread = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(restored["params"])
                  if isinstance(leaf, jax.ShapeDtypeStruct)]  # partial_restore leaves what the files lack as it was
        if unread:
            raise CheckpointError(f"{self.directory}/{step} has no parameter {unread[0]} of this model "
                                  f"({len(unread)} missing): it was written for another layout (scan_layers?)")
        return restored["params"], int(restored["step"])

    def _restore(self, step: int, args: ocp.args.Composite) -> dict:
        """`manager.restore`, with any failure as one line naming the step and the one to go back to."""
        try:
            return self.manager.restore(step, args=args)
        except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many types for damaged files
            mismatch = _in_chain(error, StateMismatchError)
            if mismatch is not None:  # a sound checkpoint of another pipeline: nothing to delete
                raise CheckpointError(f"{self.directory}/{step} cannot be restored: {mismatch}") from error
            earlier = [s for s in self.manager.all_steps() if s < step]
            remedy = (f"if it is damaged, delete it to resume from checkpoint {max(earlier)}" if earlier
                      else "it is the run's only checkpoint")
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0].split(" See full")[0][:300]
            raise CheckpointError(f"{self.directory}/{step} cannot be restored ({first_line}); {remedy}") from error

    def wait(self) -> None:
        with self._saves_reported():
            self.manager.wait_until_finished()
        self._saving = None

    def close(self) -> None:
        """Waits for the saves in flight (also after Ctrl-C: no save is left half-written), then closes."""
        try:
            self.wait()
            self.manager.close()
        finally:
            if self._quiet is not None:
                python_logging.getLogger("absl").removeFilter(self._quiet)
