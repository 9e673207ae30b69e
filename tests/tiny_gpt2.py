"""A tiny random transformers GPT-2 for tests (`write_tiny_gpt2`), and its logits computed by torch
(`torch_logits`): the reference a Flamingo with GPT-2's weights is compared with. Needs torch, transformers and
tokenizers (the test extras): import it after `pytest.importorskip` of each."""

import pathlib

import numpy as np
import tokenizers
import torch
import transformers

CORPUS = ["a red square on a blue circle", "two green triangles", "the small yellow star", "a big red circle"] * 20


def write_tiny_gpt2(path: pathlib.Path) -> pathlib.Path:
    """A tiny random GPT2LMHeadModel saved in `path` as on the Hub, with a byte-level BPE trained on `CORPUS`;
    every parameter drawn at random (GPT-2 starts its norms at 1 and its biases at 0), the position table wide
    enough that greedy decoding does not repeat one token."""
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    backend.train_from_iterator(CORPUS, tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet))
    config = transformers.GPT2Config(vocab_size=backend.get_vocab_size(), n_positions=24, n_embd=16, n_layer=2,
                                     n_head=2, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
        model.transformer.wpe.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    backend.save(str(path / "tokenizer.json"))
    return path


def torch_logits(path, embeddings: np.ndarray) -> np.ndarray:
    """GPT-2's logits `[B, L, V]` for input embeddings `[B, L, D]`."""
    model = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    with torch.no_grad():
        return model(inputs_embeds=torch.from_numpy(embeddings)).logits.numpy()
