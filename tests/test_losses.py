"""Contrastive losses against a naive float64 NumPy reference with hand-derived gradients,
closed forms, and sharded == single-device on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax.losses import (
    clip_scale,
    clip_loss,
    pair_positives,
    sharded_clip_loss,
    sharded_sigmoid_loss,
    sigmoid_loss,
)

# ---------------------------------------------------------------------------------------
# Naive float64 reference: explicit loops for the positives, logaddexp for every log-sum-exp,
# gradients from d(loss)/d(logits) and the chain rule (not autodiff).


def reference_positives(image_labels, text_labels):
    positives = np.zeros((len(image_labels), len(text_labels)), dtype=bool)
    for i, image_attributes in enumerate(image_labels):
        for j, caption_attributes in enumerate(text_labels):
            positives[i, j] = all(
                named < 0 or named == actual
                for named, actual in zip(caption_attributes, image_attributes)
            )
    return positives


def reference_clip(image_emb, text_emb, logit_scale, positives):
    """Returns (loss, d/d image_emb, d/d text_emb, d/d logit_scale), all float64.

    The scale is `exp(logit_scale)` with the exponent clamped at log 100 as float32 holds it (where training
    clamps the parameter): at the clamp d scale / d logit_scale is the scale, above it 0, as in OpenCLIP."""
    image_emb, text_emb = np.float64(image_emb), np.float64(text_emb)
    num_images, num_texts = positives.shape
    limit = np.float64(np.float32(np.log(100.0)))
    clamped = np.float64(logit_scale) > limit
    scale = np.exp(limit if clamped else np.float64(logit_scale))
    similarities = image_emb @ text_emb.T
    logits = scale * similarities

    row_lse = np.logaddexp.reduce(logits, axis=1, keepdims=True)
    col_lse = np.logaddexp.reduce(logits, axis=0, keepdims=True)
    row_targets = positives / np.maximum(positives.sum(axis=1, keepdims=True), 1)
    col_targets = positives / np.maximum(positives.sum(axis=0, keepdims=True), 1)
    image_to_text = -np.sum(row_targets * (logits - row_lse)) / num_images
    text_to_image = -np.sum(col_targets * (logits - col_lse)) / num_texts
    loss = (image_to_text + text_to_image) / 2

    # d CE(row r) / d logits[r, :] = softmax * sum(targets[r]) - targets[r]; same per column.
    row_softmax, col_softmax = np.exp(logits - row_lse), np.exp(logits - col_lse)
    d_logits = (row_softmax * row_targets.sum(1, keepdims=True) - row_targets) / (2 * num_images)
    d_logits += (col_softmax * col_targets.sum(0, keepdims=True) - col_targets) / (2 * num_texts)
    d_image = scale * d_logits @ text_emb
    d_text = scale * d_logits.T @ image_emb
    d_scale = np.sum(d_logits * similarities) * (0.0 if clamped else scale)
    return loss, d_image, d_text, d_scale


def reference_sigmoid(image_emb, text_emb, logit_scale, logit_bias, positives):
    """Returns (loss, d/d image_emb, d/d text_emb, d/d logit_scale, d/d logit_bias)."""
    image_emb, text_emb = np.float64(image_emb), np.float64(text_emb)
    num_images = positives.shape[0]
    scale = np.exp(np.float64(logit_scale))
    similarities = image_emb @ text_emb.T
    logits = scale * similarities + np.float64(logit_bias)
    signs = np.where(positives, 1.0, -1.0)
    loss = np.sum(np.logaddexp(0.0, -signs * logits)) / num_images  # -log sigmoid(z l)

    # d/dl [-log sigmoid(z l)] = -z sigmoid(-z l),   sigmoid(x) = exp(-logaddexp(0, -x)).
    d_logits = -signs * np.exp(-np.logaddexp(0.0, signs * logits)) / num_images
    d_image = scale * d_logits @ text_emb
    d_text = scale * d_logits.T @ image_emb
    d_scale = scale * np.sum(d_logits * similarities)
    d_bias = np.sum(d_logits)
    return loss, d_image, d_text, d_scale, d_bias


# ---------------------------------------------------------------------------------------
# Data.

NUM_ATTRIBUTES = 3


def unit_rows(rng, batch_size, dim):
    x = rng.normal(size=(batch_size, dim))
    return np.float32(x / np.linalg.norm(x, axis=-1, keepdims=True))


def attribute_labels(rng, batch_size, wildcard_rate=0.4):
    """Images with 3 attributes (3 values each); each caption omits some of its image's."""
    image_labels = rng.integers(0, 3, size=(batch_size, NUM_ATTRIBUTES)).astype(np.int32)
    omitted = rng.random((batch_size, NUM_ATTRIBUTES)) < wildcard_rate
    return image_labels, np.where(omitted, -1, image_labels).astype(np.int32)


