"""Training metrics: JSON lines, TensorBoard events (tensorboardX) and a progress bar."""

from __future__ import annotations

import json
import os
import sys

import jax
import tqdm

from mmjax.eval.report import finite_or_none
from mmjax.files import naming_the_file, write_text_atomically


def _summary_writer(directory: str, **options):
    """A tensorboardX `SummaryWriter`. tensorboardX (2.6) imports torch wherever it is installed, only to accept
    torch tensors, which mmjax never passes it: 5 s of every run's start here. So torch, when this process has
    not imported it yet, is hidden while tensorboardX first loads; its other torch imports are inside the
    functions for torch tensors and graphs."""
    hide_torch = "torch" not in sys.modules and "tensorboardX" not in sys.modules  # once: other threads run later
    if hide_torch:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX expects
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide_torch:
            del sys.modules["torch"]
    return SummaryWriter(directory, **options)


# The evaluation metrics printed during training; every metric goes to eval_metrics.jsonl and TensorBoard.
HEADLINE_METRICS = ("acc1", "image_retrieval_recall@1", "text_retrieval_recall@1", "shape_accuracy")  # in %
HEADLINE_SCORES = ("bleu_4", "cider")  # a captioner's, as they are


def _drop_records_after(path: str, step: int) -> None:
    """Keep the records of steps ≤ `step`. A last line cut short (the run was killed while writing it) is dropped;
    a bad line before it is a one-line error naming it."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = list(f)
    last = max((number for number, line in enumerate(lines, start=1) if line.strip()), default=0)
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            if number == last:
                break
            raise ValueError(f"{path}, line {number}: not a JSON record ({error})") from None
        if record["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    write_text_atomically(path, "".join(kept))


# Shown on the progress bar (a terminal); the printed lines (no terminal) and metrics.jsonl hold every metric.
PROGRESS_METRICS = ("loss", "learning_rate", "grad_norm", "scale", "logit_bias", "examples_per_s", "step_time_s",
                    "skipped_fraction")


def tensorboard_tag(name: str) -> str:
    """A metric name as a TensorBoard tag: `@`, which tags cannot hold (tensorboardX would make it `_`), as `_at_`
    (`synthetic/image_retrieval_recall@1` → `synthetic/image_retrieval_recall_at_1`)."""
    return name.replace("@", "_at_")


class MetricsWriter:
    """Writes `WORKDIR/metrics.jsonl` (training), `WORKDIR/eval_metrics.jsonl` (evaluations during
    training, made at the first one; NaN, e.g. `acc5` with fewer than 5 classes, as null) and `WORKDIR/tensorboard/`
    (`train/<name>`, `eval/<benchmark>/<metric>` (`tensorboard_tag`) but for the constant `chance_*` and `num_*`,
    `eval/eval_s`);
    only process 0 writes.

    On resume from `initial_step`, records of later steps (logged after the last
    checkpoint by the interrupted run) are dropped, so every step appears once.
    """

    def __init__(self, workdir: str, total_steps: int, initial_step: int):
        self.active, self.closed = jax.process_index() == 0, False
        self.progress = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                                  disable=not (self.active and sys.stderr.isatty()))
        self.eval_path, self.eval_jsonl = os.path.join(workdir, "eval_metrics.jsonl"), None  # opened at the first eval
        if self.active:
            self.jsonl = _open_records(os.path.join(workdir, "metrics.jsonl"), initial_step)
            _drop_records_after(self.eval_path, initial_step)
            self.tensorboard_dir = os.path.join(workdir, "tensorboard")
            self.tensorboard = _summary_writer(self.tensorboard_dir, purge_step=initial_step + 1)

    def advance(self, steps: int) -> None:
        self.progress.update(steps)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        with naming_the_file(self.jsonl.name):
            self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self.jsonl.flush()
        with naming_the_file(self.tensorboard_dir):
            for name, value in metrics.items():
                self.tensorboard.add_scalar(f"train/{name}", value, step)
        shown = {k: metrics[k] for k in PROGRESS_METRICS if k in metrics}
        if self.progress.disable:
            print(f"step {step:6d}  " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()), flush=True)
        else:
            self.progress.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})

    def write_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Records `metrics` (`"<benchmark>/<metric>"` names) of the evaluation after step `step`."""
        if not self.active:
            return
        if self.eval_jsonl is None:
            self.eval_jsonl = open(self.eval_path, "a")
        with naming_the_file(self.eval_path):
            self.eval_jsonl.write(json.dumps(finite_or_none({"step": step, **metrics}), allow_nan=False) + "\n")
            self.eval_jsonl.flush()
        with naming_the_file(self.tensorboard_dir):
            for name, value in metrics.items():
                if not name.rpartition("/")[2].startswith(("chance_", "num_")):  # constants stay in the JSON lines
                    self.tensorboard.add_scalar(f"eval/{tensorboard_tag(name)}", value, step)
        shown = [f"{name} {100 * value:.2f} %" if name.rpartition("/")[2] in HEADLINE_METRICS else f"{name} {value:.4f}"
                 for name, value in metrics.items() if name.rpartition("/")[2] in HEADLINE_METRICS + HEADLINE_SCORES]
        self.progress.write(f"eval {step:6d}  " + "  ".join(shown + [f"eval_s {metrics['eval_s']:.3g}"]))
        sys.stdout.flush()

    def flush(self, step: int) -> None:
        """Puts every record written up to `step` on disk, before a checkpoint of `step` exists. tensorboardX writes
        events from a queue on a background thread, which only closing waits for (its `flush` leaves the queue,
        and it flushes the file every 2 minutes): its event file is closed, and later records go to a new one
        (suffix `.<step>`, zero-padded; TensorBoard reads every file in the directory, in name order)."""
        if self.active:
            with naming_the_file(self.tensorboard_dir):
                self.tensorboard.close()
            self.tensorboard = _summary_writer(self.tensorboard_dir, filename_suffix=f".{step:012d}")

    def close(self) -> None:
        """Ends the progress bar and closes the files; a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        self.progress.close()
        if self.active:
            with naming_the_file(self.jsonl.name):
                self.jsonl.close()
            if self.eval_jsonl is not None:
                with naming_the_file(self.eval_path):
                    self.eval_jsonl.close()
            with naming_the_file(self.tensorboard_dir):
                self.tensorboard.close()


def _open_records(path: str, initial_step: int):
    """`path` opened for appending, without the records of steps after `initial_step`."""
    _drop_records_after(path, initial_step)
    return open(path, "a")
