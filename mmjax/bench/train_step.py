"""Timing one jitted training step (AdamW, clipping, the model's loss: CLIP, or sigmoid for a model with a logit
bias) on synthetic data.

The step is the one `mmjax train` runs (`mmjax.train.step`), compiled ahead of time
for the given mesh, so its cost analysis (FLOPs) and memory analysis (bytes per
device) come from the very program that is timed. One exception: XLA's cost analysis
counts the body of a scan once, so with scanned layers the FLOPs are those of the same
step with unrolled layers (lowered, not compiled or run).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from mmjax.bench.flops import train_step_flops
from mmjax.bench.largest_batch import compiled_step_bytes, largest_batch
from mmjax.bench.profile import profile_steps
from mmjax.bench.timing import step_times
from mmjax.models import TwoTower, TwoTowerConfig, get_config
from mmjax.parallel import DEFAULT_RULES, batch_sharding, batch_size_multiple, check_tensor_split, make_mesh
from mmjax.parallel.memory import memory_per_device
from mmjax.train.config import base_config
from mmjax.train.optim import learning_rate_schedule, make_optimizer
from mmjax.train.state import abstract_train_state, create_train_state, state_shardings
from mmjax.train.step import jit_train_step, make_train_step

IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)


def synthetic_batch(config: TwoTowerConfig, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 images `[B, S, S, 3]` and token ids int32 `[B, L]` (end-of-text = the row's largest id)."""
    rng = np.random.default_rng(seed)
    size, length, vocab = config.vision.image_size, config.text.context_length, config.text.vocab_size
    tokens = rng.integers(1, vocab - 1, (batch, length), dtype=np.int32)
    tokens[np.arange(batch), rng.integers(1, length, batch)] = vocab - 1
    return {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8), "text": tokens}


def check_batch(batch: int, mesh) -> None:
    """A one-line ValueError unless `--batch` splits over the mesh's batch (data × fsdp) devices."""
    if batch % batch_size_multiple(mesh):
        raise ValueError(f"--batch={batch} must be a multiple of {batch_size_multiple(mesh)} "
                         f"(the data×fsdp devices of mesh {dict(mesh.shape)})")


def _checked_setup(model: str, batch: int, mesh: dict[str, int] | None, dtype: str, scan_layers: bool,
                   remat_policy: str, attention: str) -> tuple[Mesh, TwoTowerConfig, str]:
    """`(mesh, model config, loss)` of a benchmark, after the one-line checks of `batch` and the tensor split;
    the loss is the one the model trains with (sigmoid for a model with a logit bias, else CLIP)."""
    mesh = make_mesh(**(mesh or {"data": -1}))
    check_batch(batch, mesh)
    model_config = get_config(model, dtype=dtype, scan_layers=scan_layers, remat_policy=remat_policy,
                              attention=attention)
    check_tensor_split(model_config, mesh)
    return mesh, model_config, "sigmoid" if model_config.logit_bias_init is not None else "clip"


def _train_step(model: str, model_config: TwoTowerConfig, mesh, loss: str):
    """`(module, optimizer, state shardings, jitted step)` of `mmjax train`'s step for `model_config`."""
    flax_model = TwoTower(model_config)
    optim = base_config(model, "clip").optim
    total_steps = 10_000
    tx = make_optimizer(optim, total_steps)
    shardings = state_shardings(flax_model, tx, mesh)
    step_fn = jit_train_step(make_train_step(flax_model, tx, learning_rate_schedule(optim, total_steps), mesh,
                                             loss=loss, multi_positive=False, image_mean=IMAGE_MEAN,
                                             image_std=IMAGE_STD), shardings, mesh)
    return flax_model, tx, shardings, step_fn


def find_largest_batch(model: str, unit: int, budget: int, *, mesh: dict[str, int] | None = None,
                       dtype: str = "float32", scan_layers: bool = False, remat_policy: str = "none",
                       attention: str = "xla", log=lambda line: None) -> tuple[int, dict[int, int]]:
    """`largest_batch` of the step `bench_train_step` times: the largest multiple of `unit` whose compiled step
    needs at most `budget` bytes per device, and `{batch: bytes}` of each size compiled on the way."""
    mesh, model_config, loss = _checked_setup(model, unit, mesh, dtype, scan_layers, remat_policy, attention)
    _, tx, shardings, step_fn = _train_step(model, model_config, mesh, loss)
    return largest_batch(compiled_step_bytes(step_fn, model_config, tx, shardings, mesh), unit, budget, log)


def bench_train_step(model: str, batch: int, *, mesh: dict[str, int] | None = None, dtype: str = "float32",
                     scan_layers: bool = False, remat_policy: str = "none", attention: str = "xla", steps: int = 10,
                     warmup: int = 2, profile_dir: str | None = None) -> dict[str, Any]:
    """Compile and time the training step of `model` on `batch` synthetic pairs.

    Returns `step_time_s` (median of `steps` timed steps after `warmup`), `step_times_s`,
    `examples_per_s`, `compile_s`, `flops_per_step` (XLA's cost analysis of one device's
    program × devices), `analytic_flops_per_step` (`mmjax.bench.flops`) and their ratio,
    and the memory analysis (`memory_per_device_bytes`, …). With `profile_dir`, 3 more steps are
    traced there and `profile` breaks their time down by model part (`mmjax.bench.profile`).
    """
    mesh, model_config, loss = _checked_setup(model, batch, mesh, dtype, scan_layers, remat_policy, attention)
    flax_model, tx, shardings, step_fn = _train_step(model, model_config, mesh, loss)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        state = create_train_state(flax_model, tx, jax.random.key(0), shardings)
        inputs = jax.device_put(synthetic_batch(model_config, batch), batch_sharding(mesh))
        start = time.perf_counter()
        compiled = step_fn.lower(state, inputs).compile()
        compile_s = time.perf_counter() - start

        def run():
            nonlocal state
            state, metrics = compiled(state, inputs)
            jax.block_until_ready((state, metrics))

        times = step_times(run, warmup, steps)
        profile = {} if profile_dir is None else {"profile": profile_steps(compiled, run, 3, profile_dir)}
    step_time = statistics.median(times)
    program = compiled
    if scan_layers:  # the same step unrolled: XLA counts a scanned body once
        unrolled = dataclasses.replace(model_config,
                                       options=dataclasses.replace(model_config.options, scan_layers=False))
        unrolled_model, unrolled_tx, unrolled_shardings, unrolled_step = _train_step(model, unrolled, mesh, loss)
        with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
            program = unrolled_step.lower(abstract_train_state(unrolled_shardings, unrolled_model, unrolled_tx),
                                          inputs)
    cost = program.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # one dict per program in older JAX versions
    # a compiled program is one device's share of the step; the lowered (unrolled) one is still the whole step
    xla_flops = float(cost["flops"]) * (mesh.devices.size if program is compiled else 1)
    analytic = train_step_flops(model_config, batch)
    return {"model": model, "loss": loss, "batch": batch, "mesh": dict(mesh.shape), "dtype": dtype, "scan_layers": scan_layers,
            "remat_policy": remat_policy, "attention": attention, "devices": mesh.devices.size, "device_kind": mesh.devices.flat[0].device_kind,
            "step_time_s": step_time, "step_times_s": times, "examples_per_s": batch / step_time,
            "compile_s": compile_s, "flops_per_step": xla_flops, "analytic_flops_per_step": analytic["total"],
            "flops_ratio_xla_to_analytic": xla_flops / analytic["total"], "analytic_flops_by_part": analytic,
            **memory_per_device(compiled), **profile}
