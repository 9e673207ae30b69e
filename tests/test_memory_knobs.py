"""Mixed precision and rematerialisation chosen by config: bf16 compute keeps float32 parameters,
optimizer state and loss and tracks the float32 run; remat policies shrink the step's temporaries."""

import os
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmjax.models as models
from mmjax.parallel import DEFAULT_RULES, batch_sharding, make_mesh
from mmjax.parallel.memory import memory_per_device
from mmjax.train.optim import learning_rate_schedule, make_optimizer
from mmjax.train.state import create_train_state, state_shardings
from mmjax.train.step import jit_train_step, make_train_step

sys.path.insert(0, os.path.dirname(__file__))
from test_train import _batches, _test_config  # noqa: E402


def _run(config, batches, **options):
    """Train on one device with model options; returns (state, losses, lowered step, compiled step)."""
    mesh = make_mesh(devices=jax.devices()[:1])
    model = models.TwoTower(models.get_config(config.model, **options))
    tx = make_optimizer(config.optim, config.total_steps)
    shardings = state_shardings(model, tx, mesh)
    step = jit_train_step(make_train_step(model, tx, learning_rate_schedule(config.optim, config.total_steps), mesh,
                                          loss="clip", multi_positive=True, image_mean=(0.5,) * 3,
                                          image_std=(0.5,) * 3), shardings, mesh)
    losses = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        state = create_train_state(model, tx, jax.random.key(0), shardings)
        lowered = step.lower(state, jax.device_put(batches[0], batch_sharding(mesh)))
        compiled = lowered.compile()
        for batch in batches:
            state, metrics = compiled(state, jax.device_put(batch, batch_sharding(mesh)))
            assert metrics["loss"].dtype == jnp.float32
            losses.append(float(metrics["loss"]))
    return state, np.array(losses), lowered, compiled


@pytest.fixture(scope="module")
def float32_run():
    config = _test_config("clip")
    config.optim.learning_rate = 1e-3
    batches = _batches(config, 4)
    return config, batches, _run(config, batches)


def test_bfloat16_compute_keeps_float32_state_and_tracks_the_float32_loss(float32_run):
    config, batches, (_, full_losses, _, _) = float32_run
    half, half_losses, lowered, _ = _run(config, batches, dtype="bfloat16")
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(half.params))
    assert all(leaf.dtype in (jnp.float32, jnp.int32) for leaf in jax.tree.leaves(half.opt_state))
    # On CPU the dense layers' matmuls, forward and backward, take bf16 operands and sum in float32; the rest are
    # attention's and the loss's. JAX's own dots would be bf16 × bf16 → bf16, which XLA:CPU multiplies in float32.
    dots = [line for line in lowered.as_text().splitlines() if "stablehlo.dot_general" in line]
    bf16_into_f32 = [line for line in dots if re.search(r"xbf16>, tensor<[^>]*xbf16>\) -> tensor<[^>]*xf32>", line)]
    assert len(bf16_into_f32) > 2 * len(dots) // 3, dots[:3]
    assert full_losses[-1] < full_losses[0]  # it learns
    np.testing.assert_allclose(half_losses, full_losses, rtol=0.02)


def _scanned_temp_bytes(policies: tuple[str, ...], dtype: str) -> dict[str, int]:
    config = _test_config("clip")
    batches = _batches(config, 1)
    return {policy: memory_per_device(_run(config, batches, scan_layers=True, remat_policy=policy,
                                           dtype=dtype)[3])["temp_bytes"] for policy in policies}


def test_remat_policies_chosen_by_config_shrink_the_step_temporaries():
    """Measured on scanned layers, whose saved residuals are explicit per layer: with unrolled layers XLA:CPU
    schedules the recomputation next to the forward pass, so its memory analysis shows no saving there."""
    temp = _scanned_temp_bytes(("none", "dots", "dots_no_batch", "full"), "float32")
    # Saving nothing keeps the least; saving the matmul outputs sits between; saving everything keeps the most.
    assert temp["full"] < temp["dots_no_batch"] <= temp["dots"] < temp["none"], temp
    assert temp["full"] < 0.5 * temp["none"], temp


def test_dots_policies_keep_the_bfloat16_dense_outputs():
    """On CPU a bf16 dense layer multiplies inside a custom VJP, whose matmul `checkpoint_dots` cannot see; the
    policies keep its output by name. Without the name, `dots_no_batch` keeps exactly what `full` keeps."""
    temp = _scanned_temp_bytes(("dots_no_batch", "full"), "bfloat16")
    assert temp["full"] < temp["dots_no_batch"], temp
