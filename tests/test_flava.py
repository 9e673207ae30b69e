"""FLAVA: the heads against NumPy on the encoders' own outputs, masked patches and text padding that change
nothing, the objective reaching every parameter, and a batch it can fit."""

import dataclasses

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import optax
import pytest

from mmjax.losses import clip_loss, mask_tokens, masked_lm_loss, masked_patch_loss, patchify, random_patch_mask
from mmjax.models import layers
from mmjax.models.flava import Flava, FlavaConfig, padded_lengths
from mmjax.models.fusion import EarlyFusion
from mmjax.models.text import TextConfig, TextTransformer
from mmjax.models.vit import VisionConfig, ViT
from test_fusion import assert_named_and_sharded_like_one_device, float64, run_readme_example

VISION = VisionConfig(width=16, depth=1, num_heads=2, mlp_dim=32, image_size=8, patch_size=4)
TEXT = TextConfig(width=16, depth=1, num_heads=2, mlp_dim=32, vocab_size=30, context_length=8, causal=False,
                  pool="cls")
MULTIMODAL = layers.TransformerSpec(width=16, depth=1, num_heads=2, mlp_dim=32)
CONFIG = FlavaConfig(VISION, TEXT, MULTIMODAL, embed_dim=8, mask_token_id=3)


def batch(seed=0, size=4):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(size, 8, 8, 3)).astype(np.float32)
    lengths = rng.integers(3, 9, size=size).astype(np.int32)
    ids = rng.integers(5, 30, size=(size, 8)).astype(np.int32)
    ids[:, 0] = 1  # [CLS]
    ids[np.arange(size), lengths - 1] = 2  # [SEP], the end of each caption
    ids[np.arange(8)[None, :] >= lengths[:, None]] = 0
    return images, ids, lengths


def normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_every_head_reads_the_encoder_it_should():
    """The standalone ViT, text transformer and EarlyFusion on FLAVA's own parameters, and the heads in NumPy."""
    images, ids, lengths = batch()
    model = Flava(CONFIG)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, ids, lengths))["params"]
    out = model.apply({"params": params}, images, ids, lengths)
    image_tokens = ViT(VISION, CONFIG.options).apply({"params": params["image_encoder"]}, images, return_tokens=True)
    text_tokens = TextTransformer(TEXT, CONFIG.options).apply({"params": params["text_encoder"]}, ids,
                                                               return_tokens=True, lengths=lengths)
    pooled, tokens = EarlyFusion(MULTIMODAL, CONFIG.options).apply({"params": params["multimodal_encoder"]},
                                                                    image_tokens, text_tokens, lengths)
    p = float64(params)
    dense = lambda x, head: np.asarray(x, np.float64) @ p[head]["kernel"] + p[head].get("bias", 0)  # noqa: E731
    want = {"image_emb": normalize(dense(image_tokens[:, 0], "image_proj")),
            "text_emb": normalize(dense(text_tokens[:, 0], "text_proj")),
            "itm_logits": np.asarray(pooled, np.float64) @ p["itm_head"]["itm"]["kernel"] + p["itm_head"]["itm"]["bias"],
            "mlm_logits": dense(text_tokens, "mlm_head"), "mmm_logits": dense(tokens[:, 1 + 5:], "mmm_head"),
            "mim_pixels": dense(image_tokens[:, 1:], "mim_head")}
    assert out["mmm_logits"].shape == (4, 8, 30) and out["mim_pixels"].shape == (4, 4, 48)
    for name, value in want.items():
        np.testing.assert_allclose(out[name], value, atol=3e-5, rtol=1e-5, err_msg=name)


