"""OpenCLIP checkpoints: a directory (`open_clip_config.json` + weights, as OpenCLIP's
`local-dir:` and its Hugging Face Hub repositories hold them) or a model name with a weights file.

Supported: the ViT `CLIP` class (not HF text towers), gelu and quick_gelu, and OpenCLIP's SigLIP models (a
`CustomTextCLIP` with a timm SigLIP image tower: `mmjax.convert.open_clip_siglip`, which also reads their tokenizer).
A CLIP's text pools at the largest token id (`pool_type="argmax"`) and its tokenizer is OpenCLIP's
`SimpleTokenizer` (see `mmjax.data.clip_bpe`). Preprocessing: torchvision `Resize(bicubic)` of the shorter side on
a PIL image + `CenterCrop` (rounded offset), or `"squash"`.
"""

from __future__ import annotations

import copy
import gzip
import json
import os

import numpy as np

from mmjax.convert import layout, open_clip_siglip
from mmjax.convert.checks import config_errors_name_the_file, source_shapes
from mmjax.convert.export_dir import staged_export
from mmjax.convert.jsonfile import json_object, read_json, write_json
from mmjax.convert.tensors import read_tensors, write_safetensors
from mmjax.data.clip_bpe import BPE_FILE, OPEN_CLIP_CLEANS, ClipBpeTokenizer, find_open_clip_bpe
from mmjax.data.preprocess import ImagePreprocess
from mmjax.data.tokenizers import Tokenizer
from mmjax.models import BlockOptions, TextConfig, TwoTowerConfig, VisionConfig
from mmjax.pretrained import Pretrained

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
TOKENIZER_FILE = "tokenizer.json"  # only for non-BPE (mmjax-trained) tokenizers; OpenCLIP ignores it
# OpenCLIP's preferred order (factory._find_checkpoint_in_dir).
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
                "model.pth")


def _vit(width, layers, patch, image=224, head_width=64, mlp_ratio=None):
    vision = dict(image_size=image, layers=layers, width=width, patch_size=patch)
    if head_width != 64:
        vision["head_width"] = head_width
    if mlp_ratio is not None:
        vision["mlp_ratio"] = mlp_ratio
    return vision


def _text(width, heads, layers):
    return dict(context_length=77, vocab_size=49408, width=width, heads=heads, layers=layers)


# open_clip/model_configs/NAME.json for the ViT CLIPs (a test checks them against the installed open_clip).
MODEL_CONFIGS = {
    "ViT-B-32": dict(embed_dim=512, vision_cfg=_vit(768, 12, 32), text_cfg=_text(512, 8, 12)),
    "ViT-B-32-256": dict(embed_dim=512, vision_cfg=_vit(768, 12, 32, image=256), text_cfg=_text(512, 8, 12)),
    "ViT-B-16": dict(embed_dim=512, vision_cfg=_vit(768, 12, 16), text_cfg=_text(512, 8, 12)),
    "ViT-L-14": dict(embed_dim=768, vision_cfg=_vit(1024, 24, 14), text_cfg=_text(768, 12, 12)),
    "ViT-L-14-336": dict(embed_dim=768, vision_cfg=_vit(1024, 24, 14, image=336), text_cfg=_text(768, 12, 12)),
    "ViT-H-14": dict(embed_dim=1024, vision_cfg=_vit(1280, 32, 14, head_width=80), text_cfg=_text(1024, 16, 24)),
    "ViT-g-14": dict(embed_dim=1024, vision_cfg=_vit(1408, 40, 14, head_width=88, mlp_ratio=4.3637),
                     text_cfg=_text(1024, 16, 24)),
    "ViT-bigG-14": dict(embed_dim=1280, vision_cfg=_vit(1664, 48, 14, head_width=104, mlp_ratio=4.9231),
                        text_cfg=_text(1280, 20, 32)),
}
for _name in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14"):
    MODEL_CONFIGS[f"{_name}-quickgelu"] = dict(MODEL_CONFIGS[_name], quick_gelu=True)

