"""Fusion blocks and image–text matching: NumPy references for the blocks, text padding that changes nothing,
scan and mesh equivalence, hard negatives against a direct computation, and a small ITM fit."""

import math
import pathlib
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.losses.matching import hard_negatives, itm_loss, matching_pairs
from mmjax.models import layers
from mmjax.models.fusion import CrossAttentionBlock, CrossModalFusion, EarlyFusion, LateFusion, MatchingHead
from jax.sharding import PartitionSpec as P

from mmjax.parallel import DEFAULT_RULES, logical_shardings, make_mesh
from test_models import _np_block, _np_layer_norm, _stack_layers

SPEC = layers.TransformerSpec(width=16, depth=2, num_heads=4, mlp_dim=32)


def np_gelu(h):
    return 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))


def np_attention(x, context, p, key_lengths):
    """Naive multi-head attention of `x` over `context`, each example seeing its first `key_lengths[b]` keys."""
    q = np.einsum("btd,dhk->bthk", x, p["query"]["kernel"]) + p["query"]["bias"]
    k, v = (np.einsum("bsd,dhk->bshk", context, p[n]["kernel"]) + p[n]["bias"] for n in ("key", "value"))
    scores = np.einsum("bthk,bshk->bhts", q, k) / math.sqrt(q.shape[-1])
    visible = np.arange(context.shape[1])[None, :] < np.asarray(key_lengths)[:, None]
    scores = np.where(visible[:, None, None, :], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    out = np.einsum("bhts,bshk->bthk", weights / weights.sum(-1, keepdims=True), v)
    return np.einsum("bthk,hkd->btd", out, p["out"]["kernel"]) + p["out"]["bias"]


def float64(params):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), nn.unbox(params))


def test_cross_attention_block_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x, context = rng.normal(size=(3, 5, 16)).astype(np.float32), rng.normal(size=(3, 7, 12)).astype(np.float32)
    x_lengths, context_lengths = np.array([5, 2, 4]), np.array([7, 1, 3])
    block = CrossAttentionBlock(SPEC, layers.BlockOptions())
    params = nn.unbox(jax.jit(block.init)(jax.random.key(1), x, context, x_lengths, context_lengths))["params"]
    got = block.apply({"params": params}, x, context, x_lengths, context_lengths)
    p, eps = float64(params), 1e-5
    want = x.astype(np.float64)
    normed = _np_layer_norm(want, **p["ln_1"], eps=eps)
    want = want + np_attention(normed, normed, p["self_attn"], x_lengths)
    want = want + np_attention(_np_layer_norm(want, **p["ln_cross"], eps=eps), context.astype(np.float64),
                               p["cross_attn"], context_lengths)
    h = _np_layer_norm(want, **p["ln_2"], eps=eps) @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
    want = want + np_gelu(h) @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]
    for b, length in enumerate(x_lengths):  # padding rows still compute; only the valid ones are compared
        np.testing.assert_allclose(got[b, :length], want[b, :length], atol=2e-5, rtol=1e-5)


