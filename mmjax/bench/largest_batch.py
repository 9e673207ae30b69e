"""The largest batch whose compiled training step fits in a device's memory.

Each candidate batch is lowered and compiled, never run: `memory_per_device` (XLA's
memory analysis: the state, the batch, outputs and temporaries one device holds) is
compared with the budget, so a search on a GPU never allocates the memory it measures
and never hits an out-of-memory error. The bytes grow about linearly with the batch
(the state is fixed, activations are per example); the search fits that line to the
first two sizes, tries its prediction, and then brackets and bisects, so the answer
holds for the compiled programs themselves even where XLA's memory plan is not linear.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import TwoTower, TwoTowerConfig
from mmjax.parallel import DEFAULT_RULES, batch_sharding
from mmjax.parallel.memory import memory_per_device
from mmjax.train.state import abstract_train_state


class NoBatchFitsError(ValueError):
    """Even the smallest batch's step needs more memory than the budget."""


def memory_budget(device: jax.Device, memory_gib: float | None) -> int:
    """Bytes one device may hold: `memory_gib` when given, else what the device's allocator may hand out
    (`memory_stats()["bytes_limit"]`; on a GPU, JAX's preallocated fraction of the memory)."""
    if memory_gib is not None:
        return int(memory_gib * 2**30)
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        raise ValueError(f"{device.platform} device {device.device_kind!r} reports no memory limit; "
                         f"give the budget per device with --memory_gib")
    return int(stats["bytes_limit"])


def compiled_step_bytes(step_fn, model_config: TwoTowerConfig, tx, shardings, mesh) -> Callable[[int], int]:
    """`batch → bytes per device` of `step_fn` (a jitted `mmjax.train.step` train step) compiled for that
    global batch of `model_config`'s images and tokens, from abstract (never allocated) inputs."""
    state = abstract_train_state(shardings, TwoTower(model_config), tx)
    size, length = model_config.vision.image_size, model_config.text.context_length

    def step_bytes(batch: int) -> int:
        inputs = {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8, sharding=batch_sharding(mesh)),
                  "text": jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=batch_sharding(mesh))}
        with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
            report = memory_per_device(step_fn.lower(state, inputs).compile())
        if not report:
            raise ValueError(f"the {mesh.devices.flat[0].platform} backend gives no memory analysis of a "
                             f"compiled program, so the largest batch cannot be found")
        return report["memory_per_device_bytes"]

    return step_bytes


def largest_batch(step_bytes: Callable[[int], int], unit: int, budget: int,
                  log: Callable[[str], None] = lambda line: None) -> tuple[int, dict[int, int]]:
    """The largest multiple `b` of `unit` with `step_bytes(b) ≤ budget`, given that `step_bytes` grows with
    the batch, and every size it tried (`{batch: bytes}`, including `b + unit`, which does not fit).

    Sizes are chosen by linear interpolation between the largest size known to fit and the smallest known
    not to (extrapolation, at most 32× up, before one is known); once a try does not halve that interval,
    the rest is bisection. Raises `NoBatchFitsError` when `unit` itself does not fit.
    """
    tried: dict[int, int] = {}

    def fits(units: int) -> bool:
        batch = units * unit
        if batch not in tried:
            tried[batch] = step_bytes(batch)
            log(f"batch {batch}: {format_bytes(tried[batch])} per device "
                f"({'fits' if tried[batch] <= budget else 'too large'} for {format_bytes(budget)})")
        return tried[batch] <= budget

    def units_to_budget(a: int, b: int) -> int:  # units above `a` where the line through `a` and `b` meets the budget
        slope = max((tried[b * unit] - tried[a * unit]) / (b - a), 1)
        return int((budget - tried[a * unit]) // slope)

    if not fits(1):
        raise NoBatchFitsError(f"batch {unit} already needs {format_bytes(tried[unit])} per device, more than "
                               f"the {format_bytes(budget)} budget")
    below, low, high = 1, 2, None  # `low` fits (once checked), `high` (once known) does not
    if not fits(low):
        return unit, tried
    while high is None:  # at most 32× the size that fits: a line through two small sizes can be far too flat
        guess = min(low + max(units_to_budget(low, below), 1), 32 * low)
        below, low, high = (low, guess, None) if fits(guess) else (below, low, guess)
    bisect = False
    while high - low > 1:
        guess = (low + high) // 2 if bisect else min(max(low + units_to_budget(low, high), low + 1), high - 1)
        width = high - low
        low, high = (guess, high) if fits(guess) else (low, guess)
        bisect = bisect or high - low > width // 2  # the memory is not near a line here: bisect from now on
    return low * unit, tried


def format_bytes(count: int) -> str:
    """`1.50 GiB`, or `12.3 MiB` below a GiB."""
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"
