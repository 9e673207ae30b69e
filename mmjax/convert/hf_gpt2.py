"""A Hugging Face GPT-2 as a Flamingo's language model, as Flamingo is built: a pretrained causal language model,
frozen, that learns to read images through gated cross-attention.

    language = hf_gpt2.load("hf:gpt2", context_length=64)            # or a local GPT2LMHeadModel directory
    config = language.flamingo_config(vision, num_latents=64)        # its text shape, image token, activation
    model = Flamingo(config)
    params = language.into(model.init(key, images, token_ids)["params"])
    tokenizer = hf_gpt2.load_tokenizer("path/to/gpt2", context_length=64)   # GPT-2's BPE, `<image>` appended

The vocabulary gains one token, `<image>` (Flamingo's media token), after GPT-2's: its embedding is the mean of
the others (as transformers' `resize_token_embeddings` starts a new one), and so is its output row (GPT-2's output
layer is its token embedding, transposed). The position table is cut to `context_length` (at most GPT-2's
`n_positions`). With the gates closed (`gate_init` 0, Flamingo's start) the Flamingo's logits over GPT-2's
vocabulary are GPT-2's. Directories hold `config.json` (`model_type` "gpt2") and `model.safetensors` (or a
sharded or, with `allow_pickle`, a `.bin` checkpoint); the tensors may carry `transformer.` (GPT2LMHeadModel) or
not (GPT2Model).
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import numpy as np
import tokenizers
from tokenizers import processors

from mmjax.convert import hf_activations, layout
from mmjax.convert.checks import config_errors_name_the_file, flatten
from mmjax.convert.jsonfile import read_json
from mmjax.convert.tensors import read_transformers_weights
from mmjax.data.tokenizers import Tokenizer, reading_tokenizer_file
from mmjax.models import FlamingoConfig, TextConfig, VisionConfig

MEDIA_TOKEN = "<image>"
END_OF_TEXT = "<|endoftext|>"
# GPT-2 options whose non-default values compute otherwise than mmjax's blocks
_DEFAULTS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False}


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """A GPT-2 in the layout of a Flamingo's language model. text: its shape, the vocabulary including the image
    token (`media_token_id`, the last id); activation, norm_eps: what its blocks compute with; params (NumPy): the
    Flamingo parameters it fills, `token_embed`, `pos_embed`, `layers_{i}`, `ln_final` and `lm_head`."""

    text: TextConfig
    media_token_id: int
    activation: str
    norm_eps: float
    params: dict

    @property
    def flamingo_fields(self) -> dict:
        """The `FlamingoConfig` fields this language model sets: its text shape, the image token and the
        activation and norm epsilon it computes with."""
        return dict(text=self.text, media_token_id=self.media_token_id, language_activation=self.activation,
                    language_norm_eps=self.norm_eps)

    def flamingo_config(self, vision: VisionConfig, **fields) -> FlamingoConfig:
        """A `FlamingoConfig` around this language model: `vision` and `fields` (num_latents, gate_init,
        options, …) the caller's, `flamingo_fields` its own."""
        return FlamingoConfig(vision, **self.flamingo_fields, **fields)

    def into(self, params: dict) -> dict:
        """A Flamingo's `params` (`flamingo_config`'s model; as `init` returns them, or unboxed) with this language
        model's parameters in place of its own, unboxed; a one-line ValueError when a shape differs."""
        params = nn.unbox(params)
        ours = flatten(params)
        for name, value in flatten(self.params).items():
            if name not in ours or np.shape(ours[name]) != value.shape:
                raise ValueError(f"the Flamingo's parameter {name} has shape "
                                 f"{np.shape(ours[name]) if name in ours else None}, GPT-2's {value.shape}: build "
                                 f"the model from LanguageModel.flamingo_config")
        return {**params, **self.params}


@config_errors_name_the_file
def text_config_from_hf(hf: dict, where: str, context_length: int) -> tuple[TextConfig, str, float, int]:
    """A `GPT2Config` dict (config.json) → `(TextConfig with the image token, activation, norm epsilon, the
    positions it was trained on)`."""
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"model_type {hf.get('model_type')!r} is not 'gpt2'")
    for key, default in _DEFAULTS.items():
        if hf.get(key, default) != default:
            raise ValueError(f"{key}={hf[key]} is not supported (only GPT-2's default, {default})")
    activation = hf_activations.from_hf(hf.get("activation_function", "gelu_new"), "activation_function")
    norm_eps = hf.get("layer_norm_epsilon", 1e-5)
    if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not norm_eps >= 0:
        raise ValueError(f"layer_norm_epsilon {norm_eps!r} is not a number ≥ 0")
    positions = hf.get("n_positions", 1024)
    if not 1 <= context_length <= positions:
        raise ValueError(f"context_length {context_length} must lie in [1, {positions}] (its n_positions)")
    width = hf.get("n_embd", 768)
    text = TextConfig(width=width, depth=hf.get("n_layer", 12), num_heads=hf.get("n_head", 12),
                      mlp_dim=hf.get("n_inner") or 4 * width, vocab_size=hf.get("vocab_size", 50257) + 1,
                      context_length=context_length)
    return text, activation, float(norm_eps), positions


