"""Blocked losses (online log-sum-exp, custom VJPs that recompute tiles) against the naive float64
reference of test_losses.py: sizes not divisible by the block, extreme logits, wildcard labels, the
sharded forms with tiny tiles on 8 fake CPU devices, and compiled memory that does not grow as B×B."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from test_losses import (
    attribute_labels,
    make_mesh,
    reference_clip,
    reference_positives,
    reference_sigmoid,
    unit_rows,
)

from mmjax.losses import clip_loss, sharded_clip_loss, sharded_sigmoid_loss, sigmoid_loss

NUM_IMAGES, NUM_TEXTS, DIM = 37, 29, 16


def near_duplicates(rng, num_rows, dim, noise):
    """Unit rows in groups of 3 that differ by `noise`: softmax rows with near-equal maxima."""
    centres = unit_rows(rng, -(-num_rows // 3), dim).repeat(3, axis=0)[:num_rows]
    rows = centres + noise * rng.normal(size=centres.shape)
    return np.float32(rows / np.linalg.norm(rows, axis=-1, keepdims=True))


def make_case(name, rng=None):
    """(image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels), float32 / int32 / None."""
    rng = rng or np.random.default_rng(7)
    square = NUM_IMAGES
    if name == "diagonal":
        return unit_rows(rng, square, DIM), unit_rows(rng, square, DIM), np.log(1 / 0.07), -10.0, None, None
    if name == "wildcards":  # 37 images, 29 captions, captions omit ~40 % of the attributes
        image_labels, _ = attribute_labels(rng, NUM_IMAGES)
        _, text_labels = attribute_labels(rng, NUM_TEXTS)
        return (unit_rows(rng, NUM_IMAGES, DIM), unit_rows(rng, NUM_TEXTS, DIM), np.log(1 / 0.07), -10.0,
                image_labels, text_labels)
    if name == "clamp_duplicates":  # logit_scale at the clamp (scale 100, its gradient still flows), bias +10
        text_emb = near_duplicates(rng, square, DIM, 1e-3)
        image_emb = text_emb + 1e-3 * rng.normal(size=text_emb.shape)
        image_emb = np.float32(image_emb / np.linalg.norm(image_emb, axis=-1, keepdims=True))
        return image_emb, text_emb, np.log(100.0), 10.0, None, None
    if name == "below_clamp_wildcards":  # logits up to ~99.5, bias -10, wildcard labels
        text_emb = near_duplicates(rng, square, DIM, 1e-2)
        image_labels, text_labels = attribute_labels(rng, square)
        return text_emb[::-1].copy(), text_emb, np.log(99.5), -10.0, image_labels, text_labels
    if name == "huge_scale":  # CLIP clamps at 100; SigLIP logits ~ ±665 + 10
        return (near_duplicates(rng, square, DIM, 1e-2), near_duplicates(rng, square, DIM, 1e-2), 6.5, 10.0,
                None, None)
    raise ValueError(name)


CASES = ["diagonal", "wildcards", "clamp_duplicates", "below_clamp_wildcards", "huge_scale"]
BLOCK_SIZES = pytest.mark.parametrize("block_size", [4, 11, None], ids=["block4", "block11", "default"])


def positives_of(image_emb, image_labels, text_labels):
    if image_labels is None:
        return np.eye(len(image_emb), dtype=bool)
    return reference_positives(image_labels, text_labels)


def optional(x):
    return None if x is None else jnp.asarray(x)


def assert_close(actual, expected, rtol=2e-5, atol=2e-5):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


@BLOCK_SIZES
@pytest.mark.parametrize("name", CASES)
def test_blocked_clip_loss_matches_reference(name, block_size):
    image_emb, text_emb, logit_scale, _, image_labels, text_labels = make_case(name)
    logit_scale = np.float32(logit_scale)
    expected = reference_clip(image_emb, text_emb, logit_scale, positives_of(image_emb, image_labels, text_labels))

    def loss(image_emb, text_emb, logit_scale):
        return clip_loss(image_emb, text_emb, logit_scale, optional(image_labels), optional(text_labels),
                         block_size=block_size)

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(image_emb, text_emb, logit_scale)
    assert_close(value, expected[0])
    for grad, grad_expected in zip(grads[:2], expected[1:3]):
        assert_close(grad, grad_expected)
    # d/d logit_scale at the clamp with near-duplicates: 100 × a sum that cancels to ~1e-5 of its terms, whose
    # float32 logits (~100) each carry ~1e-5 of rounding
    assert_close(grads[2], expected[3], atol=1e-4 if name == "clamp_duplicates" else 2e-5)
    if name == "huge_scale":
        assert grads[2] == 0.0


@BLOCK_SIZES
@pytest.mark.parametrize("name", CASES)
def test_blocked_sigmoid_loss_matches_reference(name, block_size):
    image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels = make_case(name)
    logit_scale, logit_bias = np.float32(logit_scale), np.float32(logit_bias)
    positives = positives_of(image_emb, image_labels, text_labels)
    expected = reference_sigmoid(image_emb, text_emb, logit_scale, logit_bias, positives)

    def loss(image_emb, text_emb, logit_scale, logit_bias):
        return sigmoid_loss(image_emb, text_emb, logit_scale, logit_bias, optional(image_labels),
                            optional(text_labels), block_size=block_size)

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(
        image_emb, text_emb, logit_scale, logit_bias)
    # Logits reach ~675 in "huge_scale": float32 rounding of one logit is ~4e-5 there.
    tolerance = 1e-4 if name == "huge_scale" else 2e-5
    assert_close(value, expected[0], rtol=tolerance)
    for grad, grad_expected in zip(grads, expected[1:]):
        assert_close(grad, grad_expected, rtol=tolerance)


def test_block_size_must_be_a_positive_integer_of_any_integer_type():
    emb = jnp.eye(2, dtype=jnp.float32)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"block_size={bad}"):
            clip_loss(emb, emb, jnp.float32(1.0), block_size=bad)
    assert clip_loss(emb, emb, jnp.float32(1.0), block_size=np.int64(1)) == clip_loss(emb, emb, jnp.float32(1.0))


# ---------------------------------------------------------------------------------------
# Sharded forms with tiles smaller than a device's rows: B = 40, b = 5 (8 batch devices) or 10 (4), tile 3.

BATCH_AXES = ("data", "fsdp")
SHARDED_BATCH = 40
MESHES = pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (4, 2, 1), (2, 2, 2)],
                                 ids=["dp8", "dp4xfsdp2", "dp2xfsdp2xtp2"])
SHARDED_CASES = pytest.mark.parametrize("name", ["wildcards", "clamp_duplicates"])


def sharded_case(name, mesh):
    """Global float32 / int32 arrays and the same arrays on the mesh, batch sharded over data x fsdp."""
    rng = np.random.default_rng(11)
    if name == "wildcards":
        image_labels, text_labels = attribute_labels(rng, SHARDED_BATCH)
        arrays = (unit_rows(rng, SHARDED_BATCH, DIM), unit_rows(rng, SHARDED_BATCH, DIM), image_labels, text_labels)
        scale, bias = np.log(1 / 0.07), -10.0
    else:
        text_emb = near_duplicates(rng, SHARDED_BATCH, DIM, 1e-3)
        arrays = (text_emb[::-1].copy(), text_emb, None, None)
        scale, bias = np.log(100.0), 10.0
    sharding = NamedSharding(mesh, P(BATCH_AXES))
    on_mesh = [None if x is None else jax.device_put(x, sharding) for x in arrays]
    return arrays, on_mesh, np.float32(scale), np.float32(bias)


@MESHES
@SHARDED_CASES
def test_sharded_blocked_clip_loss_matches_reference(mesh_shape, name):
    mesh = make_mesh(mesh_shape)
    (image_emb, text_emb, image_labels, text_labels), on_mesh, logit_scale, _ = sharded_case(name, mesh)
    expected = reference_clip(image_emb, text_emb, logit_scale, positives_of(image_emb, image_labels, text_labels))

    def loss(image_emb, text_emb, logit_scale, image_labels, text_labels):
        return sharded_clip_loss(image_emb, text_emb, logit_scale, image_labels, text_labels, mesh=mesh,
                                 block_size=3)

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(
        on_mesh[0], on_mesh[1], logit_scale, on_mesh[2], on_mesh[3])
    assert_close(value, expected[0])
    for grad, grad_expected in zip(grads, expected[1:]):
        assert_close(grad, grad_expected)


@MESHES
@SHARDED_CASES
def test_sharded_blocked_sigmoid_loss_matches_reference(mesh_shape, name):
    mesh = make_mesh(mesh_shape)
    (image_emb, text_emb, image_labels, text_labels), on_mesh, logit_scale, logit_bias = sharded_case(name, mesh)
    positives = positives_of(image_emb, image_labels, text_labels)
    expected = reference_sigmoid(image_emb, text_emb, logit_scale, logit_bias, positives)

    def loss(image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels):
        return sharded_sigmoid_loss(image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels,
                                    mesh=mesh, block_size=3)

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(
        on_mesh[0], on_mesh[1], logit_scale, logit_bias, on_mesh[2], on_mesh[3])
    assert_close(value, expected[0])
    for grad, grad_expected in zip(grads, expected[1:]):
        assert_close(grad, grad_expected)


# ---------------------------------------------------------------------------------------
# Memory: the compiled programs hold tiles, never the B x B logits (nor the ring's n text blocks).


@pytest.mark.parametrize("loss_name", ["clip", "sigmoid"])
def test_compiled_memory_does_not_grow_as_batch_squared(loss_name):
    batch, dim, block = 1024, 16, 64
    emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)

    def loss(image_emb, text_emb, logit_scale):
        if loss_name == "clip":
            return clip_loss(image_emb, text_emb, logit_scale, block_size=block)
        return sigmoid_loss(image_emb, text_emb, logit_scale, jnp.float32(-10.0), block_size=block)

    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(emb, emb, scalar).compile()
    one_logit_matrix = batch * batch * 4
    assert compiled.memory_analysis().temp_size_in_bytes < one_logit_matrix / 8
    assert f"f32[{batch},{batch}]" not in compiled.as_text()


def test_ring_backward_does_not_keep_the_forward_text_blocks():
    # Autodiff of the forward ring scan would stack what each of its 7 steps received or computed: f32[7,…]
    # (e.g. the text blocks as f32[7,1,5,16], the logits as f32[7,1,1,5,5]).
    mesh = make_mesh((8, 1, 1))
    sharding = NamedSharding(mesh, P(BATCH_AXES))
    emb = jax.ShapeDtypeStruct((SHARDED_BATCH, DIM), jnp.float32, sharding=sharding)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)

    def loss(image_emb, text_emb, logit_scale):
        return sharded_sigmoid_loss(image_emb, text_emb, logit_scale, jnp.float32(-10.0), mesh=mesh)

    program = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(emb, emb, scalar).compile().as_text()
    assert "f32[5,16]" in program
    assert re.search(r"f32\[7,", program) is None


@pytest.mark.parametrize("loss", [sharded_clip_loss, sharded_sigmoid_loss])
def test_a_batch_axis_the_mesh_lacks_is_one_line_naming_it(loss):
    mesh = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
    emb = jnp.eye(8, dtype=jnp.float32)
    scalars = (jnp.float32(1.0),) if loss is sharded_clip_loss else (jnp.float32(1.0), jnp.float32(0.0))
    with pytest.raises(ValueError, match=r"^batch_axes \('data', 'fsdp'\) name 'fsdp', which is not an axis of the "
                                         r"mesh \{'data': 8\}$"):
        loss(emb, emb, *scalars, mesh=mesh)
