"""transformers `SiglipModel` ↔ mmjax `TwoTower`: config, parameter names, load and export.

A Hugging Face SigLIP directory holds `config.json` (`"model_type": "siglip"`),
`model.safetensors` (or `model.safetensors.index.json` + its shards), `spiece.model` + `tokenizer_config.json` and
`preprocessor_config.json`. The towers map one to one onto mmjax's SigLIP layout
(MAP-pooled ViT without class token or pre-norm, bidirectional text pooled at the
last position with a biased head, no image projection); only tensor layouts
differ (torch `Linear.weight` is `[out, in]`, the MAP head fuses q/k/v into one
`in_proj`). `table(config)` is the single name/layout table used both ways, so
export → import is bit-identical.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

import numpy as np

from mmjax.convert import checks, hf_activations, layout
from mmjax.convert.export_dir import staged_export
from mmjax.convert.image_processor import SIGLIP as SIGLIP_PROCESSOR
from mmjax.convert.image_processor import preprocess_from_hf, preprocess_to_hf
from mmjax.convert.jsonfile import json_object, read_json, special_token, write_json
from mmjax.convert.tensors import read_transformers_weights, write_safetensors
from mmjax.data.gemma_tokenizer import GEMMA_CLASSES, siglip2_tokenizer
from mmjax.data.open_clip_hf_tokenizer import OpenClipHfTokenizer
from mmjax.data.preprocess import ImagePreprocess
from mmjax.data.sentencepiece_tokenizer import GEMMA_EOS, GEMMA_PAD, SentencePieceTokenizer
from mmjax.data.tokenizers import Tokenizer
from mmjax.models.layers import BlockOptions, sincos_2d
from mmjax.models.text import TextConfig
from mmjax.models.two_tower import TwoTowerConfig
from mmjax.models.vit import VisionConfig
from mmjax.pretrained import Pretrained

# transformers' defaults for fields a config.json may leave out (SiglipTextConfig / SiglipVisionConfig,
# google/siglip-base-patch16-224 relies on them).
TEXT_DEFAULTS = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                     layer_norm_eps=1e-6, projection_size=None)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                       layer_norm_eps=1e-6, vision_use_head=True)
MAP_IN_PROJ = "vision_model.head.attention.in_proj_"
_QKV = ("q_proj", "k_proj", "v_proj")


def _sub(config: Mapping, key: str, defaults: dict, where: str) -> dict:
    sub = json_object(config, key, where)
    return {name: sub.get(name, default) for name, default in defaults.items()}


def _single_int(value, what: str, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{where}: non-square {what} {value} is not supported")
        value = value[0]
    return int(value)


@checks.config_errors_name_the_file
def config_from_hf(config: Mapping, where: str = "config.json") -> TwoTowerConfig:
    """The mmjax config of a transformers `SiglipConfig` dict (as in config.json)."""
    if config.get("model_type") != "siglip":
        raise ValueError(f"{where}: model_type is {config.get('model_type')!r}, not 'siglip'")
    text = _sub(config, "text_config", TEXT_DEFAULTS, where)
    vision = _sub(config, "vision_config", VISION_DEFAULTS, where)
    if not vision["vision_use_head"]:
        raise ValueError(f"{where}: vision_use_head=false has no pooled image embedding; not supported")
    if vision["num_channels"] != 3:
        raise ValueError(f"{where}: num_channels={vision['num_channels']} is not supported (RGB only)")
    vision_activation, text_activation = (hf_activations.from_hf(tower["hidden_act"]) for tower in (vision, text))
    if text["layer_norm_eps"] != vision["layer_norm_eps"]:
        raise ValueError(f"{where}: the towers use different layer-norm eps; mmjax needs one")
    embed_dim = text["projection_size"] or text["hidden_size"]
    if embed_dim != vision["hidden_size"]:
        raise ValueError(f"{where}: text projection_size {embed_dim} differs from the vision width "
                         f"{vision['hidden_size']} (SigLIP has no image projection)")
    return TwoTowerConfig(
        vision=VisionConfig(
            image_size=_single_int(vision["image_size"], "image_size", where),
            patch_size=_single_int(vision["patch_size"], "patch_size", where),
            width=vision["hidden_size"], depth=vision["num_hidden_layers"],
            num_heads=vision["num_attention_heads"], mlp_dim=vision["intermediate_size"],
            pool="map", pre_norm=False, patch_bias=True, posemb="learned"),
        text=TextConfig(
            vocab_size=text["vocab_size"], context_length=text["max_position_embeddings"],
            width=text["hidden_size"], depth=text["num_hidden_layers"], num_heads=text["num_attention_heads"],
            mlp_dim=text["intermediate_size"], causal=False, pool="last"),
        embed_dim=embed_dim,
        options=BlockOptions(activation=vision_activation, norm_eps=float(text["layer_norm_eps"])),
        image_projection=False, text_projection_bias=True,
        logit_scale_init=math.log(10.0), logit_bias_init=-10.0,
        text_activation=None if text_activation == vision_activation else text_activation,
    )


def check_exportable(config: TwoTowerConfig, target: str = "transformers SiglipModel") -> None:
    """Raises a one-line ValueError if `config` has no transformers `SiglipModel` equivalent (the error says it
    cannot be exported as `target`)."""
    v, t = config.vision, config.text
    problems = [
        (config.logit_bias_init is None, "it has no logit bias (a CLIP model; export it as CLIPModel)"),
        (config.image_projection, "it has an image projection"),
        (not config.text_projection_bias, "its text projection has no bias"),
        (v.pool != "map", f"its image pooling is {v.pool!r}, not 'map'"),
        (v.pre_norm, "its image tower has a pre-norm"),
        (not v.patch_bias, "its patch embedding has no bias"),
        (t.causal, "its text attention is causal"),
        (t.pool != "last", f"its text pooling is {t.pool!r}, not 'last'"),
        *[(opts.activation not in hf_activations.TO_HF, f"its {tower} tower's activation {opts.activation!r}")
          for tower, opts in (("image", config.options), ("text", config.text_options))],
    ]
    for bad, why in problems:
        if bad:
            raise ValueError(f"cannot export as {target}: {why}")


def config_to_hf(config: TwoTowerConfig, pad_id: int | None = None, eot_id: int | None = None) -> dict:
    """The `config.json` dict of a transformers `SiglipModel` equal to `config`."""
    check_exportable(config)
    v, t, opts = config.vision, config.text, config.options
    common = dict(layer_norm_eps=opts.norm_eps, attention_dropout=0.0)
    text = dict(hidden_act=hf_activations.TO_HF[config.text_options.activation],
                vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=t.mlp_dim,
                num_hidden_layers=t.depth, num_attention_heads=t.num_heads, max_position_embeddings=t.context_length,
                projection_size=config.embed_dim, pad_token_id=pad_id, bos_token_id=None, eos_token_id=eot_id,
                model_type="siglip_text_model", **common)
    vision = dict(hidden_act=hf_activations.TO_HF[opts.activation],
                  hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
                  num_attention_heads=v.num_heads, num_channels=3, image_size=v.image_size, patch_size=v.patch_size,
                  vision_use_head=True, model_type="siglip_vision_model", **common)
    return dict(architectures=["SiglipModel"], model_type="siglip", initializer_factor=1.0, dtype="float32",
                text_config=text, vision_config=vision)


# Layout kinds: how a transformers tensor becomes the mmjax one (`to_mmjax`) and back (`to_hf`).
def to_mmjax(kind: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """transformers tensor → mmjax array of `shape` (the mmjax parameter's shape)."""
    if kind in ("linear", "heads_in", "heads_out"):  # [out, in] → [in, out]; q/k/v [W, H, Dh], out [H, Dh, W]
        return value.T.reshape(shape)
    if kind == "conv":                            # [W, 3, p, p] → [p, p, 3, W]
        return value.transpose(2, 3, 1, 0)
    return value.reshape(shape)                   # copy / bias / scalar [1] → []


def to_hf(kind: str, value: np.ndarray) -> np.ndarray:
    """mmjax array → transformers tensor (inverse of `to_mmjax`)."""
    if kind == "heads_in":                        # [W, H, Dh] → [H*Dh, W]
        return value.reshape(value.shape[0], -1).T
    if kind == "heads_out":                       # [H, Dh, W] → [W, H*Dh]
        return value.reshape(-1, value.shape[-1]).T
    if kind == "linear":
        return value.T
    if kind == "conv":
        return value.transpose(3, 2, 0, 1)
    if kind == "scalar":
        return value.reshape(1)
    if kind == "bias":
        return value.reshape(-1)
    return value


def _attention(mm: str, hf: str) -> Iterator[tuple[str, str, str]]:
    for part, hf_name in zip(("query", "key", "value", "out"), (*_QKV, "out_proj")):
        yield f"{mm}/{part}/kernel", f"{hf}.{hf_name}.weight", "heads_out" if part == "out" else "heads_in"
        yield f"{mm}/{part}/bias", f"{hf}.{hf_name}.bias", "copy" if part == "out" else "bias"


def _layer_norm(mm: str, hf: str) -> Iterator[tuple[str, str, str]]:
    yield f"{mm}/scale", f"{hf}.weight", "copy"
    yield f"{mm}/bias", f"{hf}.bias", "copy"


def _mlp(mm: str, hf: str) -> Iterator[tuple[str, str, str]]:
    for fc in ("fc1", "fc2"):
        yield f"{mm}/{fc}/kernel", f"{hf}.{fc}.weight", "linear"
        yield f"{mm}/{fc}/bias", f"{hf}.{fc}.bias", "copy"


def _blocks(mm: str, hf: str, depth: int) -> Iterator[tuple[str, str, str]]:
    for i in range(depth):
        block, layer = f"{mm}/encoder/layers_{i}", f"{hf}.encoder.layers.{i}"
        yield from _layer_norm(f"{block}/ln_1", f"{layer}.layer_norm1")
        yield from _attention(f"{block}/attn", f"{layer}.self_attn")
        yield from _layer_norm(f"{block}/ln_2", f"{layer}.layer_norm2")
        yield from _mlp(f"{block}/mlp", f"{layer}.mlp")


def table(config: TwoTowerConfig) -> list[tuple[str, str, str]]:
    """`(mmjax path, transformers key, layout kind)` for every parameter of a SigLIP `config`.

    The MAP head's fused `in_proj_{weight,bias}` appear as the per-part keys
    `vision_model.head.attention.{q,k,v}_proj.{weight,bias}` (see `split_in_proj`).
    """
    img, txt = "image_encoder", "text_encoder"
    return [
        (f"{img}/patch_embed/conv/kernel", "vision_model.embeddings.patch_embedding.weight", "conv"),
        (f"{img}/patch_embed/conv/bias", "vision_model.embeddings.patch_embedding.bias", "copy"),
        (f"{img}/pos_embed/embedding", "vision_model.embeddings.position_embedding.weight", "copy"),
        *_blocks(img, "vision_model", config.vision.depth),
        *_layer_norm(f"{img}/ln_post", "vision_model.post_layernorm"),
        (f"{img}/map_head/probe", "vision_model.head.probe", "copy"),
        *_attention(f"{img}/map_head/attn", "vision_model.head.attention"),
        *_layer_norm(f"{img}/map_head/ln", "vision_model.head.layernorm"),
        *_mlp(f"{img}/map_head/mlp", "vision_model.head.mlp"),
        (f"{txt}/token_embed/embedding", "text_model.embeddings.token_embedding.weight", "copy"),
        (f"{txt}/pos_embed/embedding", "text_model.embeddings.position_embedding.weight", "copy"),
        *_blocks(txt, "text_model", config.text.depth),
        *_layer_norm(f"{txt}/ln_final", "text_model.final_layer_norm"),
        ("text_proj/kernel", "text_model.head.weight", "linear"),
        ("text_proj/bias", "text_model.head.bias", "copy"),
        ("logit_scale", "logit_scale", "scalar"),
        ("logit_bias", "logit_bias", "scalar"),
    ]


def split_in_proj(tensors: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Replaces the MAP head's fused `in_proj_{weight,bias}` `[3W, …]` by q/k/v parts."""
    out = dict(tensors)
    for suffix in ("weight", "bias"):
        key = MAP_IN_PROJ + suffix
        if key not in out:
            raise ValueError(f"{where}: tensor {key} is missing")
        fused = out.pop(key)
        if fused.shape[0] % 3:
            raise ValueError(f"{where}: tensor {key} has shape {fused.shape}, not [3*width, ...]")
        for name, part in zip(_QKV, np.split(fused, 3, axis=0)):
            out[f"vision_model.head.attention.{name}.{suffix}"] = part
    return out


def fuse_in_proj(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of `split_in_proj`."""
    out = dict(tensors)
    for suffix in ("weight", "bias"):
        parts = [out.pop(f"vision_model.head.attention.{name}.{suffix}") for name in _QKV]
        out[MAP_IN_PROJ + suffix] = np.concatenate(parts, axis=0)
    return out


def params_from_hf(tensors: Mapping[str, np.ndarray], config: TwoTowerConfig, where: str) -> dict:
    """mmjax params (nested dict of float32 NumPy arrays) from a transformers SigLIP state dict.

    Raises a one-line ValueError naming the first missing tensor, the first tensor
    the model does not use (a `position_ids` buffer excepted), or the first
    parameter whose shape does not fit `config`.
    """
    tensors = split_in_proj(tensors, where)
    used = {key for _, key, _ in table(config)}
    unused = sorted(key for key in tensors if key not in used and not key.endswith("position_ids"))
    if unused:
        raise ValueError(f"{where}: tensor {unused[0]} is not used by a SiglipModel with this config.json")
    expected = checks.expected_shapes(config)
    flat = {}
    for path, key, kind in table(config):
        value = layout.take(tensors, key, where)
        shape = tuple(expected[path])
        if value.size != int(np.prod(shape)) or (kind == "conv" and value.ndim != 4):
            raise ValueError(f"{where}: tensor {key} has shape {tuple(value.shape)}, which does not fit "
                             f"parameter {path} {shape} of the config")
        flat[path] = to_mmjax(kind, value, shape)
    params = checks.unflatten(flat)
    checks.check_shapes(params, expected, where)
    return params


def params_to_hf(params: Mapping, config: TwoTowerConfig) -> dict[str, np.ndarray]:
    """transformers SigLIP state dict (float32 NumPy, contiguous) from unscanned mmjax params.

    A fixed sine-cosine position table (`posemb="sincos2d"`) is written as the learned table it equals."""
    check_exportable(config)
    flat = checks.flatten(params)
    if config.vision.posemb == "sincos2d":
        grid = config.vision.image_size // config.vision.patch_size
        flat["image_encoder/pos_embed/embedding"] = sincos_2d(grid, config.vision.width)
    tensors = {key: np.ascontiguousarray(to_hf(kind, np.asarray(flat[path], np.float32)))
               for path, key, kind in table(config)}
    return fuse_in_proj(tensors)


def tokenizer_from_dir(directory: str, context_length: int) -> SentencePieceTokenizer | Tokenizer:
    """The tokenizer of a transformers SigLIP directory: `SiglipTokenizer` (spiece.model +
    tokenizer_config.json); SigLIP 2's Gemma tokenizer (`tokenizer_class` Gemma or Siglip2: its tokenizer.json,
    else its tokenizer.model, with SigLIP 2's convention, `mmjax.data.gemma_tokenizer`); or the fixed-length
    tokenizer.json `export` writes for mmjax-trained models."""
    config_path = os.path.join(directory, "tokenizer_config.json")
    config = read_json(config_path) if os.path.isfile(config_path) else {}
    files = {name: os.path.join(directory, name) for name in ("spiece.model", "tokenizer.json", "tokenizer.model")}
    if config.get("tokenizer_class") in GEMMA_CLASSES:
        if os.path.isfile(files["tokenizer.json"]):
            return siglip2_tokenizer(files["tokenizer.json"], context_length)
        if os.path.isfile(files["tokenizer.model"]):
            return SentencePieceTokenizer.from_file(files["tokenizer.model"], context_length=context_length,
                                                    normalization="lowercase", eot_token=GEMMA_EOS,
                                                    pad_token=GEMMA_PAD)
        raise FileNotFoundError(f"{directory} has neither tokenizer.json nor tokenizer.model, the Gemma tokenizer "
                                f"its tokenizer_config.json names")
    eos, pad = (special_token(config, key, "</s>", config_path) for key in ("eos_token", "pad_token"))
    if os.path.isfile(files["spiece.model"]):
        if not config.get("do_lower_case", True):
            raise ValueError(f"{config_path}: do_lower_case=false is not supported")
        return SentencePieceTokenizer.from_file(files["spiece.model"], context_length=context_length,
                                                normalization="hf", eot_token=eos, pad_token=pad)
    if os.path.isfile(files["tokenizer.json"]):
        tokenizer = Tokenizer.load(files["tokenizer.json"], eot_token=eos)
        if tokenizer.context_length != context_length:
            raise ValueError(f"{directory}/tokenizer.json pads to {tokenizer.context_length} tokens but the model "
                             f"takes {context_length}")
        return tokenizer
    raise FileNotFoundError(f"{directory} has no spiece.model (the SigLIP SentencePiece tokenizer)")


def describe(path: str) -> tuple[TwoTowerConfig, ImagePreprocess]:
    """The model and preprocessing of a transformers `SiglipModel` directory, from its JSON files alone."""
    config_path = os.path.join(path, "config.json")
    config = config_from_hf(read_json(config_path), config_path)
    processor_path = os.path.join(path, "preprocessor_config.json")
    processor = read_json(processor_path) if os.path.isfile(processor_path) else {}
    return config, preprocess_from_hf(processor, config.vision.image_size, processor_path, SIGLIP_PROCESSOR)


def load(path: str, *, image_size: int | None = None, allow_pickle: bool = False) -> Pretrained:
    """A transformers `SiglipModel` directory → `Pretrained` (model, params, tokenizer, preprocessing)."""
    path = os.fspath(path)
    config, preprocess = describe(path)
    tensors, weights_file = read_transformers_weights(path, allow_pickle=allow_pickle)
    params = params_from_hf(tensors, config, weights_file)
    pretrained = Pretrained(config=config, params=params,
                            tokenizer=tokenizer_from_dir(path, config.text.context_length),
                            preprocess=preprocess, source=path, format="hf_siglip")
    return pretrained.with_image_size(image_size) if image_size else pretrained


def _export_tokenizer(tokenizer, out_dir: str) -> tuple[int, int]:
    """Writes the tokenizer files; returns `(pad_id, eot_id)`."""
    length = tokenizer.context_length
    if isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.is_gemma:  # SigLIP 2: transformers' own class
        tokenizer.save(os.path.join(out_dir, "tokenizer.model"))
        write_json(os.path.join(out_dir, "tokenizer_config.json"),
                   dict(tokenizer_class="Siglip2Tokenizer", model_max_length=length, add_bos_token=False,
                        add_eos_token=True, padding_side="right", eos_token=GEMMA_EOS, pad_token=GEMMA_PAD,
                        bos_token="<bos>", unk_token="<unk>", model_input_names=["input_ids"]))
    elif isinstance(tokenizer, SentencePieceTokenizer):
        tokenizer.save(os.path.join(out_dir, "spiece.model"))
        special = dict(eos_token=tokenizer.eot_token, pad_token=tokenizer.pad_token, unk_token="<unk>")
        write_json(os.path.join(out_dir, "tokenizer_config.json"),
                    dict(tokenizer_class="SiglipTokenizer", model_max_length=length, do_lower_case=True,
                         model_input_names=["input_ids"], **special))
        write_json(os.path.join(out_dir, "special_tokens_map.json"), special)
    elif isinstance(tokenizer, Tokenizer):
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
        pad = tokenizer.backend.padding["pad_token"]
        write_json(os.path.join(out_dir, "tokenizer_config.json"),
                    dict(tokenizer_class="PreTrainedTokenizerFast", model_max_length=length, pad_token=pad,
                         eos_token=tokenizer.backend.id_to_token(tokenizer.eot_id), model_input_names=["input_ids"]))
    else:
        raise ValueError(f"cannot export a {type(tokenizer).__name__} as a transformers tokenizer")
    return tokenizer.pad_id, tokenizer.eot_id


def export(pretrained: Pretrained, out_dir: str) -> None:
    """Writes a directory that `transformers.SiglipModel.from_pretrained` and `AutoTokenizer` /
    `AutoImageProcessor.from_pretrained` load as it is: config.json, model.safetensors, the
    tokenizer files and preprocessor_config.json, all at once (`staged_export`)."""
    config = pretrained.config
    check_exportable(config)
    if isinstance(pretrained.tokenizer, OpenClipHfTokenizer):  # an OpenCLIP SigLIP's (before the CLIP BPE check)
        raise ValueError(f"cannot export as transformers SiglipModel: its tokenizer runs OpenCLIP's text clean-up "
                         f"(clean={pretrained.tokenizer.open_clip_clean!r}) before its tokenizer.json, which no "
                         f"transformers SigLIP tokenizer reproduces; use --to open_clip")
    if getattr(pretrained.tokenizer, "open_clip_clean", None) is not None:  # pool="last" reads its padding, id 0
        raise ValueError("cannot export as transformers SiglipModel: its tokenizer is OpenCLIP's CLIP BPE "
                         "(data.tokenizer='clip-bpe'), whose cleaning and padding no transformers SigLIP tokenizer "
                         "reproduces")
    tensors = params_to_hf(layout.unscan(layout.to_numpy(pretrained.params)), config)
    with staged_export(out_dir) as staging:
        pad_id, eot_id = _export_tokenizer(pretrained.tokenizer, staging)
        write_safetensors(os.path.join(staging, "model.safetensors"), tensors, metadata={"format": "pt"})
        write_json(os.path.join(staging, "config.json"), config_to_hf(config, pad_id, eot_id))
        write_json(os.path.join(staging, "preprocessor_config.json"),
                   preprocess_to_hf(pretrained.preprocess, SIGLIP_PROCESSOR))