def test_early_fusion_matches_numpy_reference():
    rng = np.random.default_rng(1)
    image, text = rng.normal(size=(2, 4, 12)).astype(np.float32), rng.normal(size=(2, 3, 8)).astype(np.float32)
    fusion = EarlyFusion(SPEC)
    params = nn.unbox(jax.jit(fusion.init)(jax.random.key(2), image, text))["params"]
    pooled, tokens = fusion.apply({"params": params}, image, text)
    p = float64(params)
    x = np.concatenate([image @ p["image_proj"]["kernel"] + p["image_proj"]["bias"] + p["modality_embed"][0],
                        text @ p["text_proj"]["kernel"] + p["text_proj"]["bias"] + p["modality_embed"][1]], axis=1)
    x = np.concatenate([np.broadcast_to(p["fusion_token"]["token"], (2, 1, 16)), x], axis=1)
    for i in range(SPEC.depth):
        x = _np_block(x, p["encoder"][f"layers_{i}"], False, 1e-5, np_gelu)
    x = _np_layer_norm(x, **p["ln_final"], eps=1e-5)
    assert tokens.shape == (2, 1 + 4 + 3, 16)
    np.testing.assert_allclose(tokens, x, atol=3e-5, rtol=1e-5)
    np.testing.assert_allclose(pooled, x[:, 0], atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("combine", ["concat", "sum", "product"])
def test_late_fusion_matches_numpy_reference(combine):
    rng = np.random.default_rng(2)
    image, text = rng.normal(size=(3, 12)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
    fusion = LateFusion(width=6, mlp_dim=10, combine=combine)
    params = nn.unbox(jax.jit(fusion.init)(jax.random.key(3), image, text))["params"]
    p = float64(params)
    i = image @ p["image_proj"]["kernel"] + p["image_proj"]["bias"]
    t = text @ p["text_proj"]["kernel"] + p["text_proj"]["bias"]
    combined = {"concat": np.concatenate([i, t], -1), "sum": i + t, "product": i * t}[combine]
    want = np_gelu(combined @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    np.testing.assert_allclose(fusion.apply({"params": params}, image, text), want, atol=2e-5, rtol=1e-5)


def padded_text(rng, lengths, max_length, width):
    """Text tokens `[B, max_length, width]` whose padding (from `lengths[b]` on) is large garbage."""
    text = rng.normal(size=(len(lengths), max_length, width)).astype(np.float32)
    for b, length in enumerate(lengths):
        text[b, length:] = rng.normal(size=(max_length - length, width)) * 100
    return text


@pytest.mark.parametrize("block", ["early", "cross_modal"])
def test_text_padding_changes_no_output_of_a_valid_token(block):
    """Each example, run alone on its text cut to its length, gives the outputs the padded batch gives."""
    rng = np.random.default_rng(3)
    lengths = np.array([6, 2, 4])
    image, text = rng.normal(size=(3, 5, 12)).astype(np.float32), padded_text(rng, lengths, 6, 8)
    fusion = EarlyFusion(SPEC) if block == "early" else CrossModalFusion(SPEC)
    inputs = (lambda image, text: (image, text)) if block == "early" else (lambda image, text: (text, image))
    params = jax.jit(fusion.init)(jax.random.key(4), *inputs(image, text))
    call = lambda image, text, lengths=None: fusion.apply(params, *inputs(image, text), lengths)  # noqa: E731
    pooled, tokens = call(image, text, lengths)
    for b, length in enumerate(lengths):
        alone_pooled, alone_tokens = call(image[b:b + 1], text[b:b + 1, :length])
        valid = alone_tokens.shape[1]
        np.testing.assert_allclose(pooled[b], alone_pooled[0], atol=2e-5)
        np.testing.assert_allclose(tokens[b, :valid], alone_tokens[0], atol=2e-5)


def test_early_fusion_scanned_with_text_lengths_equals_the_unrolled_stack():
    rng = np.random.default_rng(5)
    lengths = np.array([3, 1])
    image, text = rng.normal(size=(2, 4, 12)).astype(np.float32), padded_text(rng, lengths, 3, 8)
    unrolled = EarlyFusion(SPEC)
    params = jax.jit(unrolled.init)(jax.random.key(5), image, text)
    want = unrolled.apply(params, image, text, lengths)
    for options in (layers.BlockOptions(scan_layers=True), layers.BlockOptions(scan_layers=True, remat_policy="full")):
        got = EarlyFusion(SPEC, options).apply(_stack_layers(nn.unbox(params)), image, text, lengths)
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5), got, want)


def test_cross_modal_fusion_remat_gives_the_same_gradients():
    rng = np.random.default_rng(6)
    text, image = rng.normal(size=(2, 3, 16)).astype(np.float32), rng.normal(size=(2, 4, 12)).astype(np.float32)
    plain = CrossModalFusion(SPEC)
    params = jax.jit(plain.init)(jax.random.key(6), text, image)
    grads = []
    for model, blocks in [(plain, 0), (CrossModalFusion(SPEC, layers.BlockOptions(remat_policy="full")), SPEC.depth)]:
        loss = lambda p: jnp.sum(model.apply(p, text, image, np.array([3, 2]))[0] ** 2)  # noqa: E731
        grads.append(jax.grad(loss)(params))
        assert str(jax.make_jaxpr(loss)(params)).count("remat2[") == blocks  # every block, or none
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5), *grads)


