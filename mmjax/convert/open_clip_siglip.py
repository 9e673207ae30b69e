"""OpenCLIP's SigLIP models: a `CustomTextCLIP` whose image tower is a timm SigLIP ViT (`vision_cfg.timm_model_name`
`vit_*_siglip_*`, MAP pooling, no projection) and whose text tower is OpenCLIP's `TextTransformer`
(bidirectional, pooled at the last position, a biased projection), with a learned logit bias. These are the
`ViT-*-SigLIP*` models of OpenCLIP's zoo and the `timm/ViT-*-SigLIP*` Hugging Face Hub repositories.

The timm model name fixes the image tower's shape, activation and image size (timm ignores
`vision_cfg.image_size`), so `TIMM_SIGLIP_VITS` lists them (a test checks it against timm). The text tower's
activation comes from `text_cfg.act_kwargs`; where the two differ (most SigLIP 2 sizes: an exact-GELU timm tower beside
a tanh-GELU text tower, not as Google trained them) the model keeps both (`TwoTowerConfig.text_activation`) and
computes as OpenCLIP does.

The tokenizer is the directory's transformers `tokenizer.json` (T5's vocabulary for SigLIP, Gemma's for SigLIP 2)
as OpenCLIP's `HFTokenizer` runs it: OpenCLIP's clean-up (`text_cfg.tokenizer_kwargs.clean`, "canonicalize" in
every OpenCLIP SigLIP config and the only one accepted), the end-of-text token appended and kept, padded to the
context length with the tokenizer's pad token.

`export` writes such a model (loaded from OpenCLIP, or fine-tuned from one) back as an OpenCLIP SigLIP directory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

import numpy as np
import tokenizers

from mmjax.convert import checks, layout
from mmjax.convert.export_dir import staged_export
from mmjax.convert.hf_siglip import check_exportable, to_hf, to_mmjax
from mmjax.convert.jsonfile import json_object, read_json, special_token, write_json
from mmjax.convert.tensors import write_safetensors
from mmjax.data.open_clip_hf_tokenizer import OpenClipHfTokenizer, read_backend
from mmjax.data.sentencepiece_tokenizer import GEMMA_EOS, GEMMA_PAD
from mmjax.models import BlockOptions, TextConfig, TwoTowerConfig, VisionConfig
from mmjax.pretrained import Pretrained

# timm's SigLIP ViTs (timm/models/vision_transformer.py; a test builds each with timm and compares):
# name → (width, depth, heads, mlp_dim, patch, image size, activation). All have no class token, no pre-norm,
# a biased patch embedding, LayerNorm eps 1e-6 and an attention-pool (MAP) head with the blocks' MLP.
TIMM_SIGLIP_VITS = {
    **{f"vit_base_patch16_siglip_{size}": (768, 12, 12, 3072, 16, size, "gelu") for size in (224, 256, 384, 512)},
    "vit_base_patch32_siglip_256": (768, 12, 12, 3072, 32, 256, "gelu_tanh"),
    **{f"vit_large_patch16_siglip_{size}": (1024, 24, 16, 4096, 16, size, "gelu") for size in (256, 384)},
    "vit_large_patch16_siglip_512": (1024, 24, 16, 4096, 16, 512, "gelu_tanh"),
    **{f"vit_so400m_patch14_siglip_{size}": (1152, 27, 16, 4304, 14, size, "gelu") for size in (224, 378, 384)},
    **{f"vit_so400m_patch16_siglip_{size}": (1152, 27, 16, 4304, 16, size, "gelu_tanh") for size in (256, 384, 512)},
    **{f"vit_giantopt_patch16_siglip_{size}": (1536, 40, 16, 6144, 16, size, "gelu_tanh") for size in (256, 384)},
}
NORM_EPS = 1e-6  # timm's ViT LayerNorm; the text tower must say the same in text_cfg.norm_kwargs
# OpenCLIP's CLIPTextCfg defaults of the options that change the computation, and what SigLIP needs of them
_TEXT_NEEDS = dict(hf_model_name=(None, None), proj_type=("linear", "linear"), no_causal_mask=(False, True),
                   pool_type=("argmax", "last"), proj_bias=(False, True), embed_cls=(False, False),
                   ls_init_value=(None, None), final_ln_after_pool=(False, False), tokenizer_mode=(None, None),
                   qk_norm=(False, False), scaled_cosine_attn=(False, False), scale_heads=(False, False),
                   scale_attn_inner=(False, False), scale_attn=(False, False), scale_fc=(False, False),
                   block_type=(None, None))
_TEXT_ACTIVATIONS = {None: "gelu", "none": "gelu", "tanh": "gelu_tanh"}  # nn.GELU(approximate=…)


def is_siglip(model_cfg: Mapping, where: str) -> bool:
    """Whether an OpenCLIP `model_cfg` has a timm image tower (this module's models, or one it refuses)."""
    return bool(json_object(model_cfg, "vision_cfg", where).get("timm_model_name"))


@checks.config_errors_name_the_file
def config_from_open_clip(model_cfg: Mapping, where: str) -> TwoTowerConfig:
    """An OpenCLIP SigLIP `model_cfg` → `TwoTowerConfig`; one line naming the first option mmjax cannot run."""
    vision, text = json_object(model_cfg, "vision_cfg", where), json_object(model_cfg, "text_cfg", where)
    name = vision["timm_model_name"]
    if name not in TIMM_SIGLIP_VITS:
        raise ValueError(f"vision_cfg.timm_model_name {name!r} is not supported (timm image towers: the SigLIP ViTs "
                         f"{', '.join(sorted(TIMM_SIGLIP_VITS))})")
    width, depth, heads, mlp_dim, patch, image_size, vision_activation = TIMM_SIGLIP_VITS[name]
    for key, default, needed in [("timm_pool", "avg", "map"), ("timm_proj", "linear", "none")]:
        if vision.get(key, default) != needed:
            raise ValueError(f"vision_cfg.{key}={vision.get(key, default)!r} is not supported (SigLIP: {needed!r})")
    if vision.get("image_size", 224) not in (image_size, [image_size, image_size]):
        raise ValueError(f"vision_cfg.image_size {vision.get('image_size', 224)} is not the {image_size} px of "
                         f"{name}")
    for key, (default, needed) in _TEXT_NEEDS.items():
        if text.get(key, default) != needed:
            raise ValueError(f"text_cfg.{key}={text.get(key, default)!r} is not supported (SigLIP: {needed!r})")
    if model_cfg.get("init_logit_bias") is None:
        raise ValueError("init_logit_bias is missing: a timm SigLIP image tower with a CLIP loss is not supported")
    if model_cfg.get("quick_gelu"):
        raise ValueError("quick_gelu with a timm SigLIP image tower is not supported")
    act_kwargs, norm_kwargs = dict(text.get("act_kwargs") or {}), dict(text.get("norm_kwargs") or {})
    approximate = act_kwargs.pop("approximate", None)
    if act_kwargs or approximate not in _TEXT_ACTIVATIONS:
        raise ValueError(f"text_cfg.act_kwargs {text.get('act_kwargs')} is not supported")
    text_activation = _TEXT_ACTIVATIONS[approximate]
    if norm_kwargs != {"eps": NORM_EPS}:
        raise ValueError(f"text_cfg.norm_kwargs {text.get('norm_kwargs')} is not supported (SigLIP: "
                         f"{{'eps': {NORM_EPS}}})")
    if model_cfg.get("embed_dim") != width:
        raise ValueError(f"embed_dim {model_cfg.get('embed_dim')} is not the image tower's width {width} "
                         f"(SigLIP has no image projection)")
    text_width = text.get("width", 512)
    return TwoTowerConfig(
        vision=VisionConfig(width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim, image_size=image_size,
                            patch_size=patch, pool="map", pre_norm=False, patch_bias=True, posemb="learned"),
        text=TextConfig(width=text_width, depth=text.get("layers", 12), num_heads=text.get("heads", 8),
                        mlp_dim=int(text_width * text.get("mlp_ratio", 4.0)),
                        vocab_size=text.get("vocab_size", 49408), context_length=text.get("context_length", 77),
                        causal=False, pool="last"),
        embed_dim=width,
        options=BlockOptions(activation=vision_activation, norm_eps=NORM_EPS),
        image_projection=False, text_projection_bias=True,
        logit_scale_init=math.log(10.0), logit_bias_init=float(model_cfg["init_logit_bias"]),
        text_activation=None if text_activation == vision_activation else text_activation,
    )


# --- tensors: (mmjax path, OpenCLIP key, layout kind, (part, parts) of a fused tensor or None) ---------------------


def _linear(mm: str, key: str, kind: str = "linear", part=None) -> Iterator[tuple]:
    yield f"{mm}/kernel", f"{key}.weight", kind, part
    yield f"{mm}/bias", f"{key}.bias", "copy" if kind in ("linear", "heads_out") else "bias", part


def _norm(mm: str, key: str) -> Iterator[tuple]:
    yield f"{mm}/scale", f"{key}.weight", "copy", None
    yield f"{mm}/bias", f"{key}.bias", "copy", None


def _vision_block(mm: str, key: str) -> Iterator[tuple]:
    yield from _norm(f"{mm}/ln_1", f"{key}.norm1")
    for i, part in enumerate(("query", "key", "value")):
        yield from _linear(f"{mm}/attn/{part}", f"{key}.attn.qkv", "heads_in", (i, 3))
    yield from _linear(f"{mm}/attn/out", f"{key}.attn.proj", "heads_out")
    yield from _norm(f"{mm}/ln_2", f"{key}.norm2")
    yield from _linear(f"{mm}/mlp/fc1", f"{key}.mlp.fc1")
    yield from _linear(f"{mm}/mlp/fc2", f"{key}.mlp.fc2")


def _text_block(mm: str, key: str) -> Iterator[tuple]:
    yield from _norm(f"{mm}/ln_1", f"{key}.ln_1")
    for i, part in enumerate(("query", "key", "value")):
        yield f"{mm}/attn/{part}/kernel", f"{key}.attn.in_proj_weight", "heads_in", (i, 3)
        yield f"{mm}/attn/{part}/bias", f"{key}.attn.in_proj_bias", "bias", (i, 3)
    yield from _linear(f"{mm}/attn/out", f"{key}.attn.out_proj", "heads_out")
    yield from _norm(f"{mm}/ln_2", f"{key}.ln_2")
    yield from _linear(f"{mm}/mlp/fc1", f"{key}.mlp.c_fc")
    yield from _linear(f"{mm}/mlp/fc2", f"{key}.mlp.c_proj")


def table(config: TwoTowerConfig) -> list[tuple]:
    """`(mmjax path, OpenCLIP key, layout kind, part)` for every parameter of an OpenCLIP SigLIP `config`; `part`
    `(i, n)` is the i-th of n equal slices of a fused tensor (q/k/v, the MAP head's k/v). Kind `"lead1"`: a
    tensor timm stores with a leading axis of 1 (position table, MAP probe)."""
    img, txt, trunk = "image_encoder", "text_encoder", "visual.trunk"
    return [
        (f"{img}/patch_embed/conv/kernel", f"{trunk}.patch_embed.proj.weight", "conv", None),
        (f"{img}/patch_embed/conv/bias", f"{trunk}.patch_embed.proj.bias", "copy", None),
        (f"{img}/pos_embed/embedding", f"{trunk}.pos_embed", "lead1", None),
        *(entry for i in range(config.vision.depth)
          for entry in _vision_block(f"{img}/encoder/layers_{i}", f"{trunk}.blocks.{i}")),
        *_norm(f"{img}/ln_post", f"{trunk}.norm"),
        (f"{img}/map_head/probe", f"{trunk}.attn_pool.latent", "copy", None),
        *_linear(f"{img}/map_head/attn/query", f"{trunk}.attn_pool.q", "heads_in"),
        *_linear(f"{img}/map_head/attn/key", f"{trunk}.attn_pool.kv", "heads_in", (0, 2)),
        *_linear(f"{img}/map_head/attn/value", f"{trunk}.attn_pool.kv", "heads_in", (1, 2)),
        *_linear(f"{img}/map_head/attn/out", f"{trunk}.attn_pool.proj", "heads_out"),
        *_norm(f"{img}/map_head/ln", f"{trunk}.attn_pool.norm"),
        *_linear(f"{img}/map_head/mlp/fc1", f"{trunk}.attn_pool.mlp.fc1"),
        *_linear(f"{img}/map_head/mlp/fc2", f"{trunk}.attn_pool.mlp.fc2"),
        (f"{txt}/token_embed/embedding", "text.token_embedding.weight", "copy", None),
        (f"{txt}/pos_embed/embedding", "text.positional_embedding", "copy", None),
        *(entry for i in range(config.text.depth)
          for entry in _text_block(f"{txt}/encoder/layers_{i}", f"text.transformer.resblocks.{i}")),
        *_norm(f"{txt}/ln_final", "text.ln_final"),
        *_linear("text_proj", "text.text_projection"),
        ("logit_scale", "logit_scale", "copy", None),
        ("logit_bias", "logit_bias", "copy", None),
    ]


def params_to_open_clip(params: Mapping, config: TwoTowerConfig) -> dict[str, np.ndarray]:
    """Unscanned mmjax params → the state dict of OpenCLIP's `CustomTextCLIP` with a timm SigLIP tower (fused
    tensors concatenated in their parts' order)."""
    flat, out, fused = checks.flatten(params), {}, {}
    for path, key, kind, part in table(config):
        value = np.asarray(flat[path])
        value = value[None] if kind == "lead1" else to_hf(kind, value)
        if part is None:
            out[key] = value
        else:
            fused.setdefault(key, {})[part[0]] = value
    for key, parts in fused.items():
        out[key] = np.concatenate([parts[i] for i in sorted(parts)])
    return out


def params_from_open_clip(tensors: Mapping[str, np.ndarray], config: TwoTowerConfig, where: str) -> dict:
    """OpenCLIP SigLIP state dict → mmjax params; a one-line ValueError naming the first tensor that is not used,
    is missing, or has another shape than `config` needs."""
    entries = table(config)
    used = {key for _, key, _, _ in entries}
    unused = [key for key in tensors if key not in used]
    if unused:
        raise ValueError(f"{where}: tensor {unused[0]} is not used by an OpenCLIP SigLIP with this config")
    shapes = checks.source_shapes(lambda params: params_to_open_clip(params, config), config)
    expected, flat = checks.expected_shapes(config), {}
    for path, key, kind, part in entries:
        value = layout.take(tensors, key, where, shapes[key])
        if part is not None:
            value = np.split(value, part[1])[part[0]]
        flat[path] = value.reshape(expected[path]) if kind == "lead1" else to_mmjax(kind, value, expected[path])
    return checks.unflatten(flat)


# --- tokenizer ---------------------------------------------------------------------------------------------------


# OpenCLIP's text clean-up before a SigLIP's tokenizer (lower-cased, punctuation and runs of spaces removed): on its
# output transformers 5 (which rebuilds T5's and Gemma's pre-tokenizers from the class) and the tokenizer.json files
# written by transformers 4 (which mmjax runs as they are) give the same ids, on other text not always
CLEAN = "canonicalize"
# the tokenizer classes OpenCLIP saves SigLIP 2's and SigLIP's tokenizers as
GEMMA_TOKENIZER_CLASSES, T5_TOKENIZER_CLASSES = ("GemmaTokenizer", "GemmaTokenizerFast"), ("T5Tokenizer", "T5TokenizerFast")
# the classes transformers runs a tokenizer.json with as it is (4 and 5; 5 saves the first as the second): what
# `export` writes, and which names no end-of-text or padding token of its own
FILE_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def tokenizer_from_dir(directory: str, model_cfg: Mapping, context_length: int, where: str) -> OpenClipHfTokenizer:
    """The tokenizer OpenCLIP's `HFTokenizer` loads from an OpenCLIP SigLIP directory: its `tokenizer.json` (T5's or
    Gemma's, as OpenCLIP saves them) as transformers' `AutoTokenizer` reads it, behind OpenCLIP's clean-up. One line
    naming the file for anything OpenCLIP would tokenize otherwise: no `hf_tokenizer_name` (OpenCLIP then uses
    CLIP's BPE), another tokenizer class, padding or truncation on the left, special tokens other than the text
    followed by its end-of-text token."""
    text = json_object(model_cfg, "text_cfg", where)
    name = text.get("hf_tokenizer_name")
    if not name:
        raise ValueError(f"{where}: text_cfg.hf_tokenizer_name is empty: OpenCLIP would tokenize with CLIP's BPE, "
                         f"whose ids are not this SigLIP's vocabulary")
    if not isinstance(name, str):
        raise ValueError(f"{where}: text_cfg.hf_tokenizer_name {name!r} is not a repository name")
    options = dict(json_object(text, "tokenizer_kwargs", where))
    clean = options.pop("clean", "whitespace")  # HFTokenizer's default
    if options or clean != CLEAN:
        raise ValueError(f"{where}: text_cfg.tokenizer_kwargs {text.get('tokenizer_kwargs')} is not supported (only "
                         f"{{'clean': {CLEAN!r}}}, which every OpenCLIP SigLIP config sets: on text it has not "
                         f"cleaned, transformers 4 and 5 split these tokenizer files differently)")
    config_path, file = (os.path.join(directory, name) for name in ("tokenizer_config.json", "tokenizer.json"))
    for path, what in [(file, "the transformers tokenizer OpenCLIP saves with a SigLIP"),
                       (config_path, "which names the tokenizer's class")]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory} has no {os.path.basename(path)}, {what}")
    backend = read_backend(file)
    eot, pad = _special_tokens(read_json(config_path), backend, config_path)
    return OpenClipHfTokenizer.from_backend(backend, file, context_length, eot, pad, clean)


