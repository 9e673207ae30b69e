"""Named model sizes: a size is a registry entry, never a new class.

`list_models()` gives the names, `get_config(name)` the frozen config (a `TwoTowerConfig`; a `FlavaConfig` for
the `flava-*` entries, a `FlamingoConfig` for the `flamingo-*` ones), `create_model(name)` the module and
`param_count(name)` counts parameters by an abstract `init` (nothing is allocated, nothing is stored).
"""

from __future__ import annotations

import dataclasses
import difflib
import math

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.flamingo import Flamingo, FlamingoConfig
from mmjax.models.flava import Flava, FlavaConfig
from mmjax.models.layers import BlockOptions, TransformerSpec
from mmjax.models.text import TextConfig
from mmjax.models.two_tower import TwoTower, TwoTowerConfig
from mmjax.models.vit import VisionConfig


def _tower(width: int, depth: int, heads: int, mlp_ratio: int = 4) -> dict:
    return dict(width=width, depth=depth, num_heads=heads, mlp_dim=width * mlp_ratio)


def _clip(image_size, patch_size, vision, text, embed_dim, vocab_size=49408, context_length=77,
          activation="gelu") -> TwoTowerConfig:
    """OpenAI CLIP layout: class token, pre-norm, causal text pooled at end-of-text."""
    return TwoTowerConfig(
        vision=VisionConfig(image_size=image_size, patch_size=patch_size, **vision),
        text=TextConfig(vocab_size=vocab_size, context_length=context_length, **text),
        embed_dim=embed_dim,
        options=BlockOptions(activation=activation, norm_eps=1e-5),
    )


def _siglip(image_size, patch_size, vision, text, vocab_size, context_length) -> TwoTowerConfig:
    """big_vision SigLIP layout: MAP pooling, no class token, bidirectional text pooled at the last token."""
    return TwoTowerConfig(
        vision=VisionConfig(image_size=image_size, patch_size=patch_size, pool="map", pre_norm=False,
                            patch_bias=True, **vision),
        text=TextConfig(vocab_size=vocab_size, context_length=context_length, causal=False, pool="last", **text),
        embed_dim=vision["width"],
        options=BlockOptions(activation="gelu_tanh", norm_eps=1e-6),
        image_projection=False,
        text_projection_bias=True,
        logit_scale_init=math.log(10.0),
        logit_bias_init=-10.0,
    )


def _flava(image_size, patch_size, tower, embed_dim, vocab_size, context_length) -> FlavaConfig:
    """FLAVA's layout at one tower shape: ViT with a class token, a bidirectional text encoder read at its first
    token, a multimodal encoder of the same shape. [MASK] is the vocabulary's last id, which a tokenizer trained
    with it must never emit; padding is id 0, as mmjax's tokenizers pad."""
    return FlavaConfig(
        vision=VisionConfig(image_size=image_size, patch_size=patch_size, **tower),
        text=TextConfig(vocab_size=vocab_size, context_length=context_length, causal=False, pool="cls", **tower),
        multimodal=TransformerSpec(**tower),
        embed_dim=embed_dim,
        mask_token_id=vocab_size - 1,
        options=BlockOptions(activation="gelu", norm_eps=1e-6),
    )


def _flamingo(image_size, patch_size, vision, text, vocab_size, context_length, num_latents) -> FlamingoConfig:
    """A Flamingo trained from scratch on image–caption pairs (`config.loss="captioning"`): a ViT read at all
    its tokens, a Perceiver resampler of one block, a gated cross-attention block before every block of a causal
    language model, its gates open at 0.5 (closed gates would leave the vision tower untrained). The image token
    (`media_token_id`, put before each caption) is the vocabulary's last id, which the tokenizer must never emit."""
    return FlamingoConfig(
        vision=VisionConfig(image_size=image_size, patch_size=patch_size, **vision),
        text=TextConfig(vocab_size=vocab_size, context_length=context_length, **text),
        media_token_id=vocab_size - 1,
        num_latents=num_latents,
        resampler_depth=1,
        gate_init=0.5,
        options=BlockOptions(activation="gelu", norm_eps=1e-5),
    )


ModelConfig = TwoTowerConfig | FlavaConfig | FlamingoConfig