def assert_named_and_sharded_like_one_device(module, *inputs, atol=2e-5):
    """Every parameter of `module` has a logical name (or None: replicated) for each axis, some are sharded on a
    2 × 2 × 2 mesh, and the sharded apply equals the one-device apply."""
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))
    flat = flax.traverse_util.flatten_dict(boxed["params"], is_leaf=lambda _, x: isinstance(x, nn.Partitioned))
    unnamed = [k for k, v in flat.items() if not isinstance(v, nn.Partitioned) or len(v.names) != v.value.ndim]
    assert not unnamed, unnamed
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0), *inputs))
    want = module.apply(params, *inputs)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    shardings = logical_shardings(boxed, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        got = jax.jit(module.apply)(jax.device_put(params, shardings), *inputs)
    assert any(not s.is_fully_replicated for s in jax.tree.leaves(shardings))
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=atol), got, want)


def test_every_fusion_parameter_has_logical_names_and_a_sharded_apply_equals_one_device():
    rng = np.random.default_rng(7)
    lengths = np.array([5, 2, 4, 1])
    text, image = padded_text(rng, lengths, 5, 8), rng.normal(size=(4, 6, 12)).astype(np.float32)
    wide = layers.TransformerSpec(width=32, depth=2, num_heads=4, mlp_dim=64)
    assert_named_and_sharded_like_one_device(CrossModalFusion(wide), text, image, lengths)
    assert_named_and_sharded_like_one_device(EarlyFusion(wide), image, text, lengths)
    assert_named_and_sharded_like_one_device(LateFusion(32, 64), image[:, 0], text[:, 0])


@pytest.mark.parametrize("call, message", [
    (lambda: LateFusion(4, 8, combine="max").init(jax.random.key(0), jnp.ones((2, 3)), jnp.ones((2, 3))),
     r"^LateFusion: combine 'max' is not one of \['concat', 'sum', 'product'\]"),
    (lambda: LateFusion(4, 8).init(jax.random.key(0), jnp.ones((2, 3)), jnp.ones((3, 3))),
     r"^LateFusion expects pooled image \[B, Di\] and text \[B, Dt\] features, got \[2, 3\] and \[3, 3\]"),
    (lambda: EarlyFusion(SPEC).init(jax.random.key(0), jnp.ones((2, 4, 8)), jnp.ones((2, 8))),
     r"^EarlyFusion expects token sequences \[B, T, D\] with one batch size, got image_tokens \[2, 4, 8\], "
     r"text_tokens \[2, 8\]"),
    (lambda: CrossModalFusion(SPEC).init(jax.random.key(0), jnp.ones((2, 4, 8)), jnp.ones((3, 4, 8))),
     r"^CrossModalFusion expects token sequences \[B, T, D\] with one batch size, got text_tokens \[2, 4, 8\], "
     r"image_tokens \[3, 4, 8\]"),
    (lambda: CrossModalFusion(SPEC).init(jax.random.key(0), jnp.ones((3, 4, 8)), jnp.ones((3, 4, 8)), np.array([2])),
     r"^CrossModalFusion expects text_lengths int \[3\] \(each caption's token count\), got int32 \[1\]"),
    (lambda: EarlyFusion(SPEC).init(jax.random.key(0), jnp.ones((2, 4, 8)), jnp.ones((2, 4, 8)), [[2], [3]]),
     r"^EarlyFusion expects text_lengths int \[2\] \(each caption's token count\), got int32 \[2, 1\]"),
    (lambda: EarlyFusion(SPEC).init(jax.random.key(0), jnp.ones((2, 4, 8)), jnp.ones((2, 4, 8)), np.ones(2)),
     r"^EarlyFusion expects text_lengths int \[2\] \(each caption's token count\), got float32 \[2\]"),
    (lambda: itm_loss(np.zeros((3, 2)), np.array([1, 2, 0])), r"^itm_loss labels must be 0 or 1, got \[0, 1, 2\]"),
])
def test_wrong_inputs_are_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_hard_negatives_are_drawn_with_softmax_weights_over_the_non_positive_columns():
    logits = np.array([[2.0, 0.5, 1.0, -1.0, 0.0], [0.3, 3.0, 0.3, 2.0, 1.0]], np.float32)
    positives = np.zeros((2, 5), bool)
    positives[1, 4] = True  # row 1's further positive; its diagonal (offset 2 + 1 = 3) is one too
    draws = 40_000
    keys = jax.random.split(jax.random.key(0), draws)
    sampled = np.asarray(jax.vmap(lambda k: hard_negatives(logits, k, offset=2, positives=positives))(keys))
    for row, excluded in ((0, {2}), (1, {3, 4})):
        weights = np.exp(logits[row].astype(np.float64))
        weights[list(excluded)] = 0
        want = weights / weights.sum()
        got = np.bincount(sampled[:, row], minlength=5) / draws
        assert (got[list(excluded)] == 0).all()
        np.testing.assert_allclose(got, want, atol=4 * np.sqrt(want * (1 - want) / draws).max())
    hardest = hard_negatives(logits, None, offset=2, positives=positives)
    np.testing.assert_array_equal(hardest, [0, 1])  # row 1: column 1 (3.0); columns 3 (2.0) and 4 are positives


