"""Hugging Face `CLIPModel` directories: `config.json`, `model.safetensors` (or sharded:
`model.safetensors.index.json` + its shards), tokenizer files, `preprocessor_config.json`.

Text pooling follows transformers: the first position holding `eos_token_id` (configs with
the legacy `eos_token_id == 2` pool at the largest id). Images are preprocessed as
`CLIPImageProcessor` does with the PIL backend (`mmjax.convert.image_processor`).
"""

from __future__ import annotations

import json
import os

import numpy as np

from mmjax.convert import hf_activations, layout
from mmjax.convert.checks import config_errors_name_the_file, source_shapes
from mmjax.convert.export_dir import staged_export
from mmjax.convert.image_processor import CLIP as CLIP_PROCESSOR
from mmjax.convert.image_processor import preprocess_from_hf, preprocess_to_hf
from mmjax.convert.jsonfile import json_object, read_json, special_token, write_json
from mmjax.convert.tensors import read_transformers_weights, write_safetensors
from mmjax.data.clip_bpe import ClipBpeTokenizer
from mmjax.data.preprocess import ImagePreprocess
from mmjax.models import BlockOptions, TextConfig, TwoTowerConfig, VisionConfig
from mmjax.pretrained import Pretrained

@config_errors_name_the_file
def config_from_hf(hf: dict, where: str) -> TwoTowerConfig:
    """A `CLIPConfig` dict (config.json) → `TwoTowerConfig`."""
    text, vision = json_object(hf, "text_config", where), json_object(hf, "vision_config", where)
    acts = [tower.get("hidden_act", "quick_gelu") for tower in (vision, text)]
    eps = {vision.get("layer_norm_eps", 1e-5), text.get("layer_norm_eps", 1e-5)}
    if len(eps) > 1:
        raise ValueError(f"{where}: towers with different layer-norm eps are not supported")
    vision_act, text_act = (hf_activations.from_hf(act) for act in acts)
    eos = text.get("eos_token_id", 49407)
    try:
        return TwoTowerConfig(
            vision=VisionConfig(width=vision["hidden_size"], depth=vision["num_hidden_layers"],
                                num_heads=vision["num_attention_heads"], mlp_dim=vision["intermediate_size"],
                                image_size=vision.get("image_size", 224),
                                patch_size=vision.get("patch_size", 32)),
            text=TextConfig(width=text["hidden_size"], depth=text["num_hidden_layers"],
                            num_heads=text["num_attention_heads"], mlp_dim=text["intermediate_size"],
                            vocab_size=text.get("vocab_size", 49408),
                            context_length=text.get("max_position_embeddings", 77),
                            pool="eot" if eos == 2 else "first_eot", eot_id=None if eos == 2 else eos),
            embed_dim=hf.get("projection_dim", 512),
            options=BlockOptions(activation=vision_act, norm_eps=eps.pop()),
            text_activation=None if text_act == vision_act else text_act,
        )
    except KeyError as error:
        raise ValueError(f"{where}: {error.args[0]} is missing from the text or vision config") from None


def _block(get, prefix: str, heads: int) -> dict:
    pair = lambda name: (get(f"{prefix}.{name}.weight"), get(f"{prefix}.{name}.bias"))
    return layout.transformer_block(
        pair("layer_norm1"), pair("self_attn.q_proj"), pair("self_attn.k_proj"), pair("self_attn.v_proj"),
        pair("self_attn.out_proj"), pair("layer_norm2"), pair("mlp.fc1"), pair("mlp.fc2"), heads)


