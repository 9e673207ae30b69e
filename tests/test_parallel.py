"""Parallelism by config: every data / fsdp / tensor mesh trains to the parameters of one plain
device, the state is really sharded the way the rules say, a checkpoint moves between meshes,
and the compiled step reports its bytes per device."""

import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mmjax.models as models
from mmjax.data import Tokenizer, train_dataset
from mmjax.parallel import DEFAULT_RULES, batch_sharding, check_tensor_split, make_mesh
from mmjax.parallel.memory import memory_per_device
from mmjax.train.checkpoint import Checkpoints
from mmjax.train.optim import learning_rate_schedule, make_optimizer
from mmjax.train.state import TrainState, abstract_train_state, create_train_state, state_shardings
from mmjax.train.step import jit_train_step, make_train_step

sys.path.insert(0, os.path.dirname(__file__))
from test_accumulation import MEAN, STD, assert_tree_close, reference_grads, setup  # noqa: E402
from test_train import _batches, _reference_params, _test_config  # noqa: E402

MESHES = {"data=8": (8, 1, 1), "fsdp=8": (1, 8, 1), "data=4×tensor=2": (4, 1, 2),
          "data=2×fsdp=2×tensor=2": (2, 2, 2)}


def _train(config, batches, shape):
    """`len(batches)` real train steps on a `data × fsdp × tensor` mesh: (state, compiled step)."""
    mesh = make_mesh(*shape, devices=jax.devices()[:math.prod(shape)])
    model = models.TwoTower(models.get_config(config.model))
    tx = make_optimizer(config.optim, config.total_steps)
    shardings = state_shardings(model, tx, mesh)
    step = jit_train_step(make_train_step(model, tx, learning_rate_schedule(config.optim, config.total_steps), mesh,
                                          loss=config.loss, multi_positive=True, image_mean=(0.5,) * 3,
                                          image_std=(0.5,) * 3), shardings, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        state = create_train_state(model, tx, jax.random.key(config.seed), shardings)
        on_mesh = [jax.device_put(batch, batch_sharding(mesh)) for batch in batches]
        compiled = step.lower(state, on_mesh[0]).compile()
        for batch in on_mesh:
            state, _ = compiled(state, batch)
    return state, compiled


def _local_shape(array):
    return array.sharding.shard_shape(array.shape)


@pytest.fixture(scope="module")
def clip_run():
    config = _test_config("clip")
    batches = _batches(config, 2)
    return config, batches, _reference_params(config, batches)


@pytest.mark.parametrize("name", list(MESHES))
def test_every_mesh_trains_to_the_single_device_parameters_with_the_state_sharded_as_the_rules_say(clip_run, name):
    config, batches, want = clip_run
    data, fsdp, tensor = MESHES[name]
    state, compiled = _train(config, batches, MESHES[name])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), state.params, want)

    # clip-test: width 32 (embed → fsdp), MLP 64 (mlp → tensor), 2 heads of 16 (heads → tensor), vocab 64.
    layer = state.params["image_encoder"]["encoder"]["layers_0"]
    adam = state.opt_state[1][0]
    mu, nu = (m["image_encoder"]["encoder"]["layers_0"] for m in (adam.mu, adam.nu))
    expected = {("mlp", "fc1", "kernel"): (32 // fsdp, 64 // tensor),
                ("mlp", "fc2", "kernel"): (64 // tensor, 32 // fsdp),
                ("attn", "query", "kernel"): (32 // fsdp, 2 // tensor, 16),
                ("attn", "out", "kernel"): (2 // tensor, 16, 32 // fsdp),
                ("mlp", "fc1", "bias"): (64 // tensor,), ("ln_1", "scale"): (32,)}
    for path, shape in expected.items():
        for tree in (layer, mu, nu):
            leaf = tree
            for key in path:
                leaf = leaf[key]
            assert _local_shape(leaf) == shape, (name, path)
    token_embed = state.params["text_encoder"]["token_embed"]["embedding"]
    assert _local_shape(token_embed) == (64 // tensor, 32 // fsdp)
    # Per-device bytes: the arguments hold 1/fsdp of the parameters and moments (tensor splits them further).
    memory, stats = memory_per_device(compiled), compiled.memory_analysis()
    state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    assert stats.temp_size_in_bytes > 0 and stats.alias_size_in_bytes > 0  # the old state's buffers are donated
    assert memory["memory_per_device_bytes"] == (stats.argument_size_in_bytes + stats.output_size_in_bytes
                                                 - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
    if fsdp * tensor == 1:
        assert memory["argument_bytes"] >= state_bytes
    else:
        assert memory["argument_bytes"] < state_bytes * 1.5 / (fsdp * tensor) + 32_768


@pytest.mark.parametrize("name", list(MESHES))
def test_every_mesh_computes_the_single_device_loss_and_gradient(name):
    """AdamW's first steps move each parameter by about lr · sign(gradient), whatever the gradient's size, so the
    parameters above cannot see a gradient scaled on one mesh (a replicated scalar's gradient summed over its
    devices). `optax.trace(decay=0)` keeps the step's gradient itself: compared with `jax.grad` of the naive loss
    on one device (test_accumulation.py), with the step's loss and gradient norm."""
    model, params, batch = setup("clip-test")
    params = jax.tree.map(np.array, params)  # copies: the step donates the state's buffers
    want_loss, want_grads = reference_grads("clip-test", "clip")
    mesh = make_mesh(*MESHES[name])
    tx = optax.trace(decay=0.0)
    shardings = state_shardings(model, tx, mesh)
    state = jax.device_put(TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params)), shardings)
    step = jit_train_step(make_train_step(model, tx, lambda step: 0.0, mesh, loss="clip", multi_positive=True,
                                          image_mean=MEAN, image_std=STD), shardings, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        state, metrics = step(state, jax.device_put(batch, batch_sharding(mesh)))
    assert_tree_close(jax.device_get(state.opt_state.trace), want_grads)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(want_grads), rtol=1e-5)


def test_state_shardings_are_the_same_inside_the_training_context():
    """Inside `jax.set_mesh` + `nn.logical_axis_rules` (where the training loop runs), unboxing the abstract
    state applied each leaf's sharding constraint and failed; the shardings only need the shapes."""
    config = models.get_config("clip-test")
    model, mesh = models.TwoTower(config), make_mesh(data=2, fsdp=2, tensor=2)
    tx = make_optimizer(_test_config("clip").optim, 10)
    outside = state_shardings(model, tx, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        inside = state_shardings(model, tx, mesh)
    assert jax.tree.leaves(inside) == jax.tree.leaves(outside)
    fc1 = outside.params["image_encoder"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]
    assert fc1.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_a_tensor_axis_that_does_not_divide_the_heads_is_refused():
    bench_tiny = models.get_config("bench-tiny")  # 3 heads, MLP 768 in both towers
    check_tensor_split(bench_tiny, make_mesh(data=8))  # no tensor axis: nothing to divide
    with pytest.raises(ValueError, match=r"^mesh tensor=2 does not divide the vision tower's 3 heads"):
        check_tensor_split(bench_tiny, make_mesh(data=4, tensor=2))
    check_tensor_split(models.get_config("clip-test"), make_mesh(data=4, tensor=2))  # 2 heads, MLP 64


def test_checkpoint_written_on_one_mesh_restores_onto_another(tmp_path):
    config = _test_config("clip")
    model = models.TwoTower(models.get_config(config.model))
    tx = make_optimizer(config.optim, config.total_steps)
    fsdp = make_mesh(1, 8, 1)
    state = create_train_state(model, tx, jax.random.key(0), state_shardings(model, tx, fsdp))
    tokenizer = Tokenizer.for_synthetic(models.get_config(config.model).text.context_length)
    iterator = iter(train_dataset(0, 16, models.get_config(config.model).vision.image_size, tokenizer))
    saver = Checkpoints(str(tmp_path))
    saver.save(1, state, iterator, config.to_dict())
    saver.wait()
    saver.close()

    target = state_shardings(model, tx, make_mesh(4, 1, 2))
    restored = Checkpoints(str(tmp_path), read_only=True).restore(abstract_train_state(target, model, tx))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
    for leaf, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (leaf.sharding, sharding)
    fc1 = lambda s: s.params["image_encoder"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]
    assert _local_shape(fc1(state)) == (4, 64) and _local_shape(fc1(restored)) == (32, 32)