def test_masked_patches_and_text_padding_change_no_output():
    images, ids, lengths = batch(1)
    model = Flava(CONFIG)
    variables = jax.jit(model.init)(jax.random.key(0), images, ids, lengths)
    patch_mask = np.zeros((4, 4), bool)
    patch_mask[:, [0, 3]] = True  # the top-left and bottom-right 4 × 4 patches
    want = model.apply(variables, images, ids, lengths, patch_mask)
    other_pixels, other_padding = images.copy(), ids.copy()
    other_pixels[:, :4, :4] += 5.0
    other_pixels[:, 4:, 4:] -= 5.0
    other_padding[np.arange(8)[None, :] >= lengths[:, None]] = 17
    got = model.apply(variables, other_pixels, other_padding, lengths, patch_mask)
    for name in ("image_emb", "text_emb", "itm_logits", "mim_pixels"):
        np.testing.assert_allclose(got[name], want[name], atol=2e-5, err_msg=name)
    valid = np.arange(8)[None, :] < lengths[:, None]
    np.testing.assert_allclose(np.asarray(got["mlm_logits"])[valid], np.asarray(want["mlm_logits"])[valid], atol=2e-5)
    unmasked = other_pixels.copy()
    unmasked[:, :4, 4:] += 5.0  # patch 1 is not masked: it must count
    assert np.abs(model.apply(variables, unmasked, ids, lengths, patch_mask)["image_emb"] - want["image_emb"]).max() > 1e-3


def test_the_objective_reaches_every_parameter_and_its_contrastive_part_is_clip_loss():
    images, ids, lengths = batch(2)
    model = Flava(CONFIG)
    variables = jax.jit(model.init)(jax.random.key(0), images, ids, lengths)

    def objective(variables):
        losses = model.apply(variables, images, ids, lengths, jax.random.key(1), method="losses")
        return losses["total"], losses

    (_, losses), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(variables)  # one compile, not op by op
    assert set(losses) == {"contrastive", "itm", "mlm", "mim", "mmm", "total"}
    assert all(np.isfinite(float(v)) for v in losses.values())
    np.testing.assert_allclose(losses["total"], sum(float(losses[k]) for k in ("contrastive", "itm", "mlm", "mim",
                                                                                "mmm")), rtol=1e-6)
    out = jax.jit(model.apply)(variables, images, ids, lengths)
    np.testing.assert_allclose(losses["contrastive"], clip_loss(out["image_emb"], out["text_emb"], out["logit_scale"]),
                               rtol=1e-5)
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(grads))[0]
    untouched = [jax.tree_util.keystr(path) for path, g in flat if not np.abs(np.asarray(g)).max() > 0]
    assert not untouched, untouched