# OpenCLIP's CLIPVisionCfg / CLIPTextCfg defaults, for the keys a config leaves out.
_VISION_DEFAULTS = dict(layers=12, width=768, patch_size=16, image_size=224,
                        head_width=64, mlp_ratio=4.0, ls_init_value=None, attentional_pool=False, no_ln_pre=False,
                        pos_embed_type="learnable", final_ln_after_pool=False, pool_type="tok",
                        timm_model_name=None, act_kwargs=None, norm_kwargs=None, qk_norm=False,
                        scaled_cosine_attn=False, scale_heads=False, scale_attn_inner=False, scale_attn=False,
                        scale_fc=False)
_TEXT_DEFAULTS = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12,
                      mlp_ratio=4.0, ls_init_value=None, embed_cls=False,
                      no_causal_mask=False, final_ln_after_pool=False, pool_type="argmax", proj_bias=False,
                      proj_type="linear", hf_model_name=None, hf_tokenizer_name=None, act_kwargs=None,
                      norm_kwargs=None, qk_norm=False, scaled_cosine_attn=False, scale_heads=False,
                      scale_attn_inner=False, scale_attn=False, scale_fc=False)
# Options that change the computation but that mmjax does not implement: value allowed → only that value.
_FIXED = ("ls_init_value", "attentional_pool", "no_ln_pre", "pos_embed_type", "final_ln_after_pool", "pool_type",
          "timm_model_name", "act_kwargs", "norm_kwargs", "embed_cls", "no_causal_mask", "proj_bias", "proj_type",
          "hf_model_name", "hf_tokenizer_name", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner",
          "scale_attn", "scale_fc")


@config_errors_name_the_file
def config_from_open_clip(model_cfg: dict, where: str) -> TwoTowerConfig:
    """An OpenCLIP `model_cfg` dict → `TwoTowerConfig`; one line naming the first unsupported option."""
    if open_clip_siglip.is_siglip(model_cfg, where):
        return open_clip_siglip.config_from_open_clip(model_cfg, where)
    if model_cfg.get("custom_text") or "multimodal_cfg" in model_cfg:
        raise ValueError(f"{where}: only OpenCLIP's CLIP class and its SigLIP models are supported (not other "
                         f"custom_text / CoCa models)")
    vision = dict(_VISION_DEFAULTS, **json_object(model_cfg, "vision_cfg", where))
    text = dict(_TEXT_DEFAULTS, **json_object(model_cfg, "text_cfg", where))
    for tower, cfg, defaults in [("vision_cfg", vision, _VISION_DEFAULTS), ("text_cfg", text, _TEXT_DEFAULTS)]:
        for key in (key for key in _FIXED if key in defaults):
            # {} passes no keyword, as None; "" names no timm model, as None
            value = (cfg[key] or None) if key.endswith("_kwargs") or key == "timm_model_name" else cfg[key]
            if value != defaults[key]:
                raise ValueError(f"{where}: {tower}.{key}={cfg[key]!r} is not supported")
    if not isinstance(vision.get("layers"), int):
        raise ValueError(f"{where}: ResNet image towers (vision_cfg.layers={vision.get('layers')!r}) are not supported")
    if model_cfg.get("init_logit_bias") is not None:
        raise ValueError(f"{where}: init_logit_bias (SigLIP-style OpenCLIP models) is not supported")
    if "embed_dim" not in model_cfg:
        raise ValueError(f"{where}: embed_dim is missing")
    image_size, patch_size = (_square(vision[key], f"{where}: vision_cfg.{key}")
                              for key in ("image_size", "patch_size"))
    width = vision["width"]
    if width % vision["head_width"]:
        raise ValueError(f"{where}: vision_cfg.width {width} is not a multiple of head_width {vision['head_width']}")
    return TwoTowerConfig(
        vision=VisionConfig(width=width, depth=vision["layers"], num_heads=width // vision["head_width"],
                            mlp_dim=int(width * vision["mlp_ratio"]), image_size=image_size,
                            patch_size=patch_size),
        text=TextConfig(width=text["width"], depth=text["layers"], num_heads=text["heads"],
                        mlp_dim=int(text["width"] * text["mlp_ratio"]), vocab_size=text["vocab_size"],
                        context_length=text["context_length"]),
        embed_dim=model_cfg["embed_dim"],
        options=BlockOptions(activation="quick_gelu" if model_cfg.get("quick_gelu") else "gelu", norm_eps=1e-5),
    )


