"""Flamingo: an untrained model is its language model, NumPy references for the resampler and the gated block,
each text token reads only its own image, a tiny model learns to name an image's colour; decoding with the
key-value cache gives the whole forward pass's logits, greedy decoding a loop without cache, sampling the
tempered top-k softmax."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.losses import captioning_loss
from mmjax.models import layers
from mmjax.models.flamingo import (Flamingo, FlamingoConfig, GatedCrossAttentionBlock, PerceiverResampler,
                                   media_attention_mask, trainable_mask)
from mmjax.models import generation
from mmjax.models.generation import generate
from mmjax.models.text import TextConfig
from mmjax.models.vit import VisionConfig
from test_fusion import assert_named_and_sharded_like_one_device, float64, np_gelu, run_readme_example
from test_models import _np_block, _np_layer_norm

VISION = VisionConfig(width=16, depth=1, num_heads=2, mlp_dim=32, image_size=8, patch_size=4)
TEXT = TextConfig(width=16, depth=2, num_heads=2, mlp_dim=32, vocab_size=20, context_length=10, causal=True)
CONFIG = FlamingoConfig(VISION, TEXT, media_token_id=1, num_latents=3, resampler_depth=1)
IDS = np.array([[5, 1, 6, 7, 1, 8, 9, 3, 4, 2], [1, 6, 6, 6, 6, 6, 6, 6, 6, 6]], np.int32)  # images at 1, 4; at 0
# With `_moved_params` the logits reach ~15; float32 sums taken in another order (the cache's one query against
# the whole pass's ten, remat or not) differ by up to ~3e-5 there, while a wrong cache entry moves them by O(1).
DECODED_LOGITS_ATOL = 1e-4


def np_masked_attention(x, context, p, mask):
    """Multi-head attention of `x [B, T, D]` over `context [B, S, Dc]`, query t seeing key s where mask[b, t, s]."""
    q = np.einsum("btd,dhk->bthk", x, p["query"]["kernel"]) + p["query"]["bias"]
    k, v = (np.einsum("bsd,dhk->bshk", context, p[n]["kernel"]) + p[n]["bias"] for n in ("key", "value"))
    scores = np.where(mask[:, None], np.einsum("bthk,bshk->bhts", q, k) / math.sqrt(q.shape[-1]), -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    out = np.einsum("bhts,bshk->bthk", weights / weights.sum(-1, keepdims=True), v)
    return np.einsum("bthk,hkd->btd", out, p["out"]["kernel"]) + p["out"]["bias"]


def np_mlp(x, p):
    return np_gelu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def images(seed, batch=2, num_media=2):
    return np.random.default_rng(seed).normal(size=(batch, num_media, 8, 8, 3)).astype(np.float32)


def test_an_untrained_flamingo_is_its_language_model():
    """The gates start at 0: whatever the images, the logits are those of the causal LM alone (NumPy)."""
    model = Flamingo(CONFIG)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images(0), IDS))["params"]
    p = float64(params)
    x = p["token_embed"]["embedding"][IDS] + p["pos_embed"]["embedding"][None]
    for i in range(TEXT.depth):
        x = _np_block(x, p[f"layers_{i}"], True, 1e-5, np_gelu)
    want = _np_layer_norm(x, **p["ln_final"], eps=1e-5) @ p["lm_head"]["kernel"] + p["lm_head"]["bias"]
    for seed in (1, 2):
        np.testing.assert_allclose(model.apply({"params": params}, images(seed), IDS), want, atol=5e-5, rtol=1e-5)


def test_the_perceiver_resampler_matches_numpy_reference():
    media = np.random.default_rng(3).normal(size=(2, 5, 16)).astype(np.float32)
    resampler = PerceiverResampler(num_latents=3, depth=2, num_heads=2, mlp_dim=32)
    params = nn.unbox(jax.jit(resampler.init)(jax.random.key(1), media))["params"]
    p = float64(params)
    latents = np.broadcast_to(p["latents"], (2, 3, 16))
    for i in range(2):
        block = p[f"layers_{i}"]
        queries = _np_layer_norm(latents, **block["ln_latents"], eps=1e-5)
        keys = np.concatenate([_np_layer_norm(media, **block["ln_media"], eps=1e-5), queries], axis=1)
        latents = latents + np_masked_attention(queries, keys, block["attn"], np.ones((2, 3, 8), bool))
        latents = latents + np_mlp(_np_layer_norm(latents, **block["ln_mlp"], eps=1e-5), block["mlp"])
    want = _np_layer_norm(latents, **p["ln_final"], eps=1e-5)
    np.testing.assert_allclose(resampler.apply({"params": params}, media), want, atol=3e-5, rtol=1e-5)


def test_media_attention_mask_routes_each_token_to_the_latest_image():
    mask, sees = media_attention_mask(jnp.asarray(IDS), 1, num_media=2, num_latents=3)
    image_of = np.where(np.asarray(sees), np.asarray(mask).argmax(-1) // 3, -1)
    np.testing.assert_array_equal(image_of, [[-1, 0, 0, 0, 1, 1, 1, 1, 1, 1], [0] * 10])
    assert (np.asarray(mask).sum(-1) == np.where(np.asarray(sees), 3, 0)).all()  # all R latents of one image


def test_the_gated_block_matches_numpy_reference_with_open_gates():
    rng = np.random.default_rng(4)
    x, latents = rng.normal(size=(2, 10, 16)).astype(np.float32), rng.normal(size=(2, 6, 12)).astype(np.float32)
    mask, sees = media_attention_mask(jnp.asarray(IDS), 1, num_media=2, num_latents=3)
    block = GatedCrossAttentionBlock(num_heads=2, mlp_dim=32, options=layers.BlockOptions())
    params = nn.unbox(jax.jit(block.init)(jax.random.key(2), x, latents, mask, sees))["params"]
    params = {**params, "attn_gate": jnp.float32(0.7), "mlp_gate": jnp.float32(-1.3)}
    p, mask, sees = float64(params), np.asarray(mask), np.asarray(sees)
    attended = np_masked_attention(_np_layer_norm(x, **p["ln_cross"], eps=1e-5), latents, p["cross_attn"],
                                   mask | ~sees[..., None])  # rows that see nothing: any finite value, zeroed next
    want = x + np.tanh(0.7) * np.where(sees[..., None], attended, 0)
    want = want + np.tanh(-1.3) * np_mlp(_np_layer_norm(want, **p["ln_mlp"], eps=1e-5), p["mlp"])
    np.testing.assert_allclose(block.apply({"params": params}, x, latents, mask, sees), want, atol=3e-5, rtol=1e-5)


def open_gates(params, value=1.0):
    return {name: ({**subtree, "attn_gate": jnp.float32(value), "mlp_gate": jnp.float32(value)}
                   if name.startswith("gated_xattn_") else subtree) for name, subtree in params.items()}


def test_a_token_reads_no_image_placed_after_it():
    """Changing the second image leaves every token before its media token as it was (causal LM, routed
    cross-attention); changing either image leaves the token before the first image alone."""
    model = Flamingo(CONFIG)
    params = open_gates(nn.unbox(jax.jit(model.init)(jax.random.key(0), images(0), IDS))["params"])
    base = images(5)
    logits = lambda imgs: np.asarray(model.apply({"params": params}, imgs, IDS))  # noqa: E731
    want = logits(base)
    second, first = base.copy(), base.copy()
    second[:, 1] += 3.0
    first[:, 0] += 3.0
    changed_second, changed_first = logits(second), logits(first)
    np.testing.assert_allclose(changed_second[0, :4], want[0, :4], atol=1e-5)
    assert np.abs(changed_second[0, 4:] - want[0, 4:]).max() > 1e-2
    np.testing.assert_allclose(changed_second[1], want[1], atol=1e-5)  # row 1 has one media token: image 0 only
    np.testing.assert_allclose(changed_first[0, :1], want[0, :1], atol=1e-5)
    assert np.abs(changed_first[0, 1:] - want[0, 1:]).max() > 1e-2


def test_every_flamingo_parameter_has_logical_names_and_a_sharded_apply_equals_one_device():
    vision = VisionConfig(width=32, depth=1, num_heads=4, mlp_dim=64, image_size=8, patch_size=4)
    text = TextConfig(width=32, depth=2, num_heads=4, mlp_dim=64, vocab_size=20, context_length=10, causal=True)
    model = Flamingo(FlamingoConfig(vision, text, media_token_id=1, num_latents=3, resampler_depth=1))
    assert_named_and_sharded_like_one_device(model, images(7), IDS, atol=5e-5)


def test_trainable_mask_selects_the_resampler_and_the_gated_blocks():
    params = nn.unbox(jax.jit(Flamingo(CONFIG).init)(jax.random.key(0), images(0), IDS))["params"]
    mask = trainable_mask(params)
    trained = {name for name, subtree in mask.items() if all(jax.tree.leaves(subtree))}
    frozen = {name for name, subtree in mask.items() if not any(jax.tree.leaves(subtree))}
    assert trained == {"resampler", "gated_xattn_0", "gated_xattn_1"} and trained | frozen == set(params)


@pytest.mark.parametrize("change, message", [
    (dict(text=TextConfig(width=16, depth=1, num_heads=2, mlp_dim=32, vocab_size=20, context_length=10,
                          causal=False)), "the language model must be causal"),
    (dict(media_token_id=20), r"media_token_id 20 is not in the vocabulary \[0, 20\)"),
    (dict(cross_attention_every=0), "must be ≥ 1"),
    (dict(language_activation="relu"), r"language_activation 'relu' is not one of \['gelu', 'gelu_tanh'"),
    (dict(language_norm_eps="1e-5"), "language_norm_eps '1e-5' is not a number ≥ 0"),
])
def test_bad_configs_are_one_line_errors(change, message):
    fields = dict(vision=VISION, text=TEXT, media_token_id=1, num_latents=3, resampler_depth=1) | change
    with pytest.raises(ValueError, match=message):
        FlamingoConfig(**fields)


def test_a_tiny_flamingo_learns_to_name_the_colour_of_its_image():
    """Caption `[bos, <image>, colour]`: the colour token (10 red, 11 green) can be known from the image only. A
    model that ignores the image scores log 2 = 0.69 at best; this one must get far below."""
    text = TextConfig(width=16, depth=1, num_heads=2, mlp_dim=32, vocab_size=20, context_length=3, causal=True)
    config = FlamingoConfig(VISION, text, media_token_id=1, num_latents=2, resampler_depth=1)
    model = Flamingo(config)
    rng = np.random.default_rng(6)

    def batch():
        colour = rng.integers(0, 2, size=16)
        pixels = np.zeros((16, 1, 8, 8, 3), np.float32) + rng.normal(size=(16, 1, 8, 8, 3)).astype(np.float32) * 0.1
        pixels[np.arange(16), 0, :, :, colour] += 1.0
        return pixels, np.stack([np.zeros(16), np.ones(16), 10 + colour], axis=1).astype(np.int32)

    pixels, ids = batch()
    params = jax.jit(model.init)(jax.random.key(0), pixels, ids)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)
    lengths = np.full(16, 3)

    @jax.jit
    def step(params, opt_state, pixels, ids):
        loss, grads = jax.value_and_grad(lambda p: captioning_loss(model.apply(p, pixels, ids)[:, 1:],
                                                                   ids[:, 1:], lengths - 1))(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(300):
        params, opt_state, loss = step(params, opt_state, *batch())
        losses.append(float(loss))
    assert np.mean(losses[-20:]) < 0.1, losses[-20:]


def test_the_readme_example_runs():
    _, names = run_readme_example("Flamingo")
    assert names["logits"].shape == (2, 16, 1000) and np.isfinite(float(names["loss"]))
    assert isinstance(names["optimizer"], optax.GradientTransformation)
    trained = names["trained"]
    assert all(jax.tree.leaves(trained["resampler"])) and not any(jax.tree.leaves(trained["vision"]))
    captions = names["captions"]  # the prompts kept, the rest the model's tokens (an untrained model's)
    assert captions.shape == (2, 16) and (captions[:, :2] == [1, 3]).all()


def test_the_documented_freezing_recipe_changes_only_the_trainable_parameters():
    """`optax.masked` (the first recipe documented) passed the frozen leaves' gradients through as updates: the
    language model took a gradient-ascent step of size 1."""
    model = Flamingo(CONFIG)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images(0), IDS))["params"]
    trained = trainable_mask(params)
    optimizer = optax.multi_transform({True: optax.adam(1e-2), False: optax.set_to_zero()}, trained)
    loss = lambda p: captioning_loss(model.apply({"params": p}, images(1), IDS), IDS, np.array([10, 10]),  # noqa: E731
                                     ignore_ids=(1,))
    grads = jax.jit(jax.grad(loss))(params)
    updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    stepped = optax.apply_updates(params, updates)
    for name in params:
        change = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                     for a, b in zip(jax.tree.leaves(stepped[name]), jax.tree.leaves(params[name])))
        frozen_gradient = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads[name]))
        if name.startswith("gated_xattn_"):
            assert change > 1e-3, name
        else:  # the vision tower's and the resampler's gradients are 0 while the gates are closed; the LM's are not
            assert change == 0 and (frozen_gradient > 0 or name in ("vision", "resampler")), name


def test_remat_gives_the_same_gradients_and_scan_is_refused():
    base = nn.unbox(jax.jit(Flamingo(CONFIG).init)(jax.random.key(0), images(0), IDS))["params"]
    params = open_gates(base, 0.5)
    grads = []
    for policy in ("none", "full"):
        config = FlamingoConfig(VISION, TEXT, 1, num_latents=3, resampler_depth=1,
                                options=layers.BlockOptions(remat_policy=policy))
        model = Flamingo(config)
        loss = lambda p: jnp.sum(model.apply({"params": p}, images(2), IDS) ** 2)  # noqa: E731
        grads.append(jax.grad(loss)(params))
        rematerialised = str(jax.make_jaxpr(loss)(params)).count("remat2[")
        # every block: 1 ViT block, 1 resampler block, 2 gated and 2 language-model blocks
        assert rematerialised == (0 if policy == "none" else 6), (policy, rematerialised)
    # float32 sums in another order: the tolerance follows the gradients' scale (entries reach ~1000 here; some,
    # such as the attention keys' biases, are 0 up to rounding)
    scale = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads[0]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7 * scale), *grads)
    with pytest.raises(ValueError, match="FlamingoConfig: scan_layers is not supported"):
        FlamingoConfig(VISION, TEXT, 1, options=layers.BlockOptions(scan_layers=True))


def _naive_greedy(model, params, media, prompts, lengths, num_tokens, eos_id):
    """Token by token through the whole model (vision tower included) on a freshly padded buffer, in Python."""
    out = np.zeros_like(prompts)
    apply = jax.jit(lambda p, m, t: model.apply({"params": p}, m, t))
    for b, length in enumerate(lengths):
        sequence = list(prompts[b, :length])
        for _ in range(num_tokens):
            if len(sequence) == TEXT.context_length or eos_id in sequence[length:]:
                break
            buffer = np.array([sequence + [0] * (TEXT.context_length - len(sequence))], np.int32)
            logits = apply(params, media[b:b + 1], buffer)
            sequence.append(int(np.argmax(logits[0, len(sequence) - 1])))
        out[b, :len(sequence)] = sequence
    return out


def test_greedy_generation_equals_a_token_by_token_loop_over_the_whole_model():
    model = Flamingo(CONFIG)
    media = images(4, batch=3)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), media, IDS[:1].repeat(3, 0)))["params"]
    rng = np.random.default_rng(5)  # every parameter moved, the gates open: the images change the text
    params = jax.tree.map(lambda x: x + rng.normal(size=np.shape(x)).astype(np.float32), params)
    prompts = np.zeros((3, TEXT.context_length), np.int32)
    prompts[0, :3], prompts[1, :2], prompts[2, :8] = [1, 5, 6], [1, 7], [3, 1, 4, 4, 9, 1, 8, 2]
    lengths = np.array([3, 2, 8])
    without_stop = _naive_greedy(model, params, media, prompts, lengths, 6, eos_id=-1)
    eos = int(without_stop[0, 4])  # row 0's second new token: row 0 stops there, row 1 earlier
    assert eos not in without_stop[0, :4] and eos in without_stop[1, 2:4]
    want = _naive_greedy(model, params, media, prompts, lengths, 6, eos_id=eos)
    got = generate(model, params, media, prompts, lengths, num_tokens=6, eos_id=eos)
    np.testing.assert_array_equal(got, want)
    assert got[0, 4] == eos and not got[0, 5:].any()
    assert (got[2, 8:] != 0).all()  # row 2 ran into the end of the buffer
    np.testing.assert_array_equal(generate(model, params, media, prompts, lengths, 6), without_stop)
    # every prompt ≥ 6 long: the cache of positions 0–7 is filled in one pass (stale past 5), steps start at 5
    long_prompts = np.where(np.arange(TEXT.context_length) < 8, prompts + 10, 0).astype(np.int32)
    for long_lengths in ([6, 8, 7], [9, 10, 9]):
        np.testing.assert_array_equal(generate(model, params, media, long_prompts, long_lengths, 3),
                                      _naive_greedy(model, params, media, long_prompts, long_lengths, 3, -1))
    other = generate(model, params, images(9, batch=3), prompts, lengths, 6)
    assert (other != without_stop).any()  # the tokens read the images
    with pytest.raises(ValueError, match=r"prompt_lengths must be 3 lengths in \[1, 10\]"):
        generate(model, params, media, prompts, [3, 0, 8], 2)


def _moved_params(model, media, seed=5):
    """Parameters with every entry moved and the gates open: the images change the text."""
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), media, IDS[:1].repeat(len(media), 0)))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + rng.normal(size=np.shape(x)).astype(np.float32), params)


@pytest.mark.parametrize("every, remat", [(1, "none"), (2, "full")])
def test_every_cached_decoding_position_gives_the_logits_of_the_whole_forward_pass(every, remat):
    config = FlamingoConfig(VISION, TEXT, media_token_id=1, num_latents=3, resampler_depth=1,
                            cross_attention_every=every, options=layers.BlockOptions(remat_policy=remat))
    model, media = Flamingo(config), images(4)
    params = _moved_params(model, media)
    full = np.asarray(model.apply({"params": params}, media, IDS))  # IDS: two images in row 0, one in row 1
    latents = model.apply({"params": params}, media)
    variables = {"params": params}
    decode = jax.jit(lambda variables, t: model.apply(variables, None, IDS, latents=latents, decode_index=t,
                                                      mutable=["cache"]))
    for t in range(TEXT.context_length):
        logits, cache = decode(variables, t)
        variables = {"params": params, **cache}
        np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=1e-5, atol=DECODED_LOGITS_ATOL,
                                   err_msg=f"position {t}")
    assert cache["cache"]["layers_0"]["attn"]["cached_key"].shape == (2, TEXT.context_length, 2, 8)


@pytest.mark.parametrize("span", [1, 4, 7, 10])
def test_a_prefilled_span_and_the_steps_after_it_give_the_logits_of_the_whole_forward_pass(span):
    """Positions 0 … span − 1 in one pass, the rest one at a time; for spans past 5 the prefill reads a buffer
    whose positions from 5 on are another text, and the steps from 5 on (fed the true one) overwrite them."""
    config = FlamingoConfig(VISION, TEXT, media_token_id=1, num_latents=3, resampler_depth=1, cross_attention_every=2)
    model, media = Flamingo(config), images(4)
    params = _moved_params(model, media)
    full = np.asarray(model.apply({"params": params}, media, IDS))
    latents = model.apply({"params": params}, media)
    start = min(span, 5)
    stale = np.where(np.arange(TEXT.context_length) < start, IDS, (IDS * 7 + 3) % TEXT.vocab_size)
    logits, cache = model.apply({"params": params}, None, stale, latents=latents, decode_index=0, decode_span=span,
                                mutable=["cache"])
    assert logits.shape == (2, span, TEXT.vocab_size)
    np.testing.assert_allclose(logits[:, :start], full[:, :start], rtol=1e-5, atol=DECODED_LOGITS_ATOL)
    decode = jax.jit(lambda variables, t: model.apply(variables, None, IDS, latents=latents, decode_index=t,
                                                      mutable=["cache"]))
    for t in range(start, TEXT.context_length):
        logits, cache = decode({"params": params, **cache}, t)
        np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=1e-5, atol=DECODED_LOGITS_ATOL,
                                   err_msg=f"position {t}")


def test_decoding_is_causal_self_attention_within_the_cache():
    attention = layers.MultiHeadAttention(2, causal=False)
    x = np.zeros((1, 1, 8), np.float32)
    step = layers.DecodeStep(jnp.int32(0), 4)
    with pytest.raises(ValueError, match=r"decoding is causal self-attention of at most 4 tokens"):
        attention.init(jax.random.key(0), x, decode=step)
    with pytest.raises(ValueError, match=r"got queries \[1, 5, 8\]"):
        layers.MultiHeadAttention(2, causal=True).init(jax.random.key(0), np.zeros((1, 5, 8), np.float32),
                                                       decode=step)
    model, media = Flamingo(CONFIG), images(4)
    params = _moved_params(model, media)
    full = np.asarray(model.apply({"params": params}, media, IDS))
    latents = model.apply({"params": params}, media)
    four = jax.jit(lambda variables, t: model.apply(variables, None, IDS, latents=latents, decode_index=t,
                                                    decode_span=4, mutable=["cache"]))
    _, cache = model.apply({"params": params}, None, IDS, latents=latents, decode_index=0, decode_span=10,
                           mutable=["cache"])
    for traced, clamped in [(9, 6), (-2, 0)]:  # a traced index out of range is clamped to one in range
        logits, _ = four({"params": params, **cache}, traced)
        np.testing.assert_allclose(logits, full[:, clamped:clamped + 4], rtol=1e-5, atol=DECODED_LOGITS_ATOL,
                                   err_msg=str(traced))
    for index, span, message in [(8, 3, "decode_index 8 and decode_span 3 do not lie within the 10 tokens"),
                                 (0, 11, r"decode_span 11 needs a decode_index and must lie in \[1, 10\]"),
                                 (None, 2, "decode_span 2 needs a decode_index")]:
        with pytest.raises(ValueError, match=message):
            model.apply({"params": params}, media, IDS, decode_index=index, decode_span=span, mutable=["cache"])


def test_sampled_tokens_follow_the_tempered_top_k_softmax():
    """4 000 rows continue one prompt by one token each: the tokens' frequencies are the softmax of the
    logits / temperature over the top k (within 4.5 standard errors), no other token is drawn, top_k=1 is
    greedy, and another seed draws other tokens."""
    model, rows, temperature, top_k = Flamingo(CONFIG), 4000, 3.0, 4
    media = np.repeat(images(4, batch=1), rows, axis=0)
    params = _moved_params(model, media[:1])
    prompts = np.zeros((rows, TEXT.context_length), np.int32)
    prompts[:, :3] = [5, 1, 6]
    logits = np.asarray(model.apply({"params": params}, media[:1], prompts[:1]), np.float64)[0, 2] / temperature
    top = np.argsort(logits)[::-1][:top_k]
    probabilities = np.exp(logits[top] - logits[top].max())
    probabilities /= probabilities.sum()
    assert probabilities.min() > 0.05  # every kept token is drawn often enough to be counted
    lengths = np.full(rows, 3)
    drawn = generate(model, params, media, prompts, lengths, 1, temperature=temperature, top_k=top_k, seed=3)[:, 3]
    assert set(drawn) <= set(top)
    frequencies = np.array([(drawn == token).mean() for token in top])
    np.testing.assert_array_less(np.abs(frequencies - probabilities),
                                 4.5 * np.sqrt(probabilities * (1 - probabilities) / rows))
    again = generate(model, params, media, prompts, lengths, 1, temperature=temperature, top_k=top_k, seed=4)[:, 3]
    assert (again != drawn).mean() > 0.3
    greedy = generate(model, params, media[:2], prompts[:2], lengths[:2], 4)
    np.testing.assert_array_equal(generate(model, params, media[:2], prompts[:2], lengths[:2], 4, top_k=1,
                                           temperature=1.0), greedy)
    compiled = generation._decode._cache_size()
    generate(model, params, media, prompts, lengths, 1, temperature=0.5, top_k=top_k, seed=3, eos_id=7)
    assert generation._decode._cache_size() == compiled  # temperature, eos and seed are traced
    with pytest.raises(ValueError, match=r"temperature must be ≥ 0 and top_k in \[0, 20\], got 1.0 and 21"):
        generate(model, params, media[:2], prompts[:2], lengths[:2], 4, temperature=1.0, top_k=21)
    with pytest.raises(ValueError, match=r"got nan and 0"):
        generate(model, params, media[:2], prompts[:2], lengths[:2], 4, temperature=float("nan"))


def test_top_k_keeps_exactly_k_tokens_when_logits_tie():
    keys = jax.random.split(jax.random.key(0), 500)
    draw = jax.vmap(lambda key, logits, k: generation._choose(False, k, logits, jnp.float32(1.0), key),
                    in_axes=(0, None, None))
    assert set(np.asarray(draw(keys, jnp.array([[3.0, 3, 3, 0]]), 1)).ravel()) == {0}
    assert set(np.asarray(draw(keys, jnp.array([[5.0, 3, 3, 3]]), 2)).ravel()) == {0, 1}
