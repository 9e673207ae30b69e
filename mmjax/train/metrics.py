"""Training metrics: JSON lines, TensorBoard events (tensorboardX) and a progress bar."""

from __future__ import annotations

import json
import os
import sys

import jax
import tqdm
from tensorboardX import SummaryWriter


def _drop_records_after(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(kept)


class MetricsWriter:
    """Writes `WORKDIR/metrics.jsonl` and `WORKDIR/tensorboard/`; only process 0 writes.

    On resume from `initial_step`, records of later steps (logged after the last
    checkpoint by the interrupted run) are dropped, so every step appears once.
    """

    def __init__(self, workdir: str, total_steps: int, initial_step: int):
        self.active = jax.process_index() == 0
        self.progress = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                                  disable=not (self.active and sys.stderr.isatty()))
        if self.active:
            path = os.path.join(workdir, "metrics.jsonl")
            _drop_records_after(path, initial_step)
            self.jsonl = open(path, "a")
            self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=initial_step + 1)

    def advance(self, steps: int) -> None:
        self.progress.update(steps)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"train/{name}", value, step)
        shown = {k: metrics[k] for k in ("loss", "learning_rate", "temperature") if k in metrics}
        if self.progress.disable:
            print(f"step {step:6d}  " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()), flush=True)
        else:
            self.progress.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})

    def close(self) -> None:
        self.progress.close()
        if self.active:
            self.jsonl.close()
            self.tensorboard.close()