def _square(size, where: str) -> int:
    """An OpenCLIP size (an int, or a `[height, width]` list as `to_2tuple` reads it) as one side."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"{where} {list(size)} is not square")
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(f"{where} {size!r} is not a size in pixels")
    return size


def _block(get, prefix: str, heads: int) -> dict:
    pair = lambda name: (get(f"{prefix}.{name}.weight"), get(f"{prefix}.{name}.bias"))
    weights, biases = np.split(get(f"{prefix}.attn.in_proj_weight"), 3), np.split(get(f"{prefix}.attn.in_proj_bias"), 3)
    query, key, value = zip(weights, biases)  # [q; k; v] stacked on the output axis
    return layout.transformer_block(pair("ln_1"), query, key, value, pair("attn.out_proj"), pair("ln_2"),
                                    pair("mlp.c_fc"), pair("mlp.c_proj"), heads)


def params_from_open_clip(tensors: dict[str, np.ndarray], config: TwoTowerConfig, where: str) -> dict:
    """OpenCLIP CLIP state dict → mmjax params; a one-line ValueError naming the first tensor that is missing,
    has another shape than `config` needs, or is not used."""
    if any(key.startswith("module.") for key in tensors):  # saved from DistributedDataParallel
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    if config.logit_bias_init is not None:
        return open_clip_siglip.params_from_open_clip(tensors, config, where)
    used, shapes = set(), source_shapes(params_to_open_clip, config)

    def get(key: str) -> np.ndarray:
        used.add(key)
        return layout.take(tensors, key, where, shapes[key])

    ln = lambda name: layout.layer_norm(get(f"{name}.weight"), get(f"{name}.bias"))
    params = {
        "image_encoder": {
            "patch_embed": {"conv": {"kernel": layout.patch_conv(get("visual.conv1.weight"))}},
            "cls": {"token": get("visual.class_embedding")},
            "pos_embed": {"embedding": get("visual.positional_embedding")},
            "ln_pre": ln("visual.ln_pre"),
            "encoder": {f"layers_{i}": _block(get, f"visual.transformer.resblocks.{i}", config.vision.num_heads)
                        for i in range(config.vision.depth)},
            "ln_post": ln("visual.ln_post"),
        },
        "text_encoder": {
            "token_embed": {"embedding": get("token_embedding.weight")},
            "pos_embed": {"embedding": get("positional_embedding")},
            "encoder": {f"layers_{i}": _block(get, f"transformer.resblocks.{i}", config.text.num_heads)
                        for i in range(config.text.depth)},
            "ln_final": ln("ln_final"),
        },
        "image_proj": {"kernel": get("visual.proj")},
        "text_proj": {"kernel": get("text_projection")},
        "logit_scale": get("logit_scale"),
    }
    unused = [key for key in tensors if key not in used and key != "attn_mask"]
    if unused:
        raise ValueError(f"{where}: tensor {unused[0]} is not used by an OpenCLIP CLIP with this config")
    return params


def preprocess_from_open_clip(preprocess_cfg: dict, image_size: int, where: str) -> ImagePreprocess:
    """OpenCLIP `preprocess_cfg` → `ImagePreprocess` (its inference transform)."""
    mode = preprocess_cfg.get("resize_mode", "shortest")
    interpolation = preprocess_cfg.get("interpolation", "bicubic")
    if mode not in ("shortest", "squash") or interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"{where}: resize_mode {mode!r} / interpolation {interpolation!r} is not supported")
    defaults = ImagePreprocess(image_size)  # OpenCLIP sets the transform's size to the model's, whatever "size" says
    return ImagePreprocess(image_size, tuple(preprocess_cfg.get("mean", defaults.mean)),
                           tuple(preprocess_cfg.get("std", defaults.std)), mode=mode, interpolation=interpolation,
                           rgb_after_resize=True)


def tokenizer_clean(model_cfg: dict, where: str) -> str:
    """`text_cfg.tokenizer_kwargs` → the `SimpleTokenizer` cleaning it asks for; one line for other options."""
    given = json_object(model_cfg, "text_cfg", where).get("tokenizer_kwargs")
    options = dict(given or {})
    clean = options.pop("clean", "lower")
    if not options.get("reduction_mask", True):  # "" (the default): plain truncation
        options.pop("reduction_mask")
    if options or clean not in OPEN_CLIP_CLEANS:
        raise ValueError(f"{where}: text_cfg.tokenizer_kwargs {given} is not "
                         f"supported (only clean, one of {', '.join(OPEN_CLIP_CLEANS)})")
    return clean


def _model_and_preprocess(model_cfg: dict, preprocess_cfg: dict,
                          where: str) -> tuple[TwoTowerConfig, ImagePreprocess]:
    config = config_from_open_clip(model_cfg, where)
    return config, preprocess_from_open_clip(preprocess_cfg, config.vision.image_size, where)


def _assemble(model_cfg: dict, preprocess_cfg: dict, weights: str, where: str, allow_pickle: bool,
              tokenizer_file: str | None, tokenizer_dir: str) -> Pretrained:
    config, preprocess = _model_and_preprocess(model_cfg, preprocess_cfg, where)
    if config.logit_bias_init is not None:  # a SigLIP: its transformers tokenizer files, as OpenCLIP reads them
        tokenizer = open_clip_siglip.tokenizer_from_dir(tokenizer_dir, model_cfg, config.text.context_length, where)
    elif tokenizer_file is not None:
        tokenizer = Tokenizer.load(tokenizer_file)
    else:
        tokenizer = ClipBpeTokenizer.open_clip(find_open_clip_bpe(tokenizer_dir), config.text.context_length,
                                               tokenizer_clean(model_cfg, where))
    params = params_from_open_clip(read_tensors(weights, allow_pickle=allow_pickle), config, weights)
    return Pretrained(config, params, tokenizer, preprocess, where, "open_clip")


def read_spec(path: str) -> tuple[dict, dict, str]:
    """`(model_cfg, preprocess_cfg, the config file's path)` of OpenCLIP directory `path`."""
    config_path = os.path.join(path, CONFIG_FILE)
    spec = read_json(config_path)
    model_cfg = json_object(spec, "model_cfg", config_path)
    if not model_cfg:
        raise ValueError(f"{config_path} has no model_cfg")
    return model_cfg, json_object(spec, "preprocess_cfg", config_path), config_path


def describe(path: str) -> tuple[TwoTowerConfig, ImagePreprocess]:
    """The model and preprocessing of an OpenCLIP directory, from `open_clip_config.json` alone."""
    return _model_and_preprocess(*read_spec(path))


def load(path: str, *, allow_pickle: bool = False, tokenizer_dir: str | None = None) -> Pretrained:
    """An OpenCLIP directory (`open_clip_config.json` + weights) → `Pretrained`.

    The tokenizer: `tokenizer.json` when it is not a CLIP BPE (`export` writes one for non-BPE tokenizers;
    a transformers CLIP tokenizer.json beside an OpenCLIP config, as in repositories that hold both formats,
    is passed over, as OpenCLIP passes it over), else `bpe_simple_vocab_16e6.txt.gz` in the directory or the
    copy mmjax ships. A SigLIP's: its transformers tokenizer files (`open_clip_siglip.tokenizer_from_dir`), in
    `tokenizer_dir` when given (the repository `text_cfg.hf_tokenizer_name` names), else in `path`."""
    model_cfg, preprocess_cfg, config_path = read_spec(path)
    weights = next((os.path.join(path, name) for name in WEIGHT_FILES if os.path.isfile(os.path.join(path, name))),
                   None)
    if weights is None:
        raise FileNotFoundError(f"{path} has no OpenCLIP weights ({', '.join(WEIGHT_FILES[:3])}, …)")
    tokenizer_file = os.path.join(path, TOKENIZER_FILE)
    own_tokenizer = (not open_clip_siglip.is_siglip(model_cfg, config_path) and os.path.isfile(tokenizer_file)
                     and not _is_clip_bpe_json(read_json(tokenizer_file)))
    return _assemble(model_cfg, preprocess_cfg, weights, config_path, allow_pickle,
                     tokenizer_file if own_tokenizer else None, tokenizer_dir or path)


def load_named(name: str, weights: str, *, allow_pickle: bool = False) -> Pretrained:
    """OpenCLIP model `name` (a key of `MODEL_CONFIGS`) with the weights in file `weights`; the BPE vocabulary
    is looked for next to the weights, else the copy shipped with mmjax is used."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown OpenCLIP model {name!r}; known: {', '.join(sorted(MODEL_CONFIGS))}")
    return _assemble(copy.deepcopy(MODEL_CONFIGS[name]), {}, weights, f"open_clip:{name}", allow_pickle, None,
                     os.path.dirname(os.path.abspath(weights)))