@checks.config_errors_name_the_file
def _special_tokens(config: Mapping, backend: tokenizers.Tokenizer, where: str) -> tuple[str, str]:
    """`(end-of-text token, padding token)` of a tokenizer_config.json, as transformers reads it; a ValueError for
    a class or side that SigLIP's text tower would read otherwise. A side the config does not set is the
    tokenizer.json's, else the class's default. (What is added around a text is the tokenizer.json's
    post-processor's: transformers 5 follows it whatever add_bos_token / add_eos_token say.)"""
    tokenizer_class = config.get("tokenizer_class")
    classes = (*T5_TOKENIZER_CLASSES, *GEMMA_TOKENIZER_CLASSES, *FILE_TOKENIZER_CLASSES)
    if tokenizer_class not in classes:
        raise ValueError(f"tokenizer_class {tokenizer_class!r} is not supported in an OpenCLIP SigLIP directory "
                         f"(one of {', '.join(classes)})")
    for key in ("eos_token", "pad_token"):
        if config.get(key) is None and (key in config or tokenizer_class in FILE_TOKENIZER_CLASSES):
            raise ValueError(f"{key} is {'null' if key in config else 'missing'} ({tokenizer_class} then has none, "
                             f"which OpenCLIP's tokenizer needs)")
    gemma = tokenizer_class in GEMMA_TOKENIZER_CLASSES
    in_file = {"padding_side": (backend.padding or {}).get("direction"),
               "truncation_side": (backend.truncation or {}).get("direction")}
    for key, default in [("padding_side", "left" if gemma else "right"), ("truncation_side", "right")]:
        side = config.get(key) or in_file[key] or default
        if side != "right":
            raise ValueError(f"{key} {side!r} is not supported (SigLIP's text tower reads the last position: right)")
    return (special_token(config, "eos_token", GEMMA_EOS if gemma else "</s>", where),
            special_token(config, "pad_token", GEMMA_PAD if gemma else "<pad>", where))