def _build_registry() -> dict[str, ModelConfig]:
    b, l = _tower(768, 12, 12), _tower(1024, 24, 16)
    text_b, text_l = _tower(512, 12, 8), _tower(768, 12, 12)
    openai = {
        "ViT-B-32": _clip(224, 32, b, text_b, 512),
        "ViT-B-16": _clip(224, 16, b, text_b, 512),
        "ViT-L-14": _clip(224, 14, l, text_l, 768),
    }
    registry = dict(openai)
    for name, cfg in openai.items():
        registry[f"{name}-quickgelu"] = dataclasses.replace(
            cfg, options=dataclasses.replace(cfg.options, activation="quick_gelu"))
    registry["ViT-B-16-SigLIP"] = _siglip(224, 16, b, _tower(768, 12, 12), vocab_size=32_000, context_length=64)
    tiny_vision, tiny_text = _tower(128, 3, 4), _tower(128, 2, 4)
    registry["clip-tiny"] = _clip(32, 8, tiny_vision, tiny_text, 128, vocab_size=128, context_length=16,
                                  activation="quick_gelu")
    registry["siglip-tiny"] = _siglip(32, 8, tiny_vision, tiny_text, vocab_size=128, context_length=16)
    # The demo's towers reading OpenAI CLIP's BPE (configs/clip_captions.py): a first run on real captions.
    registry["clip-tiny-bpe"] = _clip(64, 8, tiny_vision, tiny_text, 128, context_length=32, activation="quick_gelu")
    # `mmjax bench train-step`'s CPU model: 3 881 473 parameters, like OpenCLIP's CLIP with the same numbers.
    bench_tower = _tower(192, 4, 3)
    registry["bench-tiny"] = _clip(64, 8, bench_tower, bench_tower, 192, vocab_size=1000, context_length=32)
    test_tower = _tower(32, 2, 2, mlp_ratio=2)
    registry["clip-test"] = _clip(16, 8, test_tower, test_tower, 16, vocab_size=64, context_length=8)
    registry["clip-test-bpe"] = _clip(16, 8, test_tower, test_tower, 16, context_length=8)
    registry["siglip-test"] = _siglip(16, 8, test_tower, test_tower, vocab_size=64, context_length=8)
    # configs/flava_tiny.py's model: the demo's data and tokenizer, with FLAVA's objectives.
    registry["flava-tiny"] = _flava(32, 8, _tower(128, 2, 4), 128, vocab_size=128, context_length=16)
    registry["flava-test"] = _flava(16, 8, test_tower, 16, vocab_size=64, context_length=8)
    # configs/flava_captions.py's: OpenAI CLIP's BPE (49 408 ids) and [MASK] (49 408), at 64 px as clip-tiny-bpe.
    registry["flava-tiny-bpe"] = _flava(64, 8, _tower(128, 2, 4), 128, vocab_size=49_409, context_length=32)
    registry["flava-test-bpe"] = _flava(16, 8, test_tower, 16, vocab_size=49_409, context_length=8)
    # configs/flamingo_tiny.py's captioner: the demo's data and tokenizer (its 128th id is the image token).
    registry["flamingo-tiny"] = _flamingo(32, 8, tiny_vision, tiny_text, vocab_size=128, context_length=16,
                                          num_latents=8)
    registry["flamingo-test"] = _flamingo(16, 8, test_tower, test_tower, vocab_size=64, context_length=8,
                                          num_latents=4)
    # configs/flamingo_captions.py's: OpenAI CLIP's BPE (49 408 ids) and the image token (49 408), at 64 px.
    registry["flamingo-tiny-bpe"] = _flamingo(64, 8, tiny_vision, tiny_text, vocab_size=49_409, context_length=32,
                                              num_latents=8)
    registry["flamingo-test-bpe"] = _flamingo(16, 8, test_tower, test_tower, vocab_size=49_409, context_length=8,
                                              num_latents=4)
    return registry


_REGISTRY = _build_registry()


def list_models() -> list[str]:
    """Names of all registered models."""
    return sorted(_REGISTRY)


def get_config(name: str, **options) -> ModelConfig:
    """The config of model `name`; keyword arguments override `BlockOptions`
    fields (`scan_layers`, `remat_policy`, `dtype`, `activation`, `norm_eps`)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(list_models())}"
        raise KeyError(f"unknown model {name!r}{hint}")
    cfg = _REGISTRY[name]
    unknown = set(options) - {f.name for f in dataclasses.fields(BlockOptions)}
    if unknown:
        raise KeyError(f"unknown model option(s) {sorted(unknown)} for {name!r}")
    return dataclasses.replace(cfg, options=dataclasses.replace(cfg.options, **options)) if options else cfg


def kind(config: ModelConfig) -> str:
    """What a model config is, in words: "FLAVA", "Flamingo" or "two-tower"."""
    return {FlavaConfig: "FLAVA", FlamingoConfig: "Flamingo"}.get(type(config), "two-tower")


def check_two_tower(name: str, purpose: str) -> None:
    """A one-line ValueError when registered model `name` is not a two-tower model; `purpose` completes the
    sentence "…; <purpose> the two-tower models" (e.g. "the benchmarks time")."""
    config = get_config(name)
    if not isinstance(config, TwoTowerConfig):
        raise ValueError(f"--model={name} is a {kind(config)} model; {purpose} the two-tower models (CLIP, SigLIP)")


def build_model(config: ModelConfig) -> TwoTower | Flava | Flamingo:
    """The (unbound) Flax module of a registry config. Each takes `(images, token_ids)`; `TwoTower` and `Flava`
    have `encode_image` / `encode_text`, `Flamingo` returns next-token logits."""
    return {FlavaConfig: Flava, FlamingoConfig: Flamingo}.get(type(config), TwoTower)(config)


def create_model(name: str, **options) -> TwoTower | Flava | Flamingo:
    """The (unbound) Flax module of model `name`."""
    return build_model(get_config(name, **options))


def example_inputs(config: ModelConfig, batch_size: int = 1) -> tuple[jax.Array, jax.Array]:
    """Zero images and token ids `[B, L]` of the shapes the model takes: images `[B, H, W, 3]`, or `[B, 1, H, W, 3]`
    (one image per caption) for Flamingo."""
    size = config.vision.image_size
    images = (batch_size, 1, size, size, 3) if isinstance(config, FlamingoConfig) else (batch_size, size, size, 3)
    return (jnp.zeros(images, jnp.float32), jnp.zeros((batch_size, config.text.context_length), jnp.int32))


def abstract_params(config: ModelConfig):
    """Parameter shapes (boxed with logical axis names) from an abstract init."""
    model = build_model(config)
    images, tokens = example_inputs(config)
    return jax.eval_shape(lambda rng: model.init(rng, images, tokens), jax.random.key(0))["params"]


def param_count(name: str) -> int:
    """Number of parameters of model `name`, counted from an abstract init."""
    leaves = jax.tree.leaves(abstract_params(get_config(name)))
    return int(sum(np.prod(leaf.shape) for leaf in leaves))