# --- export ---------------------------------------------------------------------------------------------------


def mlp_ratio(mlp_dim: int, width: int) -> float:
    """A ratio with `int(width * ratio) == mlp_dim`, as OpenCLIP computes the MLP width."""
    ratio = mlp_dim / width
    return ratio if int(width * ratio) == mlp_dim else (mlp_dim + 0.5) / width


def config_to_open_clip(config: TwoTowerConfig) -> dict:
    """`TwoTowerConfig` → OpenCLIP `model_cfg`; one-line error when OpenCLIP's CLIP cannot express it."""
    vision, text, opts = config.vision, config.text, config.options
    problems = [name for name, bad in [
        ("vision pool 'cls'", vision.pool != "cls"), ("vision pre_norm", not vision.pre_norm),
        ("no patch bias", vision.patch_bias), ("learned position embeddings", vision.posemb != "learned"),
        ("causal text", not text.causal), ("text pooled at end-of-text", text.pool not in ("eot", "first_eot")),
        ("end-of-text as the highest token id (OpenCLIP pools at the argmax id)",
         text.pool == "first_eot" and text.eot_id != text.vocab_size - 1),
        ("image projection", not config.image_projection), ("no text projection bias", config.text_projection_bias),
        ("no logit bias", config.logit_bias_init is not None),
        ("gelu or quick_gelu", opts.activation not in ("gelu", "quick_gelu")), ("norm eps 1e-5", opts.norm_eps != 1e-5),
        ("one activation in both towers", config.text_options.activation != opts.activation),
        ("vision heads of equal width", vision.width % vision.num_heads)] if bad]
    if problems:
        raise ValueError(f"this model cannot be written as an OpenCLIP CLIP (needs: {', '.join(problems)})")
    cfg = {
        "embed_dim": config.embed_dim,
        "vision_cfg": dict(image_size=vision.image_size, layers=vision.depth, width=vision.width,
                           patch_size=vision.patch_size, head_width=vision.width // vision.num_heads,
                           mlp_ratio=mlp_ratio(vision.mlp_dim, vision.width)),
        "text_cfg": dict(context_length=text.context_length, vocab_size=text.vocab_size, width=text.width,
                         heads=text.num_heads, layers=text.depth, mlp_ratio=mlp_ratio(text.mlp_dim, text.width)),
    }
    if opts.activation == "quick_gelu":
        cfg["quick_gelu"] = True
    return cfg


