"""Layer-wise learning-rate decay (`config.optim.layer_decay`, a tower's own `image_layer_decay` /
`text_layer_decay`): each parameter's AdamW step, divided by the step without decay, is the factor written out by
hand for the tiny models' two-layer towers, scanned or not, with frozen parameters, with per-tower decays, and in
a training run; bad values and a changed decay on resume are one line."""

import os
import re
import sys

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax.models import abstract_params, build_model, example_inputs, get_config
from mmjax.train import train
from mmjax.train.config import ConfigError, registered_model, validate
from mmjax.train.optim import make_optimizer
from mmjax.train.workdir import load_trained

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import clip_tiny  # noqa: E402

DECAY = 0.5
# The tiny models' towers have 2 layers each (checked below). Exponents of the tower's decay d: embeddings d³,
# layer 0 d², layer 1 d, the rest d⁰ = 1 (hand-derived from the rule "layer i of L steps d^(L - i), embeddings
# d^(L + 1)").
EXPONENTS = [
    (r"^image_encoder/(cls|patch_embed|pos_embed|ln_pre)/|^text_encoder/(token_embed|pos_embed)/", 3),
    (r"^image_encoder/mask_token$", 3),
    (r"^multimodal_encoder/(fusion_token|modality_embed|image_proj|text_proj)", 3),
    (r"^(image|text|multimodal)_encoder/encoder/layers_0/", 2),
    (r"^(image|text|multimodal)_encoder/encoder/layers_1/", 1),
    (r"^image_encoder/(ln_post|map_head)/|_encoder/ln_final/|^(image|text)_proj/|^logit_|_head/", 0),
]


def _expected(path: str, tower_decays=None) -> float:
    """The factor of `path`: its tower's decay (`tower_decays[tower]`, else `DECAY`) to its exponent."""
    matched = [exponent for pattern, exponent in EXPONENTS if re.search(pattern, path)]
    assert len(matched) == 1, f"{path} matches {len(matched)} of the hand-written patterns"
    return (tower_decays or {}).get(path.split("/")[0], DECAY) ** matched[0]


def _optim(layer_decay: float, frozen=(), **tower_decays):
    optim = clip_tiny.get_config("test").optim
    optim.warmup_steps, optim.layer_decay, optim.frozen = 0, layer_decay, frozen
    for key, value in tower_decays.items():
        optim[key] = value
    return optim


def _one_step(model: str, layer_decay: float, frozen=(), tower_decays=None, **options) -> dict:
    """The first AdamW update of random parameters for random gradients, flattened by path."""
    shapes = nn.unbox(abstract_params(get_config(model, **options)))
    keys = iter(jax.random.split(jax.random.key(0), 2 * len(jax.tree.leaves(shapes))))
    params = jax.tree.map(lambda s: jax.random.normal(next(keys), s.shape), shapes)
    grads = jax.tree.map(lambda s: jax.random.normal(next(keys), s.shape), shapes)
    tx = make_optimizer(_optim(layer_decay, frozen, **(tower_decays or {})), total_steps=100)
    updates, _ = tx.update(grads, tx.init(params), params)
    return flax.traverse_util.flatten_dict(jax.device_get(updates), sep="/")


def test_each_layer_steps_its_hand_derived_share_of_the_step():
    plain, decayed = _one_step("clip-test", 1.0), _one_step("clip-test", DECAY)
    for path, update in plain.items():
        assert np.abs(update).min() > 0, path
        np.testing.assert_allclose(decayed[path], _expected(path) * update, rtol=1e-6, err_msg=path)


def test_scanned_layers_decay_along_their_stacked_axis():
    plain = _one_step("clip-test", 1.0, scan_layers=True)
    decayed = _one_step("clip-test", DECAY, scan_layers=True)
    for path, update in plain.items():
        if "/encoder/layers/" in path:  # [layer, …]: layer 0 d², layer 1 d
            expected = update * np.array([DECAY ** 2, DECAY]).reshape((2,) + (1,) * (update.ndim - 1))
        else:
            expected = _expected(path) * update
        np.testing.assert_allclose(decayed[path], expected, rtol=1e-6, err_msg=path)


def test_siglip_and_flava_towers_and_heads():
    for model in ("siglip-test", "flava-test"):
        config = get_config(model)
        assert {config.vision.depth, config.text.depth, getattr(config, "multimodal", config.text).depth} == {2}
        plain, decayed = _one_step(model, 1.0), _one_step(model, DECAY)
        for path, update in plain.items():
            np.testing.assert_allclose(decayed[path], _expected(path) * update, rtol=1e-6,
                                       err_msg=f"{model}: {path}")


def test_the_image_and_text_towers_take_their_own_decays():
    """`text_layer_decay` 0.25 and `image_layer_decay` 0.75 with `layer_decay` 0.5: each tower by its own; FLAVA's
    multimodal encoder by `layer_decay`; an image decay of 1 leaves the image tower as it is."""
    for model, keys, decays in [
            ("clip-test", {"text_layer_decay": 0.25}, {"text_encoder": 0.25}),
            ("flava-test", {"image_layer_decay": 0.75, "text_layer_decay": 0.25},
             {"image_encoder": 0.75, "text_encoder": 0.25}),
            ("siglip-test", {"image_layer_decay": 1.0}, {"image_encoder": 1.0})]:
        plain, decayed = _one_step(model, 1.0), _one_step(model, DECAY, tower_decays=keys)
        for path, update in plain.items():
            np.testing.assert_allclose(decayed[path], _expected(path, decays) * update, rtol=1e-6,
                                       err_msg=f"{model}: {path}")
    only_text = _one_step("clip-test", 1.0, tower_decays={"text_layer_decay": DECAY})  # layer_decay 1: not off
    plain = _one_step("clip-test", 1.0)
    for path, update in plain.items():
        factor = _expected(path) if path.startswith("text_encoder/") else 1.0
        np.testing.assert_allclose(only_text[path], factor * update, rtol=1e-6, err_msg=path)


