"""`config.init_vision`: a Flamingo whose vision tower starts from a trained CLIP run's image tower (frozen, as
Flamingo's is), `config.model_options.activation` / `norm_eps`, and the one-line refusals."""

import os
import shutil
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

import mmjax.models as models
from mmjax.convert import hf_clip
from mmjax.pretrained import describe_hf, load_pretrained
from mmjax.train.config import ConfigError, registered_model, validate
from mmjax.train.loop import train
from mmjax.train.vision_tower import load_vision_tower
from mmjax.train.workdir import load_trained

from config_changes import with_changes  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import clip_tiny  # noqa: E402
import flamingo_tiny  # noqa: E402
import siglip_tiny  # noqa: E402


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """clip-test trained 3 steps with quick_gelu (the registered model computes with gelu)."""
    run = tmp_path_factory.mktemp("clip") / "run"
    config = clip_tiny.get_config("test")
    config.total_steps, config.model_options.activation = 3, "quick_gelu"
    train(config, str(run))
    return run


def flamingo_config(**changes):
    config = flamingo_tiny.get_config("test")
    config.total_steps, config.checkpoint_every, config.optim.learning_rate = 3, 3, 1e-2
    return with_changes(config, changes)


def test_a_flamingo_starts_from_a_clip_runs_image_tower_and_keeps_it_frozen(clip_run, tmp_path):
    clip = load_trained(str(clip_run))
    assert clip.model.config.options.activation == "quick_gelu"  # the option reached the trained model
    source = tmp_path / "source"
    shutil.copytree(clip_run, source)
    options = {"model_options.activation": "quick_gelu", "optim.frozen": ("^vision/",)}
    train(flamingo_config(init_vision=str(source), **options), str(tmp_path / "run"))
    flamingo = load_trained(str(tmp_path / "run"))
    assert flamingo.model.config.options.activation == "quick_gelu"
    # every vision parameter is the CLIP run's image tower's, bit for bit, after 3 steps frozen
    assert jax.tree.structure(flamingo.params["vision"]) == jax.tree.structure(clip.params["image_encoder"])
    jax.tree.map(np.testing.assert_array_equal, flamingo.params["vision"], clip.params["image_encoder"])
    # the step-0 parameters of the same seed: the vision tower replaced, the resampler trained from there
    model_config = flamingo.model.config
    initial = nn.unbox(jax.jit(flamingo.model.init)(jax.random.key(0), *models.example_inputs(model_config)))["params"]
    assert not np.array_equal(initial["vision"]["cls"]["token"], clip.params["image_encoder"]["cls"]["token"])
    assert not np.array_equal(initial["resampler"]["latents"], flamingo.params["resampler"]["latents"])
    # a resumed run restores its checkpoint and never reads the source again: it may be gone, or left unnamed
    shutil.rmtree(source)
    train(flamingo_config(total_steps=4, checkpoint_every=4, **options), str(tmp_path / "run"))
    assert load_trained(str(tmp_path / "run")).step == 4