# --- export --------------------------------------------------------------------------------------------------------


def timm_model_name(config: TwoTowerConfig) -> str:
    """The timm SigLIP ViT that computes `config`'s image tower (shape, image size, activation); a one-line
    ValueError when there is none, since OpenCLIP builds a SigLIP's image tower from a timm name."""
    v = config.vision
    tower = (v.width, v.depth, v.num_heads, v.mlp_dim, v.patch_size, v.image_size, config.options.activation)
    names = [name for name, spec in TIMM_SIGLIP_VITS.items() if spec == tower]
    if not names:
        raise ValueError(f"cannot export as an OpenCLIP SigLIP: its image tower (width {v.width}, depth {v.depth}, "
                         f"{v.num_heads} heads, MLP {v.mlp_dim}, {v.patch_size} px patches, {v.image_size} px, "
                         f"{config.options.activation}) is none of timm's SigLIP ViTs, from which OpenCLIP builds "
                         f"it; use --to hf or --to big_vision")
    return names[0]


def config_to_open_clip(config: TwoTowerConfig, tokenizer: OpenClipHfTokenizer, tokenizer_name: str) -> dict:
    """The OpenCLIP `model_cfg` of a SigLIP `config` read with `tokenizer`; `tokenizer_name` is written as
    `text_cfg.hf_tokenizer_name`. A one-line ValueError for what OpenCLIP's SigLIP cannot express."""
    from mmjax.convert.open_clip import mlp_ratio

    check_exportable(config, "an OpenCLIP SigLIP")
    name, text = timm_model_name(config), config.text
    text_act_kwargs = {"gelu": {}, "gelu_tanh": {"approximate": "tanh"}}.get(config.text_options.activation)
    problems = [(config.options.norm_eps != NORM_EPS, f"its LayerNorm eps is {config.options.norm_eps}, timm's "
                                                      f"{NORM_EPS}"),
                (config.vision.posemb != "learned", f"its image position table is {config.vision.posemb!r}"),
                (text_act_kwargs is None, f"its text tower's activation is {config.text_options.activation!r}")]
    for bad, why in problems:
        if bad:
            raise ValueError(f"cannot export as an OpenCLIP SigLIP: {why}")
    text_cfg = dict(context_length=text.context_length, vocab_size=text.vocab_size, width=text.width,
                    heads=text.num_heads, layers=text.depth, mlp_ratio=mlp_ratio(text.mlp_dim, text.width),
                    no_causal_mask=True, proj_bias=True, pool_type="last", norm_kwargs={"eps": NORM_EPS},
                    hf_tokenizer_name=tokenizer_name, tokenizer_kwargs={"clean": tokenizer.open_clip_clean})
    if text_act_kwargs:
        text_cfg["act_kwargs"] = text_act_kwargs
    return dict(embed_dim=config.embed_dim, init_logit_bias=config.logit_bias_init, custom_text=True,
                vision_cfg=dict(image_size=config.vision.image_size, timm_model_name=name,
                                timm_model_pretrained=False, timm_pool="map", timm_proj="none"),
                text_cfg=text_cfg)