@pytest.mark.parametrize("sample", [True, False])
def test_sharded_mining_with_one_key_draws_what_one_device_draws(sample):
    """Each device mines its 8 rows against the gathered 64 columns with the same key; every row used to draw
    the noise of its *local* index, so the 8 devices drew nearly the same negatives."""
    logits = np.asarray(jax.random.normal(jax.random.key(1), (64, 64)))
    key = jax.random.key(2) if sample else None
    want = hard_negatives(logits, key)
    mesh = make_mesh(data=8)

    def local(rows):
        return hard_negatives(rows, key, offset=jax.lax.axis_index("data") * rows.shape[0])

    got = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P("data")))(logits)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(np.asarray(want))) > 30  # 64 rows draw (or find) many different negatives


def test_hard_negatives_need_a_column_to_choose():
    with pytest.raises(ValueError, match=r"^hard_negatives needs logits \[b, B\] with B ≥ 2 columns to choose "
                                         r"from, got \[1, 1\]$"):
        hard_negatives(jnp.ones((1, 1)), None)


def test_matching_pairs_are_the_aligned_pairs_then_the_two_kinds_of_negatives():
    image_index, text_index, labels = matching_pairs(jnp.array([5, 0]), jnp.array([1, 4]), offset=2)
    np.testing.assert_array_equal(image_index, [2, 3, 2, 3, 1, 4])
    np.testing.assert_array_equal(text_index, [2, 3, 5, 0, 2, 3])
    np.testing.assert_array_equal(labels, [1, 1, 0, 0, 0, 0])


def test_itm_loss_is_the_mean_cross_entropy():
    logits = np.array([[0.0, 0.0], [1.0, 3.0], [2.0, -1.0]], np.float32)
    labels = np.array([1, 1, 0])
    want = np.mean([math.log(2), math.log(1 + math.exp(-2)), math.log(1 + math.exp(-3))])
    np.testing.assert_allclose(itm_loss(logits, labels), want, rtol=1e-6)