def params_from_hf(tensors: dict[str, np.ndarray], config: TwoTowerConfig, where: str) -> dict:
    """transformers CLIPModel state dict → mmjax params; a one-line ValueError naming the first tensor that is
    missing, has another shape than `config` needs, or is not used."""
    used, shapes = set(), source_shapes(params_to_hf, config)

    def get(key: str) -> np.ndarray:
        used.add(key)
        return layout.take(tensors, key, where, shapes[key])

    ln = lambda name: layout.layer_norm(get(f"{name}.weight"), get(f"{name}.bias"))
    v, t = "vision_model", "text_model"
    vheads, theads = config.vision.num_heads, config.text.num_heads
    params = {
        "image_encoder": {
            "patch_embed": {"conv": {"kernel": layout.patch_conv(get(f"{v}.embeddings.patch_embedding.weight"))}},
            "cls": {"token": get(f"{v}.embeddings.class_embedding")},
            "pos_embed": {"embedding": get(f"{v}.embeddings.position_embedding.weight")},
            "ln_pre": ln(f"{v}.pre_layrnorm"),
            "encoder": {f"layers_{i}": _block(get, f"{v}.encoder.layers.{i}", vheads)
                        for i in range(config.vision.depth)},
            "ln_post": ln(f"{v}.post_layernorm"),
        },
        "text_encoder": {
            "token_embed": {"embedding": get(f"{t}.embeddings.token_embedding.weight")},
            "pos_embed": {"embedding": get(f"{t}.embeddings.position_embedding.weight")},
            "encoder": {f"layers_{i}": _block(get, f"{t}.encoder.layers.{i}", theads)
                        for i in range(config.text.depth)},
            "ln_final": ln(f"{t}.final_layer_norm"),
        },
        "image_proj": layout.dense(get("visual_projection.weight")),
        "text_proj": layout.dense(get("text_projection.weight")),
        "logit_scale": get("logit_scale"),
    }
    unused = [key for key in tensors if key not in used and not key.endswith("position_ids")]
    if unused:
        raise ValueError(f"{where}: tensor {unused[0]} is not used by a CLIPModel with this config.json")
    return params


def load_tokenizer(path: str, context_length: int, eot_token: str = "<|endoftext|>") -> ClipBpeTokenizer:
    """The directory's tokenizer (tokenizer.json, else vocab.json + merges.txt), padded as transformers pads."""
    config_file, map_file = (os.path.join(path, name) for name in ("tokenizer_config.json", "special_tokens_map.json"))
    config = read_json(config_file) if os.path.isfile(config_file) else {}
    pad = special_token(config, "pad_token", "<|endoftext|>", config_file)
    eot = special_token(config, "eos_token", eot_token, config_file)
    if "added_tokens_decoder" not in config and os.path.isfile(map_file):  # transformers' legacy layout: the map wins
        tokens = read_json(map_file)
        pad, eot = special_token(tokens, "pad_token", pad, map_file), special_token(tokens, "eos_token", eot, map_file)
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        return ClipBpeTokenizer.from_tokenizer_json(os.path.join(path, "tokenizer.json"), context_length, pad, eot)
    if os.path.isfile(os.path.join(path, "vocab.json")) and os.path.isfile(os.path.join(path, "merges.txt")):
        return ClipBpeTokenizer.from_vocab_merges(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"),
                                                  context_length, pad)
    raise FileNotFoundError(f"{path} has no tokenizer.json nor vocab.json + merges.txt")


def load_preprocess(path: str, image_size: int) -> ImagePreprocess:
    """`preprocessor_config.json` (CLIPImageProcessor) → `ImagePreprocess`; OpenAI's defaults when absent."""
    file = os.path.join(path, "preprocessor_config.json")
    return preprocess_from_hf(read_json(file) if os.path.isfile(file) else {}, image_size, file, CLIP_PROCESSOR)


def describe(path: str) -> tuple[TwoTowerConfig, ImagePreprocess]:
    """The model and preprocessing of a transformers CLIPModel directory, from its JSON files alone."""
    config_path = os.path.join(path, "config.json")
    config = config_from_hf(read_json(config_path), config_path)
    return config, load_preprocess(path, config.vision.image_size)


def load(path: str, *, allow_pickle: bool = False) -> Pretrained:
    """A local transformers CLIPModel directory → `Pretrained`."""
    config, preprocess = describe(path)
    tensors, weights_file = read_transformers_weights(path, allow_pickle=allow_pickle)
    params = params_from_hf(tensors, config, weights_file)
    tokenizer = load_tokenizer(path, config.text.context_length)
    return Pretrained(config, params, tokenizer, preprocess, path, "hf_clip")