def write_tokenizer(tokenizer: OpenClipHfTokenizer, directory: str) -> None:
    """`tokenizer.json` (without padding and truncation: OpenCLIP's `HFTokenizer` sets them per call) and a
    `tokenizer_config.json` naming `PreTrainedTokenizerFast`, which transformers runs the file with as it is."""
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
    pad_token = backend.padding["pad_token"]
    backend.no_padding()
    backend.no_truncation()
    backend.save(os.path.join(directory, "tokenizer.json"))
    write_json(os.path.join(directory, "tokenizer_config.json"), dict(
        tokenizer_class=FILE_TOKENIZER_CLASSES[0], eos_token=backend.id_to_token(tokenizer.eot_id),
        pad_token=pad_token, padding_side="right", truncation_side="right", model_max_length=tokenizer.context_length))


def export(pretrained: Pretrained, out_dir: str) -> None:
    """Writes an OpenCLIP SigLIP directory that `open_clip.create_model_and_transforms("local-dir:" + out_dir)` and
    `open_clip.get_tokenizer` load as it is, and mmjax loads back bit-identical (all at once, `staged_export`): a
    SigLIP whose image tower is one of timm's SigLIP ViTs and whose tokenizer is OpenCLIP's (one loaded from an
    OpenCLIP SigLIP, or fine-tuned from one). `text_cfg.hf_tokenizer_name` is the directory's name: `local-dir:`
    reads the tokenizer in the directory; set it to the repository's name before uploading to the Hub, where
    OpenCLIP's `hf-hub:` reads the tokenizer from the repository it names."""
    from mmjax.convert.open_clip import CONFIG_FILE, WEIGHTS_FILE, preprocess_to_open_clip

    tokenizer = pretrained.tokenizer
    if not isinstance(tokenizer, OpenClipHfTokenizer):
        raise ValueError(f"cannot export as an OpenCLIP SigLIP: its tokenizer is a {type(tokenizer).__name__}, not "
                         f"OpenCLIP's (a tokenizer.json behind OpenCLIP's text clean-up, as an OpenCLIP SigLIP "
                         f"loads); use --to hf or --to big_vision")
    model_cfg = config_to_open_clip(pretrained.config, tokenizer, os.path.basename(os.path.abspath(out_dir)))
    tensors = params_to_open_clip(layout.unscan(layout.to_numpy(pretrained.params)), pretrained.config)
    with staged_export(out_dir) as staging:
        write_safetensors(os.path.join(staging, WEIGHTS_FILE), tensors)
        write_json(os.path.join(staging, CONFIG_FILE),
                   {"model_cfg": model_cfg, "preprocess_cfg": preprocess_to_open_clip(pretrained.preprocess)})
        write_tokenizer(tokenizer, staging)