def make_case(name, batch_size=8, dim=16):
    """(image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels)."""
    rng = np.random.default_rng(0)
    image_emb = unit_rows(rng, batch_size, dim)
    text_emb = unit_rows(rng, batch_size, dim)
    image_labels, text_labels = attribute_labels(rng, batch_size)
    if name == "diagonal":
        return image_emb, text_emb, np.log(1 / 0.07), -10.0, None, None
    if name == "labels":
        return image_emb, text_emb, np.log(1 / 0.07), -10.0, image_labels, text_labels
    if name == "no_positive_row":  # image 0 has an attribute value that no caption allows
        image_labels[0, 0] = 7
        text_labels[:, 0] = np.where(text_labels[:, 0] < 0, 0, text_labels[:, 0])
        return image_emb, text_emb, np.log(1 / 0.07), -10.0, image_labels, text_labels
    if name == "near_clamp":  # aligned pairs, logits up to ~99: exp(logit) overflows float32
        # Just below log 100, so d/d logit_scale is not at the clamp's kink.
        image_emb = text_emb + 0.3 * unit_rows(rng, batch_size, dim)
        image_emb /= np.linalg.norm(image_emb, axis=-1, keepdims=True)
        return image_emb, text_emb, np.log(99.5), -10.0, image_labels, text_labels
    if name == "above_clamp":  # CLIP: clamped, d/d logit_scale = 0.  SigLIP: exp(6.5) ~ 665
        return image_emb, text_emb, 6.5, -10.0, image_labels, text_labels
    raise ValueError(name)


CASES = ["diagonal", "labels", "no_positive_row", "near_clamp", "above_clamp"]


def positives_of(image_emb, image_labels, text_labels):
    if image_labels is None:
        return np.eye(len(image_emb), dtype=bool)
    return reference_positives(image_labels, text_labels)


def as_jax(*arrays):
    return [None if a is None else jnp.asarray(a) for a in arrays]


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------
# Single device against the reference.


def test_pair_positives_wildcards():
    image_labels = np.array([[0, 1], [0, 2], [1, 1]], np.int32)
    text_labels = np.array([[0, 1], [0, -1], [-1, 1], [-1, -1], [2, -1]], np.int32)
    expected = np.array(
        [
            [1, 1, 1, 1, 0],
            [0, 1, 0, 1, 0],
            [0, 0, 1, 1, 0],
        ],
        bool,
    )
    np.testing.assert_array_equal(pair_positives(*as_jax(image_labels, text_labels)), expected)
    np.testing.assert_array_equal(reference_positives(image_labels, text_labels), expected)


@pytest.mark.parametrize("name", CASES)
def test_clip_loss_matches_reference(name):
    image_emb, text_emb, logit_scale, _, image_labels, text_labels = make_case(name)
    logit_scale = np.float32(logit_scale)
    expected = reference_clip(
        image_emb, text_emb, logit_scale, positives_of(image_emb, image_labels, text_labels)
    )
    image_labels, text_labels = as_jax(image_labels, text_labels)
    loss, grads = jax.value_and_grad(clip_loss, argnums=(0, 1, 2))(
        *as_jax(image_emb, text_emb, logit_scale), image_labels, text_labels
    )
    assert_close(loss, expected[0])
    for grad, grad_expected in zip(grads, expected[1:]):
        assert_close(grad, grad_expected)
    if name == "above_clamp":
        assert grads[2] == 0.0


@pytest.mark.parametrize("logit_scale", [89.0, 700.0])
def test_clip_loss_past_float32_exp_range_is_clamped_with_a_zero_gradient(logit_scale):
    """exp(89) overflows float32: a clamp applied after the exp would give d/d logit_scale = 0 × inf = NaN,
    which clipping and AdamW would spread to every parameter."""
    image_emb, text_emb, _, _, _, _ = make_case("diagonal")
    expected = reference_clip(image_emb, text_emb, logit_scale, np.eye(len(image_emb), dtype=bool))
    loss, grads = jax.value_and_grad(clip_loss, argnums=(0, 1, 2))(*as_jax(image_emb, text_emb,
                                                                          np.float32(logit_scale)))
    assert_close(loss, expected[0])
    for grad, grad_expected in zip(grads, expected[1:]):
        assert_close(grad, grad_expected)
    assert grads[2] == 0.0
    assert clip_scale(jnp.float32(logit_scale)) == pytest.approx(100, rel=1e-6)
    assert clip_scale(jnp.float32(np.log(50.0))) == pytest.approx(50, rel=1e-6)


