"""Is training input-bound? The demo's train step fed by the real pipeline against the same step fed from memory.

Both sides run the training loop's own mechanics (`next(data)` → asynchronously dispatched step, nothing
blocks until the end of a round): "memory" repeats one batch that is already on the devices, "pipeline" reads
ArrayRecord shards through `config_train_dataset` (grain workers: decode, random-resized crop, caption
sampling, tokenisation) and `DevicePrefetch` (`config.data.prefetch_to_device` batches ahead), as
`mmjax train` does. Rounds alternate between the two, so slow drift of a noisy machine hits both; each
round first runs untimed steps that drain what the pipeline prepared while the other side ran; the result is
the median over rounds of each side's seconds per step. Each pair of rounds also gives its own ratio, whose spread
shows the machine's noise. Where the time goes: the cores an in-memory step keeps busy (CPU seconds of this process
per second) and the workers' CPU seconds per step (Linux's /proc). When the step's XLA threads keep every core busy,
the workers' CPU time can hide only in the core time the step leaves idle,
`(cores − busy cores) × step`; beyond that, it is added to the step.

The data: `images` samples of the demo's synthetic world written as ArrayRecord shards of
PNGs rendered at `source_px` (default: the model's image size, what the demo data would be as files) or as JPEGs
above 64 px (`source_px=256`: img2dataset's default size); or (`synthetic_stream`) the demo's own stream, drawn in
the workers as `make demo` trains on it.
"""

from __future__ import annotations

import io
import itertools
import os
import statistics
import tempfile
import time
from typing import Iterator

import flax.linen as nn
import jax
import ml_collections
import jax.numpy as jnp
from PIL import Image

from mmjax import interrupts
from mmjax.bench.train_step import check_batch
from mmjax.data import shards, synthetic
from mmjax.data.pipeline import config_train_dataset
from mmjax.data.records import Sample
from mmjax.data.tokenizers import Tokenizer
from mmjax.models import TwoTower
from mmjax.parallel import DEFAULT_RULES, make_mesh
from mmjax.train.config import registered_model
from mmjax.train.optim import learning_rate_schedule, make_optimizer
from mmjax.train.prefetch import prefetch_to_mesh
from mmjax.train.state import create_train_state, state_shardings
from mmjax.train.step import jit_train_step, make_train_step


def write_synthetic_records(directory: str, count: int, source_px: int, shard_size: int = 1024) -> None:
    """`count` samples of the synthetic world as ArrayRecord shards: PNG, or JPEG (quality 90) above 64 px."""
    source, image_format = synthetic.SyntheticSource("train", 0, count), "PNG" if source_px <= 64 else "JPEG"

    def samples(start: int, end: int) -> Iterator[Sample]:
        for index in range(start, end):
            record, buffer = source[index], io.BytesIO()
            Image.fromarray(synthetic.render_image(record, source_px)).save(buffer, format=image_format)
            yield Sample(str(index), (record["caption"],), buffer.getvalue(), image_format.lower())

    markers = [shards.write_shard(directory, shards.shard_name(k), samples(start, min(start + shard_size, count)),
                                  "synthetic")
               for k, start in enumerate(range(0, count, shard_size))]
    shards.write_index(directory, markers)


def children_cpu_s() -> float | None:
    """CPU seconds (user + system) used so far by this process's living child processes (the grain workers), or
    None where Linux's /proc does not tell."""
    try:
        pids = {int(pid) for task in os.listdir("/proc/self/task")
                for pid in open(f"/proc/self/task/{task}/children", encoding="ascii").read().split()}
        ticks = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:  # after "(name)": field 3 onwards
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _round(step_fn, state, data: Iterator, steps: int) -> tuple[dict[str, float | None], object]:
    """Runs `steps` steps of the loop; per step: `seconds`, `wait` (in `next(data)`), `cpu` (this process's CPU
    seconds: XLA's threads, the loop, the device prefetch) and `workers_cpu` (the worker processes', None
    where unknown). Returns them and the state."""
    children_before, cpu_before = children_cpu_s(), time.process_time()
    wait, start = 0.0, time.perf_counter()
    for _ in range(steps):
        interrupts.check()  # a Ctrl-C Python dropped in a gc callback stops the benchmark here
        wait_start = time.perf_counter()
        batch = next(data)
        wait += time.perf_counter() - wait_start
        state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    seconds, cpu, children = time.perf_counter() - start, time.process_time() - cpu_before, children_cpu_s()
    workers_cpu = None if children is None or children_before is None else (children - children_before) / steps
    return {"seconds": seconds / steps, "wait": wait / steps, "cpu": cpu / steps, "workers_cpu": workers_cpu}, state