def test_the_masked_heads_on_the_chosen_positions_alone_equal_them_on_every_position():
    """`losses` runs the MLM and MMM heads on `prediction_positions` only; `__call__` on all L positions."""
    images, ids, lengths = batch(6)
    config = dataclasses.replace(CONFIG, mask_prob=0.5, max_predictions=2)  # captions with more: the cap binds
    model = Flava(config)
    variables = jax.jit(model.init)(jax.random.key(0), images, ids, lengths)
    key = jax.random.key(7)
    losses = model.apply(variables, images, ids, lengths, key, method="losses")
    _, text_key, patch_key = jax.random.split(key, 3)  # the draws `losses` makes, in its order
    positions = np.arange(8)[None, :]
    masked_ids, weights = mask_tokens(ids, text_key, mask_id=3, vocab_size=30, mask_prob=0.5,
                                      maskable=(positions >= 1) & (positions < lengths[:, None] - 1),
                                      max_predictions=2)
    assert int(weights.sum()) >= 4 and int(weights.sum(axis=1).max()) == 2, weights
    patch_mask = random_patch_mask(patch_key, 4, 4, config.mim_ratio)
    out = model.apply(variables, images, masked_ids, lengths, patch_mask)
    for name, logits in (("mlm", "mlm_logits"), ("mmm", "mmm_logits")):
        np.testing.assert_allclose(losses[name], masked_lm_loss(out[logits], ids, weights), rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(losses["mim"], masked_patch_loss(out["mim_pixels"], patchify(images, 4), patch_mask),
                               rtol=2e-5)


def test_caption_lengths_are_read_from_the_padding_after_the_end():
    ids = np.array([[2, 5, 0, 7, 9, 0, 0, 0],  # a pad id inside the caption (CLIP's "!") is text
                    [2, 5, 6, 7, 9, 4, 3, 9],  # no padding
                    [0, 0, 0, 0, 0, 0, 0, 0],  # nothing: length 1, so the attention has a key
                    [2, 9, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(padded_lengths(ids, 0), [5, 8, 1, 2])
    np.testing.assert_array_equal(padded_lengths(np.array([[2, 5, 7, 1, 9, 9, 9, 9], [2, 9, 4, 1, 9, 9, 9, 9]]), 9),
                                  [4, 4])


def test_encode_image_and_text_are_the_contrastive_embeddings_before_normalising():
    """What evaluation and search embed: the caption lengths read from the padding, as `batch` built them."""
    images, ids, lengths = batch(5)
    model = Flava(CONFIG)
    variables = jax.jit(model.init)(jax.random.key(0), images, ids, lengths)
    want = model.apply(variables, images, ids, lengths)
    got_images = model.apply(variables, images, method="encode_image")
    got_texts = model.apply(variables, ids, method="encode_text")
    assert got_images.shape == got_texts.shape == (4, 8) and got_texts.dtype == np.float32
    np.testing.assert_allclose(normalize(np.asarray(got_images)), want["image_emb"], atol=2e-6)
    np.testing.assert_allclose(normalize(np.asarray(got_texts)), want["text_emb"], atol=2e-6)
    unpadded = model.apply(variables, images, ids, None)["text_emb"]  # every position attended: another embedding
    assert np.abs(np.asarray(unpadded) - want["text_emb"]).max() > 1e-3


def test_flava_fits_a_batch():
    images, ids, lengths = batch(3, size=8)
    model = Flava(CONFIG)
    params = jax.jit(model.init)(jax.random.key(0), images, ids, lengths)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        loss, grads = jax.value_and_grad(
            lambda p: model.apply(p, images, ids, lengths, key, method="losses")["total"])(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(60):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5]), (losses[:5], losses[-10:])


def test_every_flava_parameter_has_logical_names_and_a_sharded_apply_equals_one_device():
    images, ids, lengths = batch(4, size=8)
    wide = dict(width=32, num_heads=4, mlp_dim=64)
    config = FlavaConfig(VisionConfig(depth=1, image_size=8, patch_size=4, **wide),
                         TextConfig(depth=1, vocab_size=30, context_length=8, causal=False, pool="cls", **wide),
                         layers.TransformerSpec(depth=1, **wide), embed_dim=8, mask_token_id=3)
    assert_named_and_sharded_like_one_device(Flava(config), images, ids, lengths, atol=5e-5)


@pytest.mark.parametrize("change, message", [
    (dict(vision=VisionConfig(width=16, depth=1, num_heads=2, mlp_dim=32, image_size=8, patch_size=4, pool="map")),
     "the image encoder must pool its class token"),
    (dict(text=TextConfig(width=16, depth=1, num_heads=2, mlp_dim=32, vocab_size=30, context_length=8)),
     r"the text encoder must be bidirectional \(text.causal=False\)"),
    (dict(mask_token_id=30), r"mask_token_id 30 is not in the vocabulary \[0, 30\)"),
    (dict(mask_token_id=0), "pad_id and mask_token_id are both 0"),
    (dict(max_predictions=9), r"max_predictions 9 must lie in \[1, 8\] \(the context length\)"),
])
def test_bad_configs_are_one_line_errors(change, message):
    fields = dict(vision=VISION, text=TEXT, multimodal=MULTIMODAL, embed_dim=8, mask_token_id=3) | change
    with pytest.raises(ValueError, match=message):
        FlavaConfig(**fields)


def test_a_wrong_patch_mask_is_one_line_error():
    images, ids, lengths = batch()
    with pytest.raises(ValueError, match=r"ViT expects patch_mask \[B, 4\] for \[4, 8, 8, 3\] images, got \[4, 5\]"):
        Flava(CONFIG).init(jax.random.key(0), images, ids, lengths, jnp.zeros((4, 5), bool))


def test_the_readme_example_prints_what_the_readme_shows(capsys):
    import pathlib
    import re

    run_readme_example("FLAVA")
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text().split("\n### FLAVA\n", 1)[1]
    shown = re.search(r"```\n(\{.*?\n)```", readme, re.S).group(1)  # the output block after the code
    assert capsys.readouterr().out == shown