def test_clip_scale_gradient_at_the_clamp_lets_the_scale_come_down():
    """Training clamps the parameter to log 100 (as OpenCLIP does); there d scale / d logit_scale must be the
    scale itself (~100), not 0, or a scale that reached the clamp could never decrease."""
    at_clamp = jnp.float32(np.log(100.0))
    assert jax.grad(clip_scale)(at_clamp) == pytest.approx(100, rel=1e-5)
    assert jax.grad(clip_scale)(jnp.nextafter(at_clamp, jnp.float32(10))) == 0.0


@pytest.mark.parametrize("name", CASES)
def test_sigmoid_loss_matches_reference(name):
    image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels = make_case(name)
    logit_scale, logit_bias = np.float32(logit_scale), np.float32(logit_bias)
    expected = reference_sigmoid(
        image_emb,
        text_emb,
        logit_scale,
        logit_bias,
        positives_of(image_emb, image_labels, text_labels),
    )
    image_labels, text_labels = as_jax(image_labels, text_labels)
    loss, grads = jax.value_and_grad(sigmoid_loss, argnums=(0, 1, 2, 3))(
        *as_jax(image_emb, text_emb, logit_scale, logit_bias), image_labels, text_labels
    )
    # Logits reach ~665 in "above_clamp"; float32 rounding of a logit is ~3e-5 there.
    assert_close(loss, expected[0], rtol=2e-5)
    for grad, grad_expected in zip(grads, expected[1:]):
        assert_close(grad, grad_expected, rtol=2e-5)


# ---------------------------------------------------------------------------------------
# Closed forms: B = 2, orthogonal one-hot embeddings, so the similarity matrix is I.

ONE_HOT = jnp.eye(2, dtype=jnp.float32)


def softplus(x):
    return np.logaddexp(0.0, x)


@pytest.mark.parametrize("logit_scale", [np.log(5.0), np.log(100.0), np.log(100.0) + 1.0])
def test_clip_loss_closed_form(logit_scale):
    # Each row / column of logits is (c, 0) with the positive first: CE = log(1 + e^-c).
    scale = min(np.exp(logit_scale), 100.0)
    loss = clip_loss(ONE_HOT, ONE_HOT, jnp.float32(logit_scale))
    np.testing.assert_allclose(loss, softplus(-scale), rtol=1e-5, atol=1e-30)
    # Captions that name nothing match both images: targets (1/2, 1/2),
    # CE = -(c/2) + log(e^c + 1).
    wildcard = jnp.full((2, 1), -1, jnp.int32)
    labels = jnp.array([[0], [1]], jnp.int32)
    loss = clip_loss(ONE_HOT, ONE_HOT, jnp.float32(logit_scale), labels, wildcard)
    np.testing.assert_allclose(loss, softplus(scale) - scale / 2, rtol=1e-5)


def test_sigmoid_loss_closed_form():
    # 2 positives with logit c + b, 2 negatives with logit b, divided by B = 2.
    logit_scale, logit_bias = np.log(10.0), -10.0
    loss = sigmoid_loss(ONE_HOT, ONE_HOT, jnp.float32(logit_scale), jnp.float32(logit_bias))
    expected = softplus(-(10.0 + logit_bias)) + softplus(logit_bias)  # log 2 + softplus(-10)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_labels_must_come_in_pairs():
    labels = jnp.zeros((2, 1), jnp.int32)
    for image_labels, text_labels in [(labels, None), (None, labels)]:
        with pytest.raises(ValueError, match=r"^give both image_labels and text_labels, or neither$"):
            clip_loss(ONE_HOT, ONE_HOT, jnp.float32(1.0), image_labels, text_labels)


# ---------------------------------------------------------------------------------------
# Sharded == single device, 8 fake CPU devices, values and gradients through jit.

BATCH_AXES = ("data", "fsdp")
SHARDED_BATCH, SHARDED_DIM = 16, 8


def make_mesh(shape):
    return jax.make_mesh(
        shape, ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3
    )