def _median(rounds: list[dict], key: str) -> float:
    return statistics.median(measured[key] for measured in rounds)


def run(config: ml_collections.ConfigDict, images: int, source_px: int | None, steps: int, rounds: int,
        synthetic_stream: bool = False) -> dict:
    """Time `rounds` alternating rounds of `steps` steps of `config`'s model fed from memory and from ArrayRecord
    shards (written to a temporary directory), or from the demo's synthetic stream (`synthetic_stream`); returns the
    medians and their ratio."""
    model_config = registered_model(config)
    source_px = None if synthetic_stream else source_px or model_config.vision.image_size
    mesh, model = make_mesh(**config.mesh), TwoTower(model_config)
    check_batch(config.batch_size, mesh)  # before the shards are written
    tx = make_optimizer(config.optim, config.total_steps)
    shardings = state_shardings(model, tx, mesh)
    step_fn = jit_train_step(
        make_train_step(model, tx, learning_rate_schedule(config.optim, config.total_steps), mesh,
                        loss=config.loss, multi_positive=False, image_mean=config.data.image_mean,
                        image_std=config.data.image_std, accum_steps=config.accum_steps),
        shardings, mesh)
    tokenizer = Tokenizer.for_synthetic(model_config.text.context_length)
    with tempfile.TemporaryDirectory() as directory:
        data_config = ml_collections.ConfigDict(config.data.to_dict())
        if synthetic_stream:
            data_config.name = "synthetic"
        else:
            write_synthetic_records(directory, images, source_px)
            data_config.name, data_config.sources = "arrayrecord", (directory,)
        pipeline = prefetch_to_mesh(config_train_dataset(data_config, config.batch_size,
                                                         model_config.vision.image_size, tokenizer),
                                    mesh, config.data.prefetch_to_device)
        try:
            with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
                state = create_train_state(model, tx, jax.random.key(config.seed), shardings)
                memory = itertools.repeat(jax.tree.map(jnp.copy, next(pipeline)))
                sides = {"memory": memory, "pipeline": pipeline}
                # While the other side runs, the device prefetch and each worker's buffer (one batch ready,
                # one more made) fill up: each round first drains them, untimed, so both sides are timed in
                # their steady state.
                drain = config.data.prefetch_to_device + 2 * max(config.data.num_workers, 1)
                measured = {name: [] for name in sides}
                for _ in range(rounds):
                    for name, data in sides.items():
                        _, state = _round(step_fn, state, data, drain)
                        result, state = _round(step_fn, state, data, steps)
                        measured[name].append(result)
        finally:
            pipeline.close()
    memory, piped = measured["memory"], measured["pipeline"]
    workers_cpu = None if None in (r["workers_cpu"] for r in piped) else _median(piped, "workers_cpu")
    cores = len(os.sched_getaffinity(0))
    return {"model": config.model, "batch": config.batch_size, "num_workers": config.data.num_workers,
            "worker_priority": config.data.worker_priority, "data": "synthetic" if synthetic_stream else "arrayrecord",
            "images": None if synthetic_stream else images, "source_px": source_px,
            "record_reads": None if synthetic_stream else config.data.record_reads, "steps_per_round": steps,
            "rounds": rounds, "memory_step_s": _median(memory, "seconds"), "pipeline_step_s": _median(piped, "seconds"),
            "ratio": _median(piped, "seconds") / _median(memory, "seconds"),
            "round_ratios": [p["seconds"] / m["seconds"] for m, p in zip(memory, piped)],
            "pipeline_data_wait_s": _median(piped, "wait"), "memory_rounds_s": [r["seconds"] for r in memory],
            "pipeline_rounds_s": [r["seconds"] for r in piped], "cores": cores,
            "memory_step_busy_cores": statistics.median(r["cpu"] / r["seconds"] for r in memory),
            "workers_cpu_per_step_s": workers_cpu}
