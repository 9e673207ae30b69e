"""Gradient accumulation: the gradient over micro-batches equals a plain full-batch gradient (naive
loss written here) on the clip-test and siglip-test models, alone and through the sharded train
step on 8 fake CPU devices; the compiled step's memory follows the micro-batch. Flamingo's summed loss
and FLAVA's objective against one pass too."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mmjax.models as models
from mmjax.data.transforms import normalize_images
from mmjax.losses import clip_loss, sigmoid_loss
from mmjax.parallel import DEFAULT_RULES, batch_sharding, make_mesh
from mmjax.train.accumulation import (make_summed_value_and_grad, make_value_and_grad, merge_micro_batches,
                                      split_micro_batches)
from mmjax.train.config import ConfigError, base_config, small_for_tests, validate
from mmjax.train.state import TrainState, state_shardings
from mmjax.train.step import jit_train_step, make_train_step

MEAN = STD = (0.5, 0.5, 0.5)
MODELS = pytest.mark.parametrize("model_name, loss", [("clip-test", "clip"), ("siglip-test", "sigmoid")])


def naive_loss(loss, image_emb, text_emb, aux, image_labels, text_labels):
    """The full [B, B] matrix, positives from the labels with -1 wildcards, soft CLIP targets."""
    positives = jnp.all((text_labels[None] < 0) | (text_labels[None] == image_labels[:, None]), axis=-1)
    similarities = image_emb @ text_emb.T
    if loss == "sigmoid":
        logits = jnp.exp(aux["logit_scale"]) * similarities + aux["logit_bias"]
        return -jnp.sum(jax.nn.log_sigmoid(jnp.where(positives, logits, -logits))) / len(image_emb)
    logits = jnp.minimum(jnp.exp(aux["logit_scale"]), 100.0) * similarities
    rows = positives / jnp.maximum(positives.sum(1, keepdims=True), 1)
    cols = positives / jnp.maximum(positives.sum(0, keepdims=True), 1)
    image_to_text = -jnp.sum(rows * jax.nn.log_softmax(logits, axis=1)) / len(image_emb)
    text_to_image = -jnp.sum(cols * jax.nn.log_softmax(logits, axis=0)) / len(text_emb)
    return (image_to_text + text_to_image) / 2


BATCH, ACCUM_STEPS = 24, 3  # 3 micro-batches of 8: one row per device on the 8-device meshes


@functools.cache
def setup(model_name, batch_size=BATCH):
    """The model, random parameters (N(0, 0.2); compiling the real initialiser takes seconds) and a random
    batch with attribute labels (40 % wildcards)."""
    model = models.TwoTower(models.get_config(model_name))
    config = model.config
    rng = np.random.default_rng(0)
    images, tokens = models.example_inputs(config)
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), image=images, text=tokens))["params"])
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.2, x.shape), x.dtype), shapes)
    params["logit_scale"] = jnp.float32(config.logit_scale_init)
    if config.logit_bias_init is not None:
        params["logit_bias"] = jnp.float32(config.logit_bias_init)
    size, length = config.vision.image_size, config.text.context_length
    image_labels = rng.integers(0, 3, size=(batch_size, 3)).astype(np.int32)
    batch = {"image": rng.integers(0, 256, size=(batch_size, size, size, 3)).astype(np.uint8),
             "text": rng.integers(1, config.text.vocab_size, size=(batch_size, length)).astype(np.int32),
             "image_labels": image_labels,
             "text_labels": np.where(rng.random(image_labels.shape) < 0.4, -1, image_labels).astype(np.int32)}
    return model, params, batch


def embed_fn_of(model):
    def embed_fn(params, batch):
        images = normalize_images(batch["image"], MEAN, STD)
        return model.apply({"params": params}, image=images, text=batch["text"])

    return embed_fn


@functools.cache
def reference_grads(model_name, loss):
    """Plain jax.grad of the naive loss over the whole batch in one pass."""
    model, params, batch = setup(model_name)

    def objective(params):
        image_emb, text_emb, aux = embed_fn_of(model)(params, batch)
        return naive_loss(loss, image_emb, text_emb, aux, batch["image_labels"], batch["text_labels"])

    return jax.jit(jax.value_and_grad(objective))(params)


def assert_tree_close(actual, expected, rtol=1e-5):
    """Every entry within `rtol` of itself plus `rtol` of the gradient's largest entry (some leaves, such as
    attention key biases, have a gradient that is exactly 0 and only rounding noise)."""
    scale = max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(expected))
    for path, expected_leaf in jax.tree_util.tree_leaves_with_path(expected):
        actual_leaf = np.asarray(_get(actual, path))
        np.testing.assert_allclose(actual_leaf, expected_leaf, rtol=rtol, atol=rtol * scale,
                                   err_msg=jax.tree_util.keystr(path))


def _get(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_micro_batches_take_strided_rows():
    rows = np.arange(12)[:, None] * 10 + np.arange(2)  # [12, 2], row i = (10 i, 10 i + 1)
    micro = split_micro_batches({"x": rows}, 3)["x"]
    np.testing.assert_array_equal(micro[:, :, 0], [[0, 30, 60, 90], [10, 40, 70, 100], [20, 50, 80, 110]])
    np.testing.assert_array_equal(merge_micro_batches(micro), rows)


@MODELS
def test_accumulated_gradient_equals_full_batch(model_name, loss):
    model, params, batch = setup(model_name)
    expected_value, expected_grads = reference_grads(model_name, loss)

    def loss_fn(image_emb, text_emb, aux, batch):
        labels = (batch["image_labels"], batch["text_labels"])
        if loss == "clip":
            return clip_loss(image_emb, text_emb, aux["logit_scale"], *labels)
        return sigmoid_loss(image_emb, text_emb, aux["logit_scale"], aux["logit_bias"], *labels)

    value_and_grad = make_value_and_grad(embed_fn_of(model), loss_fn, ACCUM_STEPS)
    (value, aux), grads = jax.jit(value_and_grad)(params, batch)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    assert_tree_close(grads, expected_grads)
    assert float(aux["logit_scale"]) == float(params["logit_scale"])


@pytest.mark.parametrize("model_name, loss, mesh_shape", [("clip-test", "clip", (4, 2, 1)),
                                                         ("siglip-test", "sigmoid", (8, 1, 1))],
                         ids=["clip-dp4xfsdp2", "siglip-dp8"])
def test_accumulated_train_step_on_mesh_equals_full_batch(model_name, loss, mesh_shape):
    # optax.trace(decay=0) keeps the last gradient as its state: the step's gradient, exactly.
    model, params, batch = setup(model_name)
    _, expected_grads = reference_grads(model_name, loss)
    mesh = make_mesh(*mesh_shape)
    tx = optax.trace(decay=0.0)
    shardings = state_shardings(model, tx, mesh)
    state = jax.device_put(TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params)), shardings)
    step = jit_train_step(make_train_step(model, tx, lambda step: 0.0, mesh, loss=loss, multi_positive=True,
                                          image_mean=MEAN, image_std=STD, accum_steps=ACCUM_STEPS),
                          shardings, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        state, _ = step(state, jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh)), batch))
    assert_tree_close(jax.device_get(state.opt_state.trace), expected_grads)


def test_memory_follows_the_micro_batch():
    # Batch 256: the towers' activations (kept for the backward pass) shrink with the micro-batch.
    model, params, batch = setup("clip-test", 256)

    def loss_fn(image_emb, text_emb, aux, batch):
        return clip_loss(image_emb, text_emb, aux["logit_scale"], batch["image_labels"], batch["text_labels"])

    def temp_bytes(accum_steps):
        value_and_grad = make_value_and_grad(embed_fn_of(model), loss_fn, accum_steps)
        return jax.jit(value_and_grad).lower(params, batch).compile().memory_analysis().temp_size_in_bytes

    full, accumulated = temp_bytes(1), temp_bytes(8)
    assert accumulated < full / 3, (full, accumulated)


def test_bad_accumulation_is_a_one_line_error():
    with pytest.raises(ValueError, match="accum_steps=0"):
        make_value_and_grad(lambda p, b: None, lambda *a: None, 0)
    model, params, batch = setup("clip-test")
    value_and_grad = make_value_and_grad(embed_fn_of(model), lambda *a: 0.0, 5)
    with pytest.raises(ValueError, match="batch size 24 must be a multiple of accum_steps=5"):
        value_and_grad(params, batch)
    config = small_for_tests(base_config("clip-tiny", "clip"), "clip-test")
    config.accum_steps = 3
    with pytest.raises(ConfigError, match=r"config.accum_steps=3 must divide config.batch_size=16"):
        validate(config)


def test_summed_accumulation_keeps_one_micro_batch_of_a_captioner_alive():
    """Flamingo's caption loss (`make_summed_value_and_grad`): the same value and gradient as one pass, computed in
    8 micro-batches whose activations are alive one at a time (batch 128)."""
    model = models.create_model("flamingo-test")
    config, rng = model.config, np.random.default_rng(0)
    images, tokens = models.example_inputs(config, 128)
    images = jnp.asarray(rng.normal(size=images.shape), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, config.media_token_id, size=tokens.shape), jnp.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images[:1], tokens[:1]))["params"]

    def term(params, batch):  # each token's log-likelihood, divided by the whole batch's token count
        logits = model.apply({"params": params}, batch["image"], batch["text"])
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits), batch["text"][..., None], axis=-1)
        return -picked.sum() / tokens.size

    def compiled(accum_steps):
        return jax.jit(make_summed_value_and_grad(term, accum_steps)).lower(
            params, {"image": images, "text": tokens}).compile()

    full, accumulated = compiled(1), compiled(8)
    (want, want_grads), (got, grads) = (step(params, {"image": images, "text": tokens}) for step in (full, accumulated))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert_tree_close(grads, want_grads)
    temp = [step.memory_analysis().temp_size_in_bytes for step in (full, accumulated)]
    assert temp[1] < temp[0] / 3, temp


def test_flava_accumulation_keeps_one_micro_batch_alive_and_the_objective():
    """FLAVA's objective in 8 micro-batches (`flava_accumulated_value_and_grad`) against `Flava.losses` in one
    pass at batch 128: the same value and gradient, and the temporaries of a micro-batch."""
    from mmjax.train.flava_accumulation import flava_accumulated_value_and_grad

    model = models.create_model("flava-test")
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (128, 16, 16, 3)).astype(np.uint8),
             "text": rng.integers(1, 60, (128, 8)).astype(np.int32)}
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), *models.example_inputs(model.config)))["params"]

    def one_pass(params, batch, step):
        def total(params):
            images = normalize_images(batch["image"], MEAN, STD)
            return model.apply({"params": params}, images, batch["text"], None,
                               jax.random.fold_in(jax.random.key(0), step), method="losses")["total"]

        return jax.value_and_grad(total)(params)

    full = jax.jit(one_pass).lower(params, batch, 3).compile()
    accumulated = jax.jit(flava_accumulated_value_and_grad(model, MEAN, STD, 0, (), 8)).lower(
        params, batch, 3).compile()
    want, want_grads = full(params, batch, 3)
    (got, _), grads = accumulated(params, batch, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert_tree_close(grads, want_grads)
    temp = [step.memory_analysis().temp_size_in_bytes for step in (full, accumulated)]
    assert temp[1] < temp[0] / 4, temp