def _block_to_open_clip(block: dict, prefix: str) -> dict[str, np.ndarray]:
    attn = block["attn"]
    qkv = [layout.to_torch_linear(attn[name]) for name in ("query", "key", "value")]
    out = {f"{prefix}.attn.in_proj_weight": np.concatenate([w for w, _ in qkv]),
           f"{prefix}.attn.in_proj_bias": np.concatenate([b for _, b in qkv])}
    out[f"{prefix}.attn.out_proj.weight"], out[f"{prefix}.attn.out_proj.bias"] = layout.to_torch_linear(attn["out"])
    out[f"{prefix}.mlp.c_fc.weight"], out[f"{prefix}.mlp.c_fc.bias"] = layout.to_torch_linear(block["mlp"]["fc1"])
    out[f"{prefix}.mlp.c_proj.weight"], out[f"{prefix}.mlp.c_proj.bias"] = layout.to_torch_linear(block["mlp"]["fc2"])
    for name in ("ln_1", "ln_2"):
        out[f"{prefix}.{name}.weight"], out[f"{prefix}.{name}.bias"] = block[name]["scale"], block[name]["bias"]
    return out


def params_to_open_clip(params: dict) -> dict[str, np.ndarray]:
    """mmjax params (scanned layers or not) → OpenCLIP CLIP state dict."""
    params = layout.unscan(layout.to_numpy(params))
    image, text = params["image_encoder"], params["text_encoder"]
    out = {
        "visual.conv1.weight": layout.to_torch_conv(image["patch_embed"]["conv"]["kernel"]),
        "visual.class_embedding": image["cls"]["token"],
        "visual.positional_embedding": image["pos_embed"]["embedding"],
        "visual.ln_pre.weight": image["ln_pre"]["scale"], "visual.ln_pre.bias": image["ln_pre"]["bias"],
        "visual.ln_post.weight": image["ln_post"]["scale"], "visual.ln_post.bias": image["ln_post"]["bias"],
        "visual.proj": params["image_proj"]["kernel"],
        "token_embedding.weight": text["token_embed"]["embedding"],
        "positional_embedding": text["pos_embed"]["embedding"],
        "ln_final.weight": text["ln_final"]["scale"], "ln_final.bias": text["ln_final"]["bias"],
        "text_projection": params["text_proj"]["kernel"],
        "logit_scale": np.asarray(params["logit_scale"], np.float32).reshape(()),
    }
    for tower, prefix in [(image, "visual.transformer.resblocks"), (text, "transformer.resblocks")]:
        for name, block in tower["encoder"].items():
            out.update(_block_to_open_clip(block, f"{prefix}.{name.removeprefix('layers_')}"))
    return out