def test_a_cross_modal_fusion_learns_to_match_with_hard_negatives():
    """The pieces compose: 3B pairs from mined negatives, fused and scored, trained with Adam. Captions are
    noisy copies of their image's first token, so matching is learnable. A model that knows only the labels'
    1 : 2 ratio has a loss of 0.64; this one must get well below it."""
    batch, spec = 16, layers.TransformerSpec(width=16, depth=1, num_heads=2, mlp_dim=32)
    fusion, head = CrossModalFusion(spec), MatchingHead()
    rng = np.random.default_rng(8)

    def make_batch(seed):
        r = np.random.default_rng(seed)
        image = r.normal(size=(batch, 3, 8)).astype(np.float32)
        text = np.repeat(image[:, :1], 4, axis=1) + 0.1 * r.normal(size=(batch, 4, 8)).astype(np.float32)
        return image, text

    image, text = make_batch(0)
    params = {"fusion": jax.jit(fusion.init)(jax.random.key(0), text, image),
              "head": jax.jit(head.init)(jax.random.key(1), jnp.ones((1, 16)))}
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    def loss_fn(params, image, text, key):
        embeddings = image[:, 0] / np.sqrt(8)
        logits = embeddings @ text.mean(axis=1).T
        key_text, key_image = jax.random.split(key)
        pairs = matching_pairs(hard_negatives(logits, key_text), hard_negatives(logits.T, key_image))
        pooled, _ = fusion.apply(params["fusion"], text[pairs[1]], image[pairs[0]])
        return itm_loss(head.apply(params["head"], pooled), pairs[2])

    @jax.jit
    def step(params, opt_state, image, text, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, image, text, key)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(400):
        image, text = make_batch(int(rng.integers(1 << 30)))
        params, opt_state, loss = step(params, opt_state, image, text, jax.random.key(i))
        losses.append(float(loss))
    assert np.mean(losses[:10]) > 0.6 and np.mean(losses[-20:]) < 0.3, (losses[:10], losses[-20:])


def test_the_towers_token_sequences_are_what_their_pooling_reads():
    """`image_tokens` / `text_tokens` give the sequences a fusion block takes: the class token and the
    end-of-text token of those sequences, projected, are the model's own embeddings."""
    import mmjax.models as models

    config = models.get_config("clip-test")
    model = models.TwoTower(config)
    rng = np.random.default_rng(9)
    size, length = config.vision.image_size, config.text.context_length
    images = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    ids = np.zeros((2, length), np.int32)
    ids[0, :4], ids[1, :6] = [1, 5, 7, 63], [1, 8, 3, 3, 2, 63]  # 63: the largest id, CLIP's end of text
    params = jax.jit(model.init)(jax.random.key(0), image=images, text=ids)
    image_tokens = model.apply(params, images, method="image_tokens")
    text_tokens = model.apply(params, ids, method="text_tokens")
    assert image_tokens.shape == (2, config.vision.num_patches + 1, config.vision.width)
    assert text_tokens.shape == (2, length, config.text.width)
    p = nn.unbox(params)["params"]
    np.testing.assert_allclose(image_tokens[:, 0] @ p["image_proj"]["kernel"],
                               model.apply(params, images, method="encode_image"), atol=1e-5)
    eot = text_tokens[np.arange(2), np.argmax(ids, -1)]
    np.testing.assert_allclose(eot @ p["text_proj"]["kernel"], model.apply(params, ids, method="encode_text"),
                               atol=1e-5)
    pooled, _ = CrossModalFusion(SPEC).init_with_output(jax.random.key(1), text_tokens, image_tokens,
                                                        np.argmax(ids, -1) + 1)[0]
    assert pooled.shape == (2, SPEC.width)


def run_readme_example(section: str) -> tuple[str, dict]:
    """The first Python block of the README section titled `section`, and the names it defined when run."""
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme.split(f"\n### {section}\n", 1)[1], re.S).group(1)
    namespace = {}
    exec(compile(code, f"README.md ({section})", "exec"), namespace)
    return code, namespace


def test_the_readme_example_runs_and_prints_what_its_comments_say():
    code, names = run_readme_example("Fusion blocks and image–text matching")
    assert names["image_tokens"].shape == (8, 17, 128) and names["text_tokens"].shape == (8, 16, 128)
    assert re.search(r"# (\S+) here, before training", code).group(1) == f"{float(names['loss']):.2f}"
