"""Model tests: published parameter counts, a NumPy reference for the blocks,
scan/remat equivalence, logical axis names, and clear shape errors."""

import dataclasses
import math
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmjax.models as models
from mmjax.models import layers

PUBLISHED_COUNTS = {  # OpenAI CLIP / Google SigLIP releases (open_clip and HF model cards)
    "ViT-B-32": 151_277_313,
    "ViT-B-16": 149_620_737,
    "ViT-L-14": 427_616_513,
    "ViT-B-16-SigLIP": 203_155_970,
}


@pytest.mark.parametrize("name,count", PUBLISHED_COUNTS.items())
def test_param_count_matches_published_models(name, count):
    assert models.param_count(name) == count


def test_registry_lists_required_models():
    names = models.list_models()
    for name in [*PUBLISHED_COUNTS, "clip-tiny", "siglip-tiny"]:
        assert name in names


def test_unknown_model_name_suggests_close_match():
    with pytest.raises(KeyError, match="did you mean ViT-B-32"):
        models.get_config("ViT-B32")


def _np_layer_norm(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _np_attention(x, p, causal):
    """Naive multi-head self-attention from the parameter arrays, float64."""
    q, k, v = (np.einsum("btd,dhk->bthk", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
    scores = np.einsum("bthk,bshk->bhts", q, k) / math.sqrt(q.shape[-1])
    if causal:
        t = x.shape[1]
        scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshk->bthk", weights, v)
    return np.einsum("bthk,hkd->btd", out, p["out"]["kernel"]) + p["out"]["bias"]


def _np_block(x, p, causal, eps, act):
    x = x + _np_attention(_np_layer_norm(x, **p["ln_1"], eps=eps), p["attn"], causal)
    h = _np_layer_norm(x, **p["ln_2"], eps=eps) @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
    return x + act(h) @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_transformer_block_matches_numpy_reference(causal, activation):
    spec = layers.TransformerSpec(width=16, depth=1, num_heads=4, mlp_dim=32)
    opts = layers.BlockOptions(activation=activation)
    block = layers.TransformerBlock(spec, opts, causal)
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
    params = nn.unbox(jax.jit(block.init)(jax.random.key(1), x))["params"]
    got = block.apply({"params": params}, x)
    act = {"gelu": lambda h: 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2))),
           "quick_gelu": lambda h: h / (1 + np.exp(-1.702 * h))}[activation]
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    want = _np_block(x.astype(np.float64), p64, causal, 1e-5, act)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_eot_pooling_reads_the_largest_token_id():
    tokens = jnp.arange(4 * 4 * 3, dtype=jnp.float32).reshape(4, 4, 3)
    # the largest id is not always the last token before the padding; a tie is read at its first position
    ids = jnp.array([[5, 9, 0, 0], [5, 7, 8, 63], [5, 63, 7, 0], [63, 5, 63, 0]])
    pooled = layers.pool_tokens(tokens, "eot", ids)
    np.testing.assert_array_equal(pooled, np.stack([tokens[0, 1], tokens[1, 3], tokens[2, 1], tokens[3, 0]]))


def _init_and_apply(config, images, tokens):
    model = models.TwoTower(config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), image=images, text=tokens))["params"]
    return model, params


def _inputs(config, batch=3):
    rng = np.random.default_rng(0)
    size = config.vision.image_size
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    tokens = rng.integers(1, config.text.vocab_size, size=(batch, config.text.context_length)).astype(np.int32)
    return images, tokens


def _stack_layers(params):
    """Turn unrolled `layers_i` subtrees into one scanned `layers` subtree (leading axis = layer)."""
    if not isinstance(params, dict):
        return params
    layer_keys = sorted((k for k in params if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    out = {k: _stack_layers(v) for k, v in params.items() if not k.startswith("layers_")}
    if layer_keys:
        out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[k] for k in layer_keys])
    return out


