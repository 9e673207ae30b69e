"""`config.init_language`: a Flamingo trained by `mmjax train` on a pretrained GPT-2 (frozen, as Flamingo's is),
with GPT-2's shape, weights and BPE; its workdir resumes, loads and captions without the source; the one-line
refusals."""

import os
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from mmjax.captioner import Captioner  # noqa: E402
from mmjax.convert.tensors import read_tensors  # noqa: E402
from mmjax.train.config import ConfigError, validate  # noqa: E402
from mmjax.train.language_model import LANGUAGE_FILE  # noqa: E402
from mmjax.train.loop import train  # noqa: E402
from mmjax.train.workdir import load_trained  # noqa: E402
from tiny_gpt2 import torch_logits, write_tiny_gpt2  # noqa: E402

from config_changes import with_changes  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import clip_tiny  # noqa: E402
import flamingo_tiny  # noqa: E402

LANGUAGE_MODEL = "^(token_embed|pos_embed|layers_[0-9]+|ln_final|lm_head)/"


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return write_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def flamingo_config(**changes):
    config = flamingo_tiny.get_config("test")
    config.total_steps, config.checkpoint_every, config.optim.learning_rate = 3, 3, 1e-2
    return with_changes(config, changes)


def test_a_flamingo_trains_on_a_frozen_gpt2_reads_its_bpe_and_resumes_without_it(gpt2_dir, tmp_path):
    source = tmp_path / "gpt2"
    shutil.copytree(gpt2_dir, source)
    run = str(tmp_path / "run")
    train(flamingo_config(init_language=str(source), **{"optim.frozen": (LANGUAGE_MODEL,)}), run)
    trained = load_trained(run)
    hf = read_tensors(os.path.join(gpt2_dir, "model.safetensors"))
    table = hf["transformer.wte.weight"]
    vocab = table.shape[0]
    config = trained.model.config
    assert (config.text.width, config.text.depth, config.text.num_heads, config.text.mlp_dim) == (16, 2, 2, 64)
    assert config.text.vocab_size == vocab + 1 and config.media_token_id == vocab
    assert config.language_activation == "gelu_tanh" and config.vision.width == 32  # flamingo-test's vision tower

    # with its gates shut, the trained Flamingo is GPT-2 (torch): its language model is GPT-2's, frozen 3 steps
    params = {name: ({gate: np.zeros_like(value) if gate.endswith("_gate") else value
                      for gate, value in subtree.items()} if name.startswith("gated_xattn_") else subtree)
              for name, subtree in trained.params.items()}
    ids = np.random.default_rng(0).integers(0, vocab, (2, 8)).astype(np.int32)
    images = np.random.default_rng(1).normal(size=(2, 1, 16, 16, 3)).astype(np.float32)
    got = np.asarray(trained.model.apply({"params": params}, images, ids))
    np.testing.assert_allclose(got[..., :vocab], torch_logits(gpt2_dir, table[ids]), atol=1e-5, rtol=1e-5)
    gates = [np.asarray(trained.params[f"gated_xattn_{i}"]["attn_gate"]) for i in range(2)]
    assert all(abs(gate - 0.5) > 1e-4 for gate in gates)  # the gates trained (from flamingo-test's 0.5)

    # the captions were GPT-2's BPE, then its end of text as padding; the tokenizer never emits the image token
    backend = tokenizers.Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    end = backend.token_to_id("<|endoftext|>")
    words = backend.encode("a red square").ids
    assert trained.tokenizer(["a red square"])[0].tolist() == words + [end] * (8 - len(words))
    assert trained.tokenizer.vocab_size == vocab and trained.tokenizer.eot_id == end

    # a resumed run, evaluation and captions read the workdir's record, never the source
    shutil.rmtree(source)
    resumed = train(flamingo_config(total_steps=4, checkpoint_every=4, **{"optim.frozen": (LANGUAGE_MODEL,)}), run)
    assert int(resumed.step) == 4 and resumed.params["token_embed"]["embedding"].shape == (vocab + 1, 16)
    trained = load_trained(run)
    pixels = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    captions = Captioner(trained.model, trained.params, trained.tokenizer, (0.5,) * 3, (0.5,) * 3).caption(
        pixels, "a red")
    assert all(caption.startswith("a red") for caption in captions)

    # a run without a checkpoint is replaced: a new one without a language model drops the record
    shutil.rmtree(os.path.join(run, "checkpoints"))
    train(flamingo_config(), run)
    assert not os.path.exists(os.path.join(run, LANGUAGE_FILE))
    assert load_trained(run).model.config.text.width == 32  # flamingo-test's own language model


def test_a_language_model_that_cannot_start_is_one_line_before_anything_compiles(gpt2_dir, tmp_path):
    with pytest.raises(ConfigError, match=f"config.init_language='{tmp_path / 'none'}': there is no such "
                                          f"checkpoint file or directory"):
        train(flamingo_config(init_language=str(tmp_path / "none")), str(tmp_path / "a"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"config.init_language='{tmp_path / 'empty'}': {tmp_path / 'empty'} has "
                                          f"no config.json"):
        train(flamingo_config(init_language=str(tmp_path / "empty")), str(tmp_path / "b"))
    with pytest.raises(ConfigError, match=r"context_length 32 must lie in \[1, 24\] \(its n_positions\)"):
        train(flamingo_config(init_language=str(gpt2_dir), **{"model": "flamingo-tiny-bpe"}), str(tmp_path / "c"))
    assert not any((tmp_path / name).exists() for name in "abc")  # nothing written for a refused run


@pytest.mark.parametrize("make, changes, message", [
    (clip_tiny.get_config, {"init_language": "hf:gpt2"},
     r"config.init_language='hf:gpt2' starts the language model of a registered Flamingo model \(flamingo-tiny, "
     r"…\), not of 'clip-test'"),
    (flamingo_tiny.get_config, {"init_language": "hf:gpt2", "data.tokenizer": "clip-bpe"},
     r"config.init_language='hf:gpt2' reads captions with its own tokenizer: leave config.data.tokenizer at '' "
     r"\(not 'clip-bpe'\)"),
])
def test_the_language_options_are_checked_in_one_line(make, changes, message):
    with pytest.raises(ConfigError, match=message):
        validate(with_changes(make("test"), changes))