def sharded_inputs(mesh, with_labels):
    rng = np.random.default_rng(1)
    image_emb = unit_rows(rng, SHARDED_BATCH, SHARDED_DIM)
    text_emb = unit_rows(rng, SHARDED_BATCH, SHARDED_DIM)
    labels = attribute_labels(rng, SHARDED_BATCH) if with_labels else (None, None)
    batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
    on_mesh = [None if x is None else jax.device_put(x, batch_sharding) for x in labels]
    return (image_emb, text_emb, *labels), (
        jax.device_put(image_emb, batch_sharding),
        jax.device_put(text_emb, batch_sharding),
        *on_mesh,
    )


MESHES = pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (4, 2, 1)], ids=["dp8", "dp4xfsdp2"])
LABELS = pytest.mark.parametrize("with_labels", [False, True], ids=["diagonal", "labels"])


@MESHES
@LABELS
def test_sharded_clip_loss_equals_clip_loss(mesh_shape, with_labels):
    mesh = make_mesh(mesh_shape)
    (image_emb, text_emb, image_labels, text_labels), sharded = sharded_inputs(mesh, with_labels)
    logit_scale = jnp.float32(np.log(1 / 0.07))

    def sharded_loss(image_emb, text_emb, logit_scale, image_labels, text_labels):
        return sharded_clip_loss(
            image_emb, text_emb, logit_scale, image_labels, text_labels, mesh=mesh
        )

    loss, grads = jax.jit(jax.value_and_grad(sharded_loss, argnums=(0, 1, 2)))(
        sharded[0], sharded[1], logit_scale, sharded[2], sharded[3]
    )
    expected_loss, expected_grads = jax.value_and_grad(clip_loss, argnums=(0, 1, 2))(
        *as_jax(image_emb, text_emb), logit_scale, *as_jax(image_labels, text_labels)
    )
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-5)


@MESHES
@LABELS
def test_sharded_sigmoid_loss_equals_sigmoid_loss(mesh_shape, with_labels):
    mesh = make_mesh(mesh_shape)
    (image_emb, text_emb, image_labels, text_labels), sharded = sharded_inputs(mesh, with_labels)
    logit_scale, logit_bias = jnp.float32(np.log(10.0)), jnp.float32(-10.0)

    def sharded_loss(image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels):
        return sharded_sigmoid_loss(
            image_emb, text_emb, logit_scale, logit_bias, image_labels, text_labels, mesh=mesh
        )

    loss, grads = jax.jit(jax.value_and_grad(sharded_loss, argnums=(0, 1, 2, 3)))(
        sharded[0], sharded[1], logit_scale, logit_bias, sharded[2], sharded[3]
    )
    expected_loss, expected_grads = jax.value_and_grad(sigmoid_loss, argnums=(0, 1, 2, 3))(
        *as_jax(image_emb, text_emb),
        logit_scale,
        logit_bias,
        *as_jax(image_labels, text_labels),
    )
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_sharded_clip_loss_with_more_images_than_captions_matches_the_reference():
    # 16 images, 8 captions: each direction's cross-entropy is averaged over its own rows.
    mesh = make_mesh((8, 1, 1))
    rng = np.random.default_rng(3)
    image_emb, text_emb = unit_rows(rng, 16, SHARDED_DIM), unit_rows(rng, 8, SHARDED_DIM)
    image_labels = rng.integers(0, 3, (16, 2)).astype(np.int32)
    text_labels = rng.integers(-1, 3, (8, 2)).astype(np.int32)
    logit_scale = np.float32(np.log(10.0))
    expected_loss, expected_image, expected_text, _ = reference_clip(
        image_emb, text_emb, logit_scale, reference_positives(image_labels, text_labels))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P(BATCH_AXES)))

    def loss_fn(image_emb, text_emb):
        return sharded_clip_loss(image_emb, text_emb, jnp.float32(logit_scale), put(image_labels), put(text_labels),
                                 mesh=mesh)

    loss, (d_image, d_text) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(put(image_emb), put(text_emb))
    assert_close(loss, expected_loss)
    assert_close(d_image, expected_image)
    assert_close(d_text, expected_text)


def test_a_nan_logit_scale_gives_a_nan_clip_loss():
    # NaN > log 100 is False, as NaN <= log 100 is: the clamp must not turn a diverged scale into 100.
    assert np.isnan(clip_scale(jnp.float32(np.nan)))
    assert np.isnan(clip_loss(ONE_HOT, ONE_HOT, jnp.float32(np.nan)))