@pytest.mark.parametrize("name", ["clip-test", "siglip-test"])
def test_scan_and_remat_give_identical_outputs_and_gradients(name):
    base = models.get_config(name)
    images, tokens = _inputs(base)
    model, params = _init_and_apply(base, images, tokens)
    stacked = _stack_layers(params)

    def loss(model, params):
        img, txt, aux = model.apply({"params": params}, image=images, text=tokens)
        return jnp.sum(img @ txt.T) * aux["logit_scale"]

    want_out = jax.jit(model.apply)({"params": params}, image=images, text=tokens)
    want_grad = _stack_layers(jax.jit(jax.grad(lambda p: loss(model, p)))(params))
    for options, p in [(dict(scan_layers=True, remat_policy="dots"), stacked), (dict(remat_policy="full"), params)]:
        variant = models.TwoTower(models.get_config(name, **options))
        got_out = jax.jit(variant.apply)({"params": p}, image=images, text=tokens)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6), got_out, want_out)
        got_grad = _stack_layers(jax.jit(jax.grad(lambda q: loss(variant, q)))(p))
        # float32 sums in another order: the tolerance follows each gradient's scale (entries reach ~50 here).
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6 * float(np.abs(b).max()) + 1e-6,
                                                             rtol=1e-5), got_grad, want_grad)


def test_every_parameter_has_logical_axis_names():
    boxed = models.abstract_params(models.get_config("siglip-test", scan_layers=True))
    flat = flax.traverse_util.flatten_dict(boxed, is_leaf=lambda _, x: isinstance(x, nn.Partitioned), sep="/")
    for path, leaf in flat.items():
        assert isinstance(leaf, nn.Partitioned), path
        assert len(leaf.names) == len(leaf.value.shape), path


def test_initial_temperature_and_bias():
    clip = models.abstract_params(models.get_config("clip-test"))
    assert "logit_bias" not in clip
    images, tokens = _inputs(models.get_config("siglip-test"))
    out, _ = models.TwoTower(models.get_config("siglip-test")).init_with_output(
        jax.random.key(0), image=images, text=tokens)
    aux = out[2]
    assert float(aux["logit_scale"]) == pytest.approx(math.log(10.0))
    assert float(aux["logit_bias"]) == -10.0
    out, _ = models.TwoTower(models.get_config("clip-test")).init_with_output(
        jax.random.key(0), image=images[:, :16, :16], text=tokens)
    assert float(out[2]["logit_scale"]) == pytest.approx(math.log(1 / 0.07))


