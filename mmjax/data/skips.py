"""What the training loop does with skipped samples: metrics, a log of record ids, and the stop rule.

The counts come from the data iterator (`batching.CountSkips`), summed over JAX
processes, so every process sees the same numbers and stops at the same step.
Each process appends "step record_id reason" lines to `WORKDIR/skipped-process<i>.txt`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmjax.data.records import SKIP_REASONS
from mmjax.files import write_text_atomically


class TooManySkippedError(ValueError):
    """More of the data was skipped than `config.data.max_skip_fraction` allows."""


class SkipMonitor:
    """Reads the totals of a `CountSkips` iterator; a no-op for iterators without them (synthetic data)."""

    def __init__(self, iterator, workdir: str, max_fraction: float, min_samples: int, fresh: bool = False):
        """`fresh`: a run starting from step 0, whose log replaces any left by a run without a checkpoint."""
        self.iterator, self.max_fraction, self.min_samples = iterator, max_fraction, min_samples
        self.active = hasattr(iterator, "skip_counts")
        self.log_path = os.path.join(workdir, f"skipped-process{jax.process_index()}.txt")
        if fresh and os.path.exists(self.log_path):
            os.remove(self.log_path)

    def flush(self, step: int) -> None:
        """Append the ids skipped since the last flush, labelled `step`. The loop flushes at every log step and
        before every checkpoint, so the log holds exactly the skips of the checkpointed batches."""
        if self.active and self.iterator.new_skipped:
            with open(self.log_path, "a") as f:
                f.writelines(f"{step} {line}\n" for line in self.iterator.new_skipped)
            self.iterator.new_skipped.clear()

    def resume_at(self, step: int) -> None:
        """Drop the log lines of steps after `step`, the checkpoint a run resumes from: the resumed run skips
        those samples again and logs them once more."""
        if not os.path.exists(self.log_path):
            return
        with open(self.log_path) as f:
            kept = [line for line in f if line.endswith("\n")  # a line a kill cut short is not kept
                    and (logged := line.split(" ", 1)[0]).isdigit() and int(logged) <= step]
        write_text_atomically(self.log_path, "".join(kept))

    def _totals(self) -> tuple[np.ndarray, np.ndarray]:
        """(skips by reason `[R]`, good examples by source `[K]`), summed over processes."""
        local = np.concatenate([self.iterator.skip_counts, self.iterator.examples_per_source])
        if jax.process_count() > 1:
            local = np.asarray(multihost_utils.process_allgather(local)).sum(0)
        return local[:len(SKIP_REASONS)], local[len(SKIP_REASONS):]

    def update(self, step: int) -> dict[str, float]:
        """Log the newly skipped ids, and return the metrics: `skipped_fraction`, `skipped/<reason>` (totals
        since the run began) and, for a mixture, `source_fraction/<k>`. Raises `TooManySkippedError`."""
        if not self.active:
            return {}
        self.flush(step)
        skipped, examples = self._totals()
        read = int(skipped.sum() + examples.sum())
        fraction = float(skipped.sum()) / max(read, 1)
        metrics = {"skipped_fraction": fraction, **{f"skipped/{reason}": float(n)
                                                    for reason, n in zip(SKIP_REASONS, skipped) if n}}
        if len(examples) > 1:
            metrics.update({f"source_fraction/{k}": float(n) / max(examples.sum(), 1) for k, n in enumerate(examples)})
        if read >= self.min_samples and fraction > self.max_fraction:
            reasons = ", ".join(f"{reason} {int(n)}" for reason, n in zip(SKIP_REASONS, skipped) if n)
            raise TooManySkippedError(
                f"stopped at step {step}: {int(skipped.sum())} of {read} samples read were skipped "
                f"({100 * fraction:.1f}% > config.data.max_skip_fraction={self.max_fraction}): {reasons}; "
                f"the record ids are in {self.log_path}")
        return metrics