def test_a_flamingos_vision_tower_takes_the_image_decay_and_nothing_else_decays():
    """Flamingo's `vision` is an image tower (embeddings d³, layer 0 d², layer 1 d, its final norm 1); its
    resampler, gated blocks and language model step as they would without decay."""
    assert get_config("flamingo-test").vision.depth == 2
    plain = _one_step("flamingo-test", 1.0)
    decayed = _one_step("flamingo-test", 1.0, tower_decays={"image_layer_decay": DECAY})
    exponents = [(r"^vision/(cls|patch_embed|pos_embed|ln_pre)/", 3), (r"^vision/encoder/layers_0/", 2),
                 (r"^vision/encoder/layers_1/", 1)]
    for path, update in plain.items():
        exponent = sum(e for pattern, e in exponents if re.search(pattern, path))
        np.testing.assert_allclose(decayed[path], DECAY ** exponent * update, rtol=1e-6, err_msg=path)
    assert any(path.startswith("vision/ln_post/") for path in plain)


def test_frozen_parameters_stay_put_and_the_others_decay():
    frozen = ("^image_encoder/", "^image_proj/")
    plain, decayed = _one_step("clip-test", 1.0, frozen), _one_step("clip-test", DECAY, frozen)
    for path, update in plain.items():
        if path.startswith(("image_encoder/", "image_proj/")):
            assert not decayed[path].any(), path
        else:
            np.testing.assert_allclose(decayed[path], _expected(path) * update, rtol=1e-6)


def _initial_params(config) -> dict:
    """The parameters a fresh run of `config` starts from (its seed's init), flattened by path."""
    model_config = registered_model(config)
    images, tokens = example_inputs(model_config)
    params = jax.jit(build_model(model_config).init)(jax.random.key(config.seed), images, tokens)["params"]
    return flax.traverse_util.flatten_dict(jax.device_get(nn.unbox(params)), sep="/")


def test_a_run_with_layer_decay_moves_each_layer_its_share(tmp_path, capsys):
    """One step of a run with decay moves each parameter by its factor of what the same run without decay
    moved it (weight decay included)."""
    initial = _initial_params(clip_tiny.get_config("test"))  # both runs start from it: the same seed

    def moved(layer_decay: float, workdir: str) -> dict:
        config = clip_tiny.get_config("test")
        config.total_steps, config.optim.warmup_steps, config.optim.layer_decay = 1, 0, layer_decay
        train(config, workdir)
        trained = flax.traverse_util.flatten_dict(jax.device_get(load_trained(workdir).params), sep="/")
        return {path: trained[path] - initial[path] for path in trained}

    plain, decayed = moved(1.0, str(tmp_path / "plain")), moved(DECAY, str(tmp_path / "decayed"))
    assert ("mmjax: layer decay: image_encoder 0.5 (2 layers, embeddings ×0.125), text_encoder 0.5 (2 layers, "
            "embeddings ×0.125); final norms, heads, output projections and the rest ×1") in capsys.readouterr().err
    for path, step in plain.items():
        if path.endswith("attn/key/bias"):  # its gradient is 0 (a softmax ignores a shift shared by all keys)
            continue
        assert np.abs(step).max() > 1e-5, path
        np.testing.assert_allclose(decayed[path], _expected(path) * step, rtol=1e-3, atol=1e-6,
                                   err_msg=path)


@pytest.mark.parametrize("key", ["layer_decay", "image_layer_decay", "text_layer_decay"])
@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_a_layer_decay_outside_0_1_is_one_line(key, value):
    config = clip_tiny.get_config("test")
    config.optim[key] = value
    with pytest.raises(ConfigError, match=re.escape(f"config.optim.{key}={value} must be in (0, 1]")):
        validate(config)


def test_a_run_resumed_with_another_layer_decay_is_refused(tmp_path):
    config = clip_tiny.get_config("test")
    config.total_steps, config.optim.warmup_steps = 2, 0
    train(config, str(tmp_path), stop_after=1)
    config.optim.layer_decay = 0.8
    with pytest.raises(ConfigError, match=r"holds a run with optim.layer_decay=1.0, not 0.8"):
        train(config, str(tmp_path))
    config.optim.layer_decay, config.optim.text_layer_decay = 1.0, 0.8
    with pytest.raises(ConfigError, match=r"holds a run with optim.text_layer_decay=1.0, not 0.8"):
        train(config, str(tmp_path))
    assert load_trained(str(tmp_path)).step == 1
    config.optim.text_layer_decay = 1.0  # what the unset key meant: the run's layer_decay
    train(config, str(tmp_path))
    assert load_trained(str(tmp_path)).step == 2