def params_from_hf(tensors: dict[str, np.ndarray], text: TextConfig, positions: int, where: str) -> dict:
    """GPT-2's state dict (`positions`: its `n_positions`) → the Flamingo language model's parameters
    (`LanguageModel.params`); a one-line ValueError naming the first tensor that is missing, has another shape than
    the config needs, or is not used."""
    prefixed = any(key.startswith("transformer.") for key in tensors)
    used = set()
    width, vocab = text.width, text.vocab_size - 1

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        name = f"transformer.{key}" if prefixed else key
        used.add(name)
        return layout.take(tensors, name, where, shape)

    def pair(key: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        return get(f"{key}.weight", shape), get(f"{key}.bias", shape[-1:])

    def linear(key: str, fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
        weight, bias = pair(key, (fan_in, fan_out))  # GPT-2's Conv1D: `x @ weight`, [in, out]
        return weight.T, bias

    def block(i: int) -> dict:
        qkv, qkv_bias = linear(f"h.{i}.attn.c_attn", width, 3 * width)
        query, key, value = zip(np.split(qkv, 3), np.split(qkv_bias, 3))  # each (weight [out, in], bias)
        return layout.transformer_block(
            pair(f"h.{i}.ln_1", (width,)), query, key, value, linear(f"h.{i}.attn.c_proj", width, width),
            pair(f"h.{i}.ln_2", (width,)), linear(f"h.{i}.mlp.c_fc", width, text.mlp_dim),
            linear(f"h.{i}.mlp.c_proj", text.mlp_dim, width), text.num_heads)

    embedding = get("wte.weight", (vocab, width))
    embedding = np.concatenate([embedding, embedding.mean(axis=0, keepdims=True)])  # the image token's row
    params = {
        "token_embed": {"embedding": embedding},
        "pos_embed": {"embedding": get("wpe.weight", (positions, width))[:text.context_length]},
        **{f"layers_{i}": block(i) for i in range(text.depth)},
        "ln_final": layout.layer_norm(*pair("ln_f", (width,))),
        "lm_head": {"kernel": embedding.T, "bias": np.zeros(text.vocab_size, np.float32)},
    }
    if "lm_head.weight" in tensors:  # saved although tied, or untied
        used.add("lm_head.weight")
        head = layout.take(tensors, "lm_head.weight", where, (vocab, width))
        params["lm_head"]["kernel"] = np.concatenate([head, head.mean(axis=0, keepdims=True)]).T
    buffers = (".attn.bias", ".attn.masked_bias")  # the causal masks older checkpoints saved
    unused = [key for key in tensors if key not in used and not key.endswith(buffers)]
    if unused:
        raise ValueError(f"{where}: tensor {unused[0]} is not used by a GPT-2 with this config.json")
    return params


def _directory(source: str, allow_pickle: bool) -> str:
    """The local directory of `source` (`hf:ORG/NAME[@REVISION]` downloaded first)."""
    from mmjax.pretrained import download_hf

    source = os.fspath(source)
    path = download_hf(source[3:], allow_pickle) if source.startswith("hf:") else source
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{source} is not a directory (expected a GPT-2 directory or hf:ORG/NAME)")
    return path


def _config(path: str) -> tuple[dict, str]:
    """`(config.json's dict, its path)` of GPT-2 directory `path`."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path} has no config.json (a transformers GPT-2 directory)")
    return read_json(config_path), config_path


def load(source: str, context_length: int, *, allow_pickle: bool = False) -> LanguageModel:
    """The GPT-2 of `source` (a transformers directory or `hf:ORG/NAME`) as a Flamingo's language model reading
    `context_length` tokens."""
    path = _directory(source, allow_pickle)
    hf, config_path = _config(path)
    text, activation, norm_eps, positions = text_config_from_hf(hf, config_path, context_length)
    tensors, where = read_transformers_weights(path, allow_pickle=allow_pickle)
    return LanguageModel(text, text.vocab_size - 1, activation, norm_eps,
                         params_from_hf(tensors, text, positions, where))


def load_tokenizer(source: str, context_length: int, *, media_token: bool = True) -> Tokenizer:
    """GPT-2's byte-level BPE from `source`'s tokenizer.json, with `<image>` as the next id (the
    `LanguageModel`'s `media_token_id`; without `media_token`, a tokenizer that never emits that id, for captions
    that `captioning_inputs` puts after their image's token): each text is its tokens then `<|endoftext|>`,
    padded with `<|endoftext|>` (GPT-2 has no padding token) to `context_length`. A one-line ValueError when its
    vocabulary is not the size of config.json's `vocab_size` (a model padded past its tokenizer): `<image>` would
    not be the model's image token."""
    directory = _directory(source, allow_pickle=False)
    path = os.path.join(directory, "tokenizer.json")
    with reading_tokenizer_file(path):
        backend = tokenizers.Tokenizer.from_file(path)
    end = backend.token_to_id(END_OF_TEXT)
    if end is None:
        raise ValueError(f"{path}: the vocabulary has no {END_OF_TEXT}")
    vocab = backend.get_vocab_size()
    hf, config_path = _config(directory)
    if vocab != hf.get("vocab_size", 50257):
        raise ValueError(f"{path} has {vocab} tokens, {config_path} vocab_size {hf.get('vocab_size', 50257)}: "
                         f"{MEDIA_TOKEN} (id {vocab}) would not be the model's image token "
                         f"(id {hf.get('vocab_size', 50257)})")
    if media_token:
        backend.add_special_tokens([MEDIA_TOKEN])
    if media_token and backend.token_to_id(MEDIA_TOKEN) != vocab:
        raise ValueError(f"{path}: {MEDIA_TOKEN} is already a token (id {backend.token_to_id(MEDIA_TOKEN)})")
    backend.post_processor = processors.TemplateProcessing(single=f"$A {END_OF_TEXT}",
                                                           special_tokens=[(END_OF_TEXT, end)])
    backend.enable_truncation(context_length)
    backend.enable_padding(pad_id=end, pad_token=END_OF_TEXT, length=context_length)
    return Tokenizer(backend, END_OF_TEXT)