def is_clip_bpe(tokenizer) -> bool:
    """Whether `tokenizer` is a CLIP-style BPE, which OpenCLIP's `SimpleTokenizer` can read."""
    return _is_clip_bpe_json(json.loads(tokenizer.backend.to_str()))


def _is_clip_bpe_json(tokenizer_json: dict) -> bool:
    model = tokenizer_json.get("model") or {}
    return model.get("type") == "BPE" and model.get("end_of_word_suffix") == "</w>"


def _write_tokenizer(tokenizer, out_dir: str) -> None:
    """A CLIP BPE → `bpe_simple_vocab_16e6.txt.gz` rebuilt from its merges (what SimpleTokenizer reads);
    any other tokenizer (an mmjax-trained word-level one) → `tokenizer.json`, which only mmjax reads back."""
    if not is_clip_bpe(tokenizer):
        tokenizer.save(os.path.join(out_dir, TOKENIZER_FILE))
        return
    model = json.loads(tokenizer.backend.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    with gzip.open(os.path.join(out_dir, BPE_FILE), "wt", encoding="utf-8") as f:
        f.write("\n".join(["#version: 0.2", *merges]) + "\n")


def preprocess_to_open_clip(preprocess: ImagePreprocess) -> dict:
    """OpenCLIP's `preprocess_cfg` of `preprocess` (mean, std, interpolation, resize mode)."""
    return {"mean": list(preprocess.mean), "std": list(preprocess.std), "interpolation": preprocess.interpolation,
            "resize_mode": preprocess.mode}


def export(pretrained: Pretrained, out_dir: str) -> None:
    """Writes a directory that `open_clip.create_model_and_transforms("local-dir:" + out_dir)` loads as it is
    (all at once, `staged_export`).

    The weights are exact. OpenCLIP's preprocessing config cannot say two things an HF processor can:
    a resize side larger than the crop (OpenCLIP resizes to the crop size) and a floored crop offset
    (OpenCLIP rounds). Published OpenAI/LAION checkpoints use neither."""
    model_cfg = config_to_open_clip(pretrained.config)
    clean = getattr(pretrained.tokenizer, "open_clip_clean", None)
    if clean not in (None, "lower"):  # SimpleTokenizer's default: not written
        model_cfg["text_cfg"]["tokenizer_kwargs"] = {"clean": clean}
    with staged_export(out_dir) as staging:
        write_safetensors(os.path.join(staging, WEIGHTS_FILE), params_to_open_clip(pretrained.params))
        write_json(os.path.join(staging, CONFIG_FILE),
                   {"model_cfg": model_cfg, "preprocess_cfg": preprocess_to_open_clip(pretrained.preprocess)})
        _write_tokenizer(pretrained.tokenizer, staging)