@pytest.mark.parametrize("loss", ["clip", "sigmoid"])
def test_losses_refuse_a_non_scalar_scale_and_an_empty_batch(loss):
    scale = jnp.ones((1,), jnp.float32)
    fn = (lambda s: clip_loss(ONE_HOT, ONE_HOT, s)) if loss == "clip" else (
        lambda s: sigmoid_loss(ONE_HOT, ONE_HOT, jnp.float32(1.0), s))
    with pytest.raises(ValueError, match="must be a scalar, got shape \\(1,\\)"):
        jax.grad(lambda s: fn(s).sum())(scale)
    empty = jnp.zeros((0, ONE_HOT.shape[1]), jnp.float32)
    with pytest.raises(ValueError, match="at least one image and one caption, got 0 images"):
        clip_loss(empty, empty, jnp.float32(1.0)) if loss == "clip" else sigmoid_loss(
            empty, empty, jnp.float32(1.0), jnp.float32(0.0))


def test_losses_take_float64_scalars_under_x64():
    """With `jax_enable_x64`, a float64 scale and bias (NumPy's default) failed inside `lax.scan` (a float32
    carry became float64); they are computed in float32 and their gradients come back as float64."""
    image_emb, text_emb, logit_scale, logit_bias, _, _ = make_case("diagonal")
    positives = np.eye(len(image_emb), dtype=bool)
    clip_expected = reference_clip(image_emb, text_emb, np.float32(logit_scale), positives)
    sigmoid_expected = reference_sigmoid(image_emb, text_emb, np.float32(logit_scale), np.float32(logit_bias),
                                         positives)
    with jax.enable_x64(True):
        image_emb, text_emb = as_jax(image_emb, text_emb)
        clip_value, clip_grad = jax.value_and_grad(clip_loss, argnums=2)(image_emb, text_emb,
                                                                          jnp.float64(logit_scale))
        sigmoid_value, sigmoid_grads = jax.value_and_grad(sigmoid_loss, argnums=(2, 3))(
            image_emb, text_emb, jnp.float64(logit_scale), jnp.float64(logit_bias))
    assert_close(clip_value, clip_expected[0])
    assert_close(clip_grad, clip_expected[3])
    assert_close(sigmoid_value, sigmoid_expected[0])
    assert_close(sigmoid_grads, sigmoid_expected[3:])
    assert clip_grad.dtype == sigmoid_grads[0].dtype == sigmoid_grads[1].dtype == jnp.float64


@pytest.mark.parametrize("loss", ["clip", "sigmoid"])
@pytest.mark.parametrize("num_images, num_texts, tower", [(12, 12, "12 images"), (16, 12, "12 captions")])
def test_sharded_losses_refuse_a_batch_that_does_not_split_over_the_devices(loss, num_images, num_texts, tower):
    mesh = make_mesh((4, 2, 1))
    rng = np.random.default_rng(0)
    image_emb, text_emb = unit_rows(rng, num_images, SHARDED_DIM), unit_rows(rng, num_texts, SHARDED_DIM)
    scale = jnp.float32(1.0)
    with pytest.raises(ValueError, match=f"a batch of {tower} does not split evenly over the 8 devices of the "
                                         "mesh axes \\('data', 'fsdp'\\): use a multiple of 8"):
        if loss == "clip":
            sharded_clip_loss(image_emb, text_emb, scale, mesh=mesh)
        else:
            sharded_sigmoid_loss(image_emb, text_emb, scale, scale, mesh=mesh)


def test_sharded_losses_never_build_the_global_logit_matrix():
    # The per-device program (after SPMD partitioning) holds [b, B] logits for CLIP and
    # [b, b] blocks for the SigLIP ring, b = 16 / 8 = 2; never [B, B].
    mesh = make_mesh((4, 2, 1))
    _, (image_emb, text_emb, image_labels, text_labels) = sharded_inputs(mesh, True)
    scalar = jnp.float32(1.0)

    def clip(image_emb, text_emb):
        return sharded_clip_loss(
            image_emb, text_emb, scalar, image_labels, text_labels, mesh=mesh
        )

    def sigmoid(image_emb, text_emb):
        return sharded_sigmoid_loss(
            image_emb, text_emb, scalar, scalar, image_labels, text_labels, mesh=mesh
        )

    def per_device_program(loss):
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        return step.lower(image_emb, text_emb).compile().as_text()

    clip_program, sigmoid_program = per_device_program(clip), per_device_program(sigmoid)
    assert f"f32[2,{SHARDED_BATCH}]" in clip_program
    assert f"f32[{SHARDED_BATCH},{SHARDED_BATCH}]" not in clip_program
    assert "f32[2,2]" in sigmoid_program
    assert f"f32[2,{SHARDED_BATCH}]" not in sigmoid_program
    assert f"f32[{SHARDED_BATCH},{SHARDED_BATCH}]" not in sigmoid_program
