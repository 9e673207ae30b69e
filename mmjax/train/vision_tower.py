"""A Flamingo's vision tower started from a pretrained image tower (`config.init_vision`), as Flamingo is built:
a contrastively trained image encoder, frozen, under a resampler and a language model that learn to caption.

    mmjax train --config configs/flamingo_tiny.py --workdir runs/flamingo_clip --config.init_vision=runs/demo \
        --config.model_options.activation=quick_gelu "--config.optim.frozen=('^vision/',)"

The source is what `mmjax.load_pretrained` loads without extra files: an mmjax CLIP workdir,
`hf:ORG/NAME`, a Hugging Face or OpenCLIP directory, a big_vision `.npz` with its `.model` beside it. Its image
tower (`image_encoder`) replaces the freshly initialised `vision` parameters. It must have the Flamingo's vision
shape (`VisionConfig`; position embeddings are interpolated to the Flamingo's image size), compute with the same
activation and norm epsilon (one `BlockOptions` serves the whole Flamingo: set them with `config.model_options`),
and read images normalised as the run's data (`config.data.image_mean` / `image_std`). Each is checked in one line
when the run starts, before anything compiles (an `hf:` source's from its JSON files, before its weights
download), with the setting that fixes it. Only a new run reads the source;
a resumed one restores its own checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from mmjax.data.preprocess import ImagePreprocess
from mmjax.models import FlamingoConfig, TwoTowerConfig
from mmjax.models.vit import VisionConfig
from mmjax.parallel.distributed import raise_if_any_failed
from mmjax.train.config import ConfigError


def load_vision_tower(config: ml_collections.ConfigDict, model: FlamingoConfig) -> dict:
    """The parameters of `config.init_vision`'s image tower (NumPy, in the layout of the Flamingo's `vision`), loaded
    in every process; when any process cannot load or use them, every process raises one line."""
    from mmjax.pretrained import describe_hf, load_pretrained

    params, error = None, None
    try:
        if config.init_vision.startswith("hf:"):  # checked from its config files before the weights download
            with _said_of_init_vision(config):
                described = describe_hf(config.init_vision, model.vision.image_size)
            check_vision_tower(*described, model, config)
        with _said_of_init_vision(config):
            pretrained = load_pretrained(config.init_vision, image_size=model.vision.image_size)
        check_vision_tower(pretrained.config, pretrained.preprocess, model, config)
        params = pretrained.params["image_encoder"]
    except Exception as caught:  # reported by every process alike, below
        error = caught
    raise_if_any_failed(error, jax.process_count())
    return params


@contextlib.contextmanager
def _said_of_init_vision(config: ml_collections.ConfigDict) -> Iterator[None]:
    """A checkpoint's own one-line error, as a `ConfigError` said to be `config.init_vision`'s."""
    try:
        yield
    except (ValueError, OSError) as failed:
        raise ConfigError(f"config.init_vision={config.init_vision!r}: {failed}") from None


def check_vision_tower(pretrained: TwoTowerConfig, preprocess: ImagePreprocess, model: FlamingoConfig,
                       config: ml_collections.ConfigDict) -> None:
    """A one-line `ConfigError` when the image tower of a `pretrained` model (reading images as `preprocess`
    does) cannot stand in for `model`'s vision tower."""
    source = f"config.init_vision={config.init_vision!r}"
    differing = [f"{field.name} {getattr(pretrained.vision, field.name)!r} (the model's "
                 f"{getattr(model.vision, field.name)!r})" for field in dataclasses.fields(VisionConfig)
                 if getattr(pretrained.vision, field.name) != getattr(model.vision, field.name)]
    if differing:
        raise ConfigError(f"{source}: its image tower has {', '.join(differing)}; {config.model}'s vision tower "
                          f"must have its shape")
    for key in ("activation", "norm_eps"):
        theirs, ours = getattr(pretrained.options, key), getattr(model.options, key)
        if theirs != ours:
            raise ConfigError(f"{source} computes with {key} {theirs!r}, {config.model} with {ours!r}: add "
                              f"--config.model_options.{key}={theirs}")
    data = config.data
    if not (np.allclose(preprocess.mean, data.image_mean) and np.allclose(preprocess.std, data.image_std)):
        raise ConfigError(f"{source} reads images normalised with mean {tuple(preprocess.mean)} and std "
                          f"{tuple(preprocess.std)}, the run's data with {tuple(data.image_mean)} and "
                          f"{tuple(data.image_std)}: add \"--config.data.image_mean={tuple(preprocess.mean)}\" "
                          f"\"--config.data.image_std={tuple(preprocess.std)}\"")