# --- export ---------------------------------------------------------------------------------------------------


def config_to_hf(config: TwoTowerConfig, eot_id: int, pad_id: int, bos_id: int) -> dict:
    """`TwoTowerConfig` → a `CLIPConfig` dict; one-line error when the model is not a CLIP."""
    vision, text, opts = config.vision, config.text, config.options
    problems = [name for name, bad in [
        ("vision pool must be 'cls'", vision.pool != "cls"), ("vision pre_norm", not vision.pre_norm),
        ("patch bias", vision.patch_bias), ("learned position embeddings", vision.posemb != "learned"),
        ("causal text", not text.causal), ("text pool eot/first_eot", text.pool not in ("eot", "first_eot")),
        ("image projection", not config.image_projection), ("no text projection bias", config.text_projection_bias),
        ("no logit bias", config.logit_bias_init is not None)] if bad]
    if problems:
        raise ValueError(f"this model cannot be written as a transformers CLIPModel (needs: {', '.join(problems)})")
    common = dict(layer_norm_eps=opts.norm_eps, attention_dropout=0.0, projection_dim=config.embed_dim)
    return {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": config.embed_dim,
        "logit_scale_init_value": 2.6592, "initializer_factor": 1.0,
        "text_config": dict(model_type="clip_text_model", hidden_size=text.width, intermediate_size=text.mlp_dim,
                            num_hidden_layers=text.depth, num_attention_heads=text.num_heads,
                            vocab_size=text.vocab_size, max_position_embeddings=text.context_length,
                            bos_token_id=bos_id, eos_token_id=eot_id, pad_token_id=pad_id,
                            hidden_act=hf_activations.TO_HF[config.text_options.activation], **common),
        "vision_config": dict(model_type="clip_vision_model", hidden_size=vision.width,
                              intermediate_size=vision.mlp_dim, num_hidden_layers=vision.depth,
                              num_attention_heads=vision.num_heads, image_size=vision.image_size,
                              patch_size=vision.patch_size, num_channels=3,
                              hidden_act=hf_activations.TO_HF[opts.activation], **common),
    }


def _block_to_hf(block: dict, prefix: str) -> dict[str, np.ndarray]:
    out = {}
    for hf_name, ours in [("self_attn.q_proj", block["attn"]["query"]), ("self_attn.k_proj", block["attn"]["key"]),
                          ("self_attn.v_proj", block["attn"]["value"]), ("self_attn.out_proj", block["attn"]["out"]),
                          ("mlp.fc1", block["mlp"]["fc1"]), ("mlp.fc2", block["mlp"]["fc2"])]:
        out[f"{prefix}.{hf_name}.weight"], out[f"{prefix}.{hf_name}.bias"] = layout.to_torch_linear(ours)
    for hf_name, ours in [("layer_norm1", block["ln_1"]), ("layer_norm2", block["ln_2"])]:
        out[f"{prefix}.{hf_name}.weight"], out[f"{prefix}.{hf_name}.bias"] = ours["scale"], ours["bias"]
    return out


def params_to_hf(params: dict) -> dict[str, np.ndarray]:
    """mmjax params (scanned layers or not) → transformers CLIPModel state dict."""
    params = layout.unscan(layout.to_numpy(params))
    image, text = params["image_encoder"], params["text_encoder"]
    v, t = "vision_model", "text_model"
    out = {
        f"{v}.embeddings.patch_embedding.weight": layout.to_torch_conv(image["patch_embed"]["conv"]["kernel"]),
        f"{v}.embeddings.class_embedding": image["cls"]["token"],
        f"{v}.embeddings.position_embedding.weight": image["pos_embed"]["embedding"],
        f"{v}.pre_layrnorm.weight": image["ln_pre"]["scale"], f"{v}.pre_layrnorm.bias": image["ln_pre"]["bias"],
        f"{v}.post_layernorm.weight": image["ln_post"]["scale"], f"{v}.post_layernorm.bias": image["ln_post"]["bias"],
        f"{t}.embeddings.token_embedding.weight": text["token_embed"]["embedding"],
        f"{t}.embeddings.position_embedding.weight": text["pos_embed"]["embedding"],
        f"{t}.final_layer_norm.weight": text["ln_final"]["scale"], f"{t}.final_layer_norm.bias": text["ln_final"]["bias"],
        "visual_projection.weight": layout.to_torch_linear(params["image_proj"])[0],
        "text_projection.weight": layout.to_torch_linear(params["text_proj"])[0],
        "logit_scale": np.asarray(params["logit_scale"], np.float32).reshape(()),
    }
    for tower, prefix in [(image, v), (text, t)]:
        for name, block in tower["encoder"].items():
            out.update(_block_to_hf(block, f"{prefix}.encoder.layers.{name.removeprefix('layers_')}"))
    return out