def test_an_image_tower_that_cannot_stand_in_is_one_line_before_anything_compiles(clip_run, tmp_path):
    config = flamingo_config(init_vision=str(clip_run))  # gelu here, quick_gelu there
    with pytest.raises(ConfigError, match=r"computes with activation 'quick_gelu', flamingo-test with 'gelu': add "
                                          r"--config.model_options.activation=quick_gelu$"):
        train(config, str(tmp_path / "a"))
    config = flamingo_config(init_vision=str(clip_run), **{"model_options.activation": "quick_gelu",
                                                            "data.image_mean": (0.4, 0.5, 0.5)})
    with pytest.raises(ConfigError, match=r"reads images normalised with mean \(0.5, 0.5, 0.5\) and std \(0.5, 0.5, "
                                          r"0.5\), the run's data with \(0.4, 0.5, 0.5\)"):
        train(config, str(tmp_path / "b"))
    siglip = siglip_tiny.get_config("test")
    siglip.total_steps = 3
    train(siglip, str(tmp_path / "siglip"))
    with pytest.raises(ConfigError, match=r"its image tower has pool 'map' \(the model's 'cls'\), pre_norm False "
                                          r"\(the model's True\), patch_bias True \(the model's False\); "
                                          r"flamingo-test's vision tower must have its shape"):
        train(flamingo_config(init_vision=str(tmp_path / "siglip")), str(tmp_path / "c"))
    with pytest.raises(ConfigError, match=f"config.init_vision='{tmp_path / 'none'}': there is no such checkpoint"):
        train(flamingo_config(init_vision=str(tmp_path / "none")), str(tmp_path / "d"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"config.init_vision='{tmp_path / 'empty'}': {tmp_path / 'empty'} has "
                                          f"neither config.json"):
        train(flamingo_config(init_vision=str(tmp_path / "empty")), str(tmp_path / "e"))
    assert not any((tmp_path / name).exists() for name in "abcde")  # nothing written for a refused run


def test_an_hf_image_tower_is_checked_from_its_config_files_before_the_weights_download(clip_run, tmp_path,
                                                                                         fake_hub):
    clip = load_pretrained(str(clip_run))
    hf_clip.export(clip, str(tmp_path / "hub" / "clip"))
    with pytest.raises(ConfigError, match=r"^config.init_vision='hf:fake/clip' computes with activation "
                                          r"'quick_gelu', flamingo-test with 'gelu'"):
        train(flamingo_config(init_vision="hf:fake/clip"), str(tmp_path / "refused"))
    assert fake_hub == [["*.json"]]  # the weights were never asked for
    assert not (tmp_path / "refused").exists()
    # at another image size, the description is what the whole checkpoint loads as
    loaded = load_pretrained("hf:fake/clip", image_size=24)
    assert describe_hf("hf:fake/clip", image_size=24) == (loaded.config, loaded.preprocess)
    assert loaded.config.vision.image_size == 24 and clip.config.vision.image_size == 16
    # a tower that fits: its configs first, then the weights; the parameters are the run's image tower
    fake_hub.clear()
    config = flamingo_config(init_vision="hf:fake/clip", **{"model_options.activation": "quick_gelu"})
    vision = load_vision_tower(config, registered_model(config))
    assert fake_hub[0] == ["*.json"] and "*.safetensors" in fake_hub[-1]
    assert jax.tree.structure(vision) == jax.tree.structure(clip.params["image_encoder"])
    jax.tree.map(np.testing.assert_array_equal, vision, clip.params["image_encoder"])


def test_a_run_resumes_with_its_models_own_activation_spelled_out_and_not_with_another(tmp_path):
    train(flamingo_config(), str(tmp_path / "run"))  # activation "" and norm_eps 0: flamingo-test's gelu, 1e-5
    train(flamingo_config(total_steps=4, checkpoint_every=4,
                          **{"model_options.activation": "gelu", "model_options.norm_eps": 1e-5}), str(tmp_path / "run"))
    assert load_trained(str(tmp_path / "run")).step == 4
    with pytest.raises(ConfigError, match="holds a run with model_options.activation='gelu', not 'quick_gelu'"):
        train(flamingo_config(total_steps=5, **{"model_options.activation": "quick_gelu"}), str(tmp_path / "run"))


@pytest.mark.parametrize("make, changes, message", [
    (clip_tiny.get_config, {"init_vision": "runs/demo"},
     r"config.init_vision='runs/demo' starts the vision tower of a registered Flamingo model \(flamingo-tiny, …\), "
     r"not of 'clip-test'"),
    (flamingo_tiny.get_config, {"init_vision": "open_clip:ViT-B-32"},
     r"config.init_vision='open_clip:ViT-B-32': an OpenCLIP model by name needs a weights file"),
    (clip_tiny.get_config, {"model_options.activation": "relu6"},
     r"config.model_options.activation='relu6' must be one of \["),
    (clip_tiny.get_config, {"model_options.norm_eps": -1.0}, r"config.model_options.norm_eps=-1.0 must be ≥ 0"),
])
def test_the_options_are_checked_in_one_line(make, changes, message):
    with pytest.raises(ConfigError, match=message):
        validate(with_changes(make("test"), changes))


def test_a_fine_tuned_checkpoint_keeps_its_own_activation(tmp_path):
    import finetune

    config = finetune.get_config()
    config.model = "hf:openai/clip-vit-base-patch32"
    config.model_options.norm_eps = 1e-6
    with pytest.raises(ConfigError, match=r"config.model_options.norm_eps=1e-06: a model fine-tuned from "
                                          r"hf:openai/clip-vit-base-patch32 computes with the checkpoint's own"):
        validate(config)