def test_embeddings_are_unit_norm_and_towers_are_optional():
    config = models.get_config("clip-test")
    images, tokens = _inputs(config)
    model, params = _init_and_apply(config, images, tokens)
    img, txt, _ = model.apply({"params": params}, image=images)
    assert txt is None
    np.testing.assert_allclose(np.linalg.norm(img, axis=-1), 1.0, rtol=1e-5)
    raw = model.apply({"params": params}, images, method=models.TwoTower.encode_image)
    np.testing.assert_allclose(img, raw / np.linalg.norm(raw, axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)
    # an empty batch of images, as of texts (the patch reshape divided by the batch size)
    none, _, _ = model.apply({"params": params}, image=images[:0], text=tokens[:0])
    assert none.shape == (0, config.embed_dim)


def test_a_text_activation_changes_the_text_tower_only():
    """Image embeddings as the model computing `options.activation` everywhere, text embeddings as the one
    computing `text_activation` everywhere (same parameters)."""
    config = models.get_config("clip-test")
    assert config.options.activation == "gelu"
    images, tokens = _inputs(config)
    mixed = dataclasses.replace(config, text_activation="quick_gelu")
    model, params = _init_and_apply(mixed, images, tokens)
    every_quick = dataclasses.replace(config, options=dataclasses.replace(config.options, activation="quick_gelu"))
    image_emb, text_emb, _ = model.apply({"params": params}, image=images, text=tokens)
    plain_image, plain_text, _ = models.TwoTower(config).apply({"params": params}, image=images, text=tokens)
    _, quick_text, _ = models.TwoTower(every_quick).apply({"params": params}, text=tokens)
    np.testing.assert_array_equal(image_emb, plain_image)
    np.testing.assert_array_equal(text_emb, quick_text)
    assert np.abs(text_emb - plain_text).max() > 1e-4
    with pytest.raises(ValueError, match=r"TwoTowerConfig: text_activation 'relu' is not one of \['gelu', "):
        dataclasses.replace(config, text_activation="relu")


def test_wrong_image_size_is_one_clear_error():
    config = models.get_config("clip-test")
    images, tokens = _inputs(config)
    model, params = _init_and_apply(config, images, tokens)
    with pytest.raises(ValueError, match=r"ViT expects images \[B, 16, 16, 3\], got \[3, 32, 32, 3\]"):
        model.apply({"params": params}, image=np.zeros((3, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"token ids \[B, 8\]"):
        model.apply({"params": params}, text=np.zeros((3, 9), np.int32))
    # an id past the vocabulary read NaN embeddings, a negative one wrapped around
    for bad in (config.text.vocab_size, -1):
        with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {config.text.vocab_size}\), got"):
            model.apply({"params": params}, text=np.full((3, 8), bad, np.int32))


def test_images_must_be_floats_and_lists_are_arrays():
    """uint8 pixels were embedded as if normalised (cosine 0.6 to the right embedding); lists raised AttributeError."""
    config = models.get_config("clip-test")
    images, tokens = _inputs(config)
    model, params = _init_and_apply(config, images, tokens)
    with pytest.raises(ValueError, match="ViT expects normalised float images, got uint8"):
        model.apply({"params": params}, image=np.zeros((1, 16, 16, 3), np.uint8))
    from_arrays = model.apply({"params": params}, image=images, text=tokens)
    from_lists = model.apply({"params": params}, image=np.asarray(images).tolist(), text=np.asarray(tokens).tolist())
    for got, want in zip(from_lists[:2], from_arrays[:2]):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_sizes_that_are_not_ints_are_refused_in_subclasses_too():
    """A string depth from a checkpoint's JSON config was a TypeError ('<' between str and int); this module has
    no postponed annotations, so its subclass's field types are classes, not strings."""
    import dataclasses

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Towers(layers.TransformerSpec):
        towers: int

    with pytest.raises(ValueError, match="^TextConfig: depth '2' is not an int$"):
        models.TextConfig(width=8, depth="2", num_heads=2, mlp_dim=8, vocab_size=10, context_length=4)
    with pytest.raises(ValueError, match="^Towers: towers 2.0 is not an int$"):
        Towers(width=8, depth=1, num_heads=2, mlp_dim=8, towers=2.0)
    assert Towers(width=np.int64(8), depth=1, num_heads=2, mlp_dim=8, towers=2).towers == 2


@pytest.mark.parametrize("fields, message", [
    (dict(image_size=8, patch_size=16), "VisionConfig: patch_size 16 must be in [1, image_size 8]"),
    (dict(image_size=16, patch_size=0), "VisionConfig: patch_size 0 must be in [1, image_size 16]"),
    (dict(image_size=16, patch_size=8, depth=-1), "VisionConfig: depth -1 must be ≥ 0 and mlp_dim 64 ≥ 1"),
])
def test_vision_configs_that_cannot_see_the_image_are_refused(fields, message):
    """A patch larger than the image gave no patches: embeddings that ignored the image, or NaN."""
    with pytest.raises(ValueError, match=re.escape(message)):
        models.VisionConfig(**{"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64, **fields})


def test_sincos_position_table_matches_the_formula():
    grid, width = 3, 8
    table = layers.sincos_2d(grid, width)
    quarter = width // 4
    omega = [1.0 / 10_000 ** (i / (quarter - 1)) for i in range(quarter)]
    for row in range(grid):
        for col in range(grid):
            want = ([math.sin(col * w) for w in omega] + [math.cos(col * w) for w in omega]
                    + [math.sin(row * w) for w in omega] + [math.cos(row * w) for w in omega])
            np.testing.assert_allclose(table[row * grid + col], want, atol=1e-6)


def test_sincos_position_table_with_a_class_token_covers_the_patches_only():
    """As big_vision: the fixed table is added to the patch grid, then the class token (which gets no position)
    is prepended. With no blocks, the class-token readout is then LN(LN(token)), whatever the image."""
    config = models.VisionConfig(width=8, depth=0, num_heads=1, mlp_dim=8, image_size=8, patch_size=4, pool="cls",
                                 posemb="sincos2d")
    vit = models.ViT(config, layers.BlockOptions())
    images = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    params = jax.jit(vit.init)(jax.random.key(0), images)["params"]
    assert "pos_embed" not in params
    token = np.asarray(nn.unbox(params)["cls"]["token"], np.float64)
    layer_norm = lambda v: (v - v.mean()) / np.sqrt(v.var() + 1e-5)  # noqa: E731 (scale 1, bias 0 at init)
    np.testing.assert_allclose(vit.apply({"params": params}, images), np.stack([layer_norm(layer_norm(token))] * 2),
                               atol=1e-5)
    with pytest.raises(ValueError, match="sincos_2d needs a width divisible by 4 and at least 8, got 4"):
        layers.sincos_2d(2, 4)  # the frequency exponent would be 0 / 0


def test_unknown_block_options_are_one_line_naming_the_choices():
    with pytest.raises(ValueError, match=r"activation 'relu' is not one of \['gelu', 'gelu_tanh', 'quick_gelu'\]"):
        models.get_config("clip-test", activation="relu")
    with pytest.raises(ValueError, match=r"remat_policy 'some' is not one of \['dots', 'dots_no_batch', 'full', 'none'\]"):
        models.get_config("clip-test", remat_policy="some")
    # These were accepted: "bf16" failed at init deep in NumPy, and the string "no" (truthy) scanned the layers.
    with pytest.raises(ValueError, match=r"dtype 'bf16' is not one of \['float32', 'bfloat16', 'float16'\]"):
        models.get_config("clip-test", dtype="bf16")
    with pytest.raises(ValueError, match=r"scan_layers 'no' is not a bool"):
        models.get_config("clip-test", scan_layers="no")
    with pytest.raises(ValueError, match=r"attention 'flash' is not one of \['xla', 'cudnn'\]"):
        models.get_config("clip-test", attention="flash")
    with pytest.raises(ValueError, match="attention 'cudnn' computes in bfloat16 or float16, not dtype 'float32'"):
        models.get_config("clip-test", attention="cudnn")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN attention runs on a GPU")
def test_cudnn_attention_off_a_gpu_is_a_one_line_error_before_compiling():
    config = models.get_config("clip-test", dtype="bfloat16", attention="cudnn")
    with pytest.raises(ValueError, match="attention 'cudnn' runs on NVIDIA GPUs only; this process's backend is cpu"):
        jax.eval_shape(lambda: models.TwoTower(config).init(jax.random.key(0), *models.example_inputs(config)))


def test_bfloat16_compute_keeps_float32_parameters_and_close_outputs():
    config = models.get_config("clip-test")
    images, tokens = _inputs(config)
    model, params = _init_and_apply(config, images, tokens)
    low = models.TwoTower(models.get_config("clip-test", dtype="bfloat16"))
    low_params = nn.unbox(jax.jit(low.init)(jax.random.key(0), image=images, text=tokens))["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(low_params))
    want = jax.jit(model.apply)({"params": params}, image=images, text=tokens)
    got = jax.jit(low.apply)({"params": params}, image=images, text=tokens)
    for a, b in zip(got[:2], want[:2]):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, atol=0.05)


@pytest.mark.parametrize("use_bias,out_dims", [(True, (16,)), (False, (16,)), (True, (4, 4))])
def test_bfloat16_dense_multiplies_bf16_operands_and_sums_in_float32(use_bias, out_dims):
    """`accumulating_dense` against float64 NumPy on the bf16-rounded operands: the output is the exact product
    rounded once to bf16, and the kernel's and bias's gradients keep float32 precision (a bf16 rounding of them,
    as JAX's own backward pass makes, would be off by up to 2^-9 relative)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(300, 24)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(24, *out_dims)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=out_dims), jnp.float32) if use_bias else None
    cotangent = jnp.asarray(rng.normal(size=(300, 16)), jnp.bfloat16)
    y, pullback = jax.vjp(lambda *args: layers.accumulating_dense(*args, jnp.bfloat16), x, kernel, bias)
    grad_x, grad_kernel, grad_bias = pullback(cotangent)
    x64, g64 = np.asarray(x, np.float64), np.asarray(cotangent, np.float64)
    k64 = np.asarray(kernel.astype(jnp.bfloat16), np.float64).reshape(24, 16)
    want = x64 @ k64 + (np.asarray(bias, np.float64).reshape(16) if use_bias else 0.0)
    assert y.dtype == jnp.bfloat16 and grad_x.dtype == jnp.bfloat16 and grad_kernel.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=2 ** -8, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad_x, np.float64), g64 @ k64.T, rtol=2 ** -8, atol=1e-6)
    np.testing.assert_allclose(grad_kernel, (x64.T @ g64).reshape(kernel.shape), rtol=1e-5, atol=1e-4)
    if use_bias:
        assert grad_bias.dtype == jnp.float32
        np.testing.assert_allclose(grad_bias, g64.sum(0).reshape(out_dims), rtol=1e-5, atol=1e-4)
    else:
        assert grad_bias is None


def test_bfloat16_scan_and_remat_gradients_match_the_unrolled_model():
    """The bf16 dense layers' custom VJP under `nn.scan` and `dots` remat: the same gradients as unrolled, up to
    bf16 rounding (the scanned program fuses differently), and both near the float32 gradients."""
    config = models.get_config("clip-test")
    images, tokens = _inputs(config)
    _, params = _init_and_apply(config, images, tokens)

    def gradients(options, p):
        model = models.TwoTower(models.get_config("clip-test", **options))

        def loss(q):
            img, txt, aux = model.apply({"params": q}, image=images, text=tokens)
            return jnp.sum(img @ txt.T) * aux["logit_scale"]
        return _stack_layers(jax.jit(jax.grad(loss))(p))

    want = gradients({}, params)
    unrolled = gradients(dict(dtype="bfloat16"), params)
    scanned = gradients(dict(dtype="bfloat16", scan_layers=True, remat_policy="dots"), _stack_layers(params))
    # Per leaf, 3 % of its largest entry (at least of 1: the keys' bias has a zero gradient, which bf16 leaves as
    # noise); the largest differences seen are 1.9 %.
    for a, b, c in zip(jax.tree.leaves(scanned), jax.tree.leaves(unrolled), jax.tree.leaves(want)):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_allclose(a, b, atol=3e-2 * max(float(np.abs(b).max()), 1.0))
        np.testing.assert_allclose(b, c, atol=3e-2 * max(float(np.abs(c).max()), 1.0))


def test_bfloat16_dense_off_cpu_is_jaxs_own_matmul(monkeypatch):
    """GPUs and TPUs get plain bf16 × bf16 → bf16 matmuls (no float32 partial sums to move between devices)."""
    config = models.get_config("clip-test", dtype="bfloat16")
    images, tokens = _inputs(config)
    model = models.TwoTower(config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), image=images, text=tokens))["params"]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    hlo = jax.jit(jax.grad(lambda p: model.apply({"params": p}, image=images, text=tokens)[0].sum())
                  ).lower(params).as_text()
    # The dense layers' matmuls are the 2-D ones (attention's are 4-D and sum its logits in float32 anyway).
    results = re.findall(r"\(tensor<\d+x\d+xbf16>, tensor<\d+x\d+xbf16>\) -> tensor<\d+x\d+x(\w+)>", hlo)
    assert len(results) >= 3 * 12 and set(results) == {"bf16"}, results


def _np_attention_heads(q, k, v, causal):
    """Softmax attention `[B, T, N, H]` against `[B, S, N, H]`, written out in NumPy."""
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhts,bshd->bthd", weights / weights.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("multiple", [2, 8])
def test_attention_padded_to_a_length_multiple_equals_the_unpadded_one(causal, multiple):
    """cuDNN's attention needs even lengths; padding and masking the 5 queries / 5 or 7 keys changes nothing."""
    rng = np.random.default_rng(0)
    keys = 5 if causal else 7
    q = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
    k, v = (rng.normal(size=(2, keys, 3, 8)).astype(np.float32) for _ in range(2))
    want = _np_attention_heads(q, k, v, causal)
    padded = lambda q, k, v: layers.padded_attention(q, k, v, causal=causal, implementation="xla",  # noqa: E731
                                                     multiple=multiple)
    np.testing.assert_allclose(padded(q, k, v), want, atol=1e-5)
    plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    cotangent = rng.normal(size=q.shape).astype(np.float32)
    grads = [jax.vjp(f, q, k, v)[1](cotangent) for f in (padded, plain)]
    for got, expected in zip(*grads):
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("multiple", [1, 2])
def test_attention_masks_keys_past_kv_length(multiple):
    """The 3 keys after the first 6 are padding (large values that would dominate the softmax); the queries see
    the first 6 only."""
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 4, 3, 8)).astype(np.float32)
    k, v = (rng.normal(size=(2, 9, 3, 8)).astype(np.float32) for _ in range(2))
    k[:, 6:], v[:, 6:] = 50.0, 1e3
    got = layers.padded_attention(q, k, v, causal=False, implementation="xla", multiple=multiple, kv_length=6)
    np.testing.assert_allclose(got, _np_attention_heads(q, k[:, :6], v[:, :6], False), atol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_padding_its_sequence_once_changes_no_output_or_gradient(monkeypatch, scan_layers, causal):
    """With cuDNN the stack pads an odd length once for all its blocks; here XLA's attention is made to ask for a
    multiple of 4, and 7 tokens (padded to 8) must give the outputs and gradients of the stack that pads nothing."""
    spec = layers.TransformerSpec(width=16, depth=2, num_heads=4, mlp_dim=32)
    stack = layers.Transformer(spec, layers.BlockOptions(scan_layers=scan_layers), causal)
    x = np.random.default_rng(2).normal(size=(2, 7, 16)).astype(np.float32)
    params = jax.jit(stack.init)(jax.random.key(0), x)
    cotangent = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)

    def outputs_and_gradients():
        out, vjp = jax.vjp(lambda p, x: stack.apply(p, x), params, x)
        return out, vjp(cotangent)

    want, want_grads = outputs_and_gradients()
    monkeypatch.setitem(layers.LENGTH_MULTIPLES, "xla", 4)
    got, got_grads = outputs_and_gradients()
    assert got.shape == (2, 7, 16)
    np.testing.assert_allclose(got, want, atol=1e-5)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5), got_grads, want_grads)


def test_an_attention_mask_of_the_wrong_shape_is_one_line_naming_both_shapes():
    q = jnp.ones((2, 5, 3, 8))
    k = jnp.ones((2, 3, 3, 8))
    with pytest.raises(ValueError, match=r"^attention mask must be bool \[B, T, S\] = \[2, 5, 3\], got \[2, 3, 5\]$"):
        layers.padded_attention(q, k, k, causal=False, implementation="xla", multiple=1, mask=jnp.ones((2, 3, 5), bool))