def export_tokenizer(tokenizer, out_dir: str) -> None:
    """tokenizer.json (+ tokenizer_config.json naming the special tokens) for `AutoTokenizer`.

    A CLIP BPE (either flavour) is written as transformers' `CLIPTokenizer` (vocab.json + merges.txt, special
    tokens named `<|startoftext|>` / `<|endoftext|>`); any other backend as its own tokenizer.json. An OpenCLIP
    tokenizer with another cleaning than "lower" is refused: `CLIPTokenizer` lower-cases and keeps punctuation."""
    open_clip_clean = getattr(tokenizer, "open_clip_clean", None)
    if open_clip_clean not in (None, "lower"):
        raise ValueError(f"an OpenCLIP tokenizer with clean={open_clip_clean!r} cannot be written as transformers' "
                         f"CLIPTokenizer, which lower-cases and keeps punctuation")
    backend = json.loads(tokenizer.backend.to_str())
    model = backend["model"]
    pad_token = tokenizer.backend.id_to_token(tokenizer.pad_id)
    if model["type"] == "BPE" and model.get("end_of_word_suffix") == "</w>":
        vocab = dict(model["vocab"])
        renames = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
        vocab = {renames.get(token, token): i for token, i in vocab.items()}
        pad_token = renames.get(pad_token, pad_token)
        write_json(os.path.join(out_dir, "vocab.json"), vocab)
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        if open_clip_clean is not None:  # OpenCLIP pads with id 0; transformers with a token
            pad_token = "<|endoftext|>"
        special = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                       pad_token=pad_token)
        write_json(os.path.join(out_dir, "tokenizer_config.json"),
                    dict(tokenizer_class="CLIPTokenizer", model_max_length=tokenizer.context_length, **special))
        return
    tokenizer.backend.save(os.path.join(out_dir, "tokenizer.json"))
    eot = tokenizer.backend.id_to_token(tokenizer.eot_id)
    write_json(os.path.join(out_dir, "tokenizer_config.json"),
                dict(tokenizer_class="PreTrainedTokenizerFast", model_max_length=tokenizer.context_length,
                     pad_token=pad_token, eos_token=eot))


def export(pretrained: Pretrained, out_dir: str) -> None:
    """Writes a directory `transformers.CLIPModel.from_pretrained(out_dir)` loads as it is (all at once,
    `staged_export`). The weights are exact; the processor floors the centre-crop offset, which a rounding
    preprocess does not (`crop_caveat`)."""
    tokenizer = pretrained.tokenizer
    bos_id = int(tokenizer([""])[0, 0])
    hf_config = config_to_hf(pretrained.config, tokenizer.eot_id, tokenizer.pad_id, bos_id)
    with staged_export(out_dir) as staging:
        write_safetensors(os.path.join(staging, "model.safetensors"), params_to_hf(pretrained.params),
                          metadata={"format": "pt"})
        write_json(os.path.join(staging, "config.json"), hf_config)
        export_tokenizer(tokenizer, staging)
        write_json(os.path.join(staging, "preprocessor_config.json"), preprocess_to_hf(pretrained.preprocess,
                                                                                       CLIP_PROCESSOR))
