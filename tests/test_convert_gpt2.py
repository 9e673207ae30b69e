"""A transformers GPT-2 as a Flamingo's language model: with the gates closed the Flamingo's logits are GPT-2's
(torch), the image token's row is the mean one, the captioner writes GPT-2's greedy continuation; its BPE reads
texts as GPT-2's with `<image>` after them; bad directories are one-line errors."""

import json
import os
import pathlib
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from mmjax.captioner import Captioner  # noqa: E402
from mmjax.convert import hf_gpt2  # noqa: E402
from mmjax.convert.tensors import read_tensors, write_safetensors  # noqa: E402
from mmjax.models import Flamingo, VisionConfig  # noqa: E402
from tiny_gpt2 import torch_logits, write_tiny_gpt2  # noqa: E402

VISION = VisionConfig(width=16, depth=1, num_heads=2, mlp_dim=32, image_size=8, patch_size=4)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return write_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def flamingo(path, context_length=12):
    language = hf_gpt2.load(str(path), context_length)
    model = Flamingo(language.flamingo_config(VISION, num_latents=3, resampler_depth=1))
    ids = np.zeros((1, context_length), np.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 1, 8, 8, 3), np.float32), ids))["params"]
    return language, model, language.into(params)


def test_with_closed_gates_the_flamingo_is_gpt2_and_its_image_token_is_the_mean_one(gpt2_dir):
    language, model, params = flamingo(gpt2_dir)
    vocab = language.media_token_id
    assert language.text.vocab_size == vocab + 1 and language.activation == "gelu_tanh"
    ids = np.random.default_rng(0).integers(0, vocab, (3, 12)).astype(np.int32)
    ids[:, [0, 5]] = vocab  # two images in each row
    images = np.random.default_rng(1).normal(size=(3, 2, 8, 8, 3)).astype(np.float32)
    got = np.asarray(model.apply({"params": params}, images, ids))

    hf = read_tensors(os.path.join(gpt2_dir, "model.safetensors"))
    table = hf["transformer.wte.weight"]
    embeddings = np.concatenate([table, table.mean(axis=0, keepdims=True)])[ids]  # <image>: the mean row
    want = torch_logits(gpt2_dir, embeddings)
    np.testing.assert_allclose(got[..., :vocab], want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got[..., vocab], want.mean(axis=-1), atol=1e-5)  # tied: the mean logit


def test_the_captioner_writes_gpt2s_greedy_continuation_and_the_tokenizer_is_gpt2s_bpe(gpt2_dir):
    language, model, params = flamingo(gpt2_dir)
    tokenizer = hf_gpt2.load_tokenizer(str(gpt2_dir), 12)
    backend = tokenizers.Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    end = backend.token_to_id("<|endoftext|>")
    text = "a red square"
    words = backend.encode(text).ids
    assert tokenizer([text])[0].tolist() == words + [end] * (12 - len(words))
    assert tokenizer(["a red circle " * 10])[0, -1] == end  # truncated, its end kept
    assert tokenizer.backend.token_to_id("<image>") == language.media_token_id == backend.get_vocab_size()
    assert tokenizer.decode(tokenizer([text])[0]) == text

    hf = read_tensors(os.path.join(gpt2_dir, "model.safetensors"))
    table = hf["transformer.wte.weight"]
    sequence = [table.mean(axis=0)] + [table[i] for i in words]  # <image>, then the prompt
    written = []
    for _ in range(12 - 1 - len(words)):  # greedy, without a cache, until the end of text or of the context
        token = int(torch_logits(gpt2_dir, np.stack(sequence)[None])[0, -1].argmax())
        written.append(token)
        if token == end:
            break
        sequence.append(table[token])
    images = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    captioner = Captioner(model, params, tokenizer, (0.5,) * 3, (0.5,) * 3)
    want = tokenizer.decode(words + written)
    assert captioner.caption(images, text) == [want, want]


def test_bad_gpt2_directories_are_one_line_errors(gpt2_dir, tmp_path):
    config = json.loads((gpt2_dir / "config.json").read_text())

    def directory(name, changes=None, drop=None, extra=None):
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps({**config, **(changes or {})}))
        tensors = read_tensors(os.path.join(gpt2_dir, "model.safetensors"))
        tensors = {k: v for k, v in tensors.items() if k != drop} | (extra or {})
        write_safetensors(str(path / "model.safetensors"), tensors)
        return str(path)

    cases = {
        directory("clip", {"model_type": "clip"}): "model_type 'clip' is not 'gpt2'",
        directory("relu", {"activation_function": "relu"}): "activation_function 'relu' is not one of",
        directory("scaled", {"scale_attn_by_inverse_layer_idx": True}): "scale_attn_by_inverse_layer_idx=True is "
                                                                         "not supported",
        directory("decoder", {"add_cross_attention": True}): "add_cross_attention=True is not supported",
        directory("eps", {"layer_norm_epsilon": "1e-5"}): "layer_norm_epsilon '1e-5' is not a number ≥ 0",
        directory("wide", {"n_embd": 32}): "tensor transformer.wte.weight has shape (",
        directory("missing", drop="transformer.h.1.mlp.c_fc.bias"): "tensor transformer.h.1.mlp.c_fc.bias is missing",
        directory("deeper", extra={"transformer.h.2.ln_1.weight": np.ones(16, np.float32)}):
            "tensor transformer.h.2.ln_1.weight is not used by a GPT-2 with this config.json",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            hf_gpt2.load(path, 12)
    with pytest.raises(ValueError, match=r"context_length 25 must lie in \[1, 24\] \(its n_positions\)"):
        hf_gpt2.load(str(gpt2_dir), 25)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        hf_gpt2.load(str(tmp_path), 12)
    padded = directory("padded", {"vocab_size": config["vocab_size"] + 3})  # a model padded past its tokenizer
    shutil.copy(gpt2_dir / "tokenizer.json", padded)
    with pytest.raises(ValueError, match=rf"tokenizer.json has {config['vocab_size']} tokens, .*config.json "
                                         rf"vocab_size {config['vocab_size'] + 3}: <image> \(id"):
        hf_gpt2.load_tokenizer(padded, 12)

    language = hf_gpt2.load(str(gpt2_dir), 12)
    _, small, _ = flamingo(gpt2_dir, context_length=8)
    params = nn.unbox(jax.jit(small.init)(jax.random.key(0), np.zeros((1, 1, 8, 8, 3), np.float32),
                                 np.zeros((1, 8), np.int32)))["params"]
    with pytest.raises(ValueError, match=r"parameter pos_embed/embedding has shape \(8, 16\), GPT-2's \(12, 16\)"):
        language.into(params)


def test_the_readme_example_runs_on_a_local_gpt2(gpt2_dir):
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("\n#### A pretrained language model: GPT-2\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'source, context = "hf:gpt2", 64\n' in code
    namespace = {}
    exec(code.replace('source, context = "hf:gpt2", 64', f"source, context = {str(gpt2_dir)!r}, 12"), namespace)
    assert namespace["tokenizer"].backend.token_to_id("<image>") == namespace["config"].media_token_id
    assert namespace["params"]["token_embed"]["embedding"].shape == (namespace["language"].text.vocab_size, 16)
