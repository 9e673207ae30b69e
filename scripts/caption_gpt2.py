"""A small GPT-2 pretrained on the demo's captions, to try `config.init_language` offline (needs the test extras:
torch, transformers).

    .venv/bin/python scripts/caption_gpt2.py --out runs/caption_gpt2          # 2½ minutes on 2 cores
    .venv/bin/mmjax train --config configs/flamingo_tiny.py --workdir runs/flamingo_gpt2 \\
        --config.init_language=runs/caption_gpt2 \\
        "--config.optim.frozen=('^(token_embed|pos_embed|layers_[0-9]+|ln_final|lm_head)/',)"

It trains a byte-level BPE on the synthetic world's training captions and a GPT2LMHeadModel of flamingo-tiny's
language-model shape (width 128, 2 layers, 4 heads, 16 positions) on those captions, each followed by
`<|endoftext|>`, with AdamW; then saves both as a Hugging Face GPT-2 directory (`config.json`, `model.safetensors`,
`tokenizer.json`). The language model knows how captions are written but has never seen an image: a Flamingo on
top of it, frozen, learns only to read the images into it.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import tokenizers
import torch
import transformers

from mmjax.data import synthetic

END_OF_TEXT = "<|endoftext|>"


def train_tokenizer(captions: list[str]) -> tokenizers.Tokenizer:
    """A byte-level BPE (GPT-2's kind) on `captions`, `<|endoftext|>` its only special token."""
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=512, special_tokens=[END_OF_TEXT],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(captions, trainer)
    return backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the GPT-2 directory to write")
    parser.add_argument("--captions", type=int, default=50_000, help="training captions of the synthetic world")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="the synthetic world's seed (the demo's is 0)")
    args = parser.parse_args()

    source = synthetic.SyntheticSource("train", args.seed, args.captions)
    captions = [source[i]["caption"] for i in range(len(source))]
    backend = train_tokenizer(captions)
    end = backend.token_to_id(END_OF_TEXT)
    positions = 16
    ids = np.full((len(captions), positions), end, np.int64)
    lengths = np.zeros(len(captions), np.int64)
    for row, encoding in enumerate(backend.encode_batch(captions)):
        tokens = encoding.ids[:positions - 1] + [end]
        ids[row, :len(tokens)], lengths[row] = tokens, len(tokens)
    print(f"{len(captions)} captions, {backend.get_vocab_size()} BPE tokens, {lengths.mean():.1f} tokens a caption "
          f"(end of text included), longest {lengths.max()}")

    config = transformers.GPT2Config(vocab_size=backend.get_vocab_size(), n_positions=positions, n_embd=128,
                                     n_layer=2, n_head=4, bos_token_id=end, eos_token_id=end)
    torch.manual_seed(args.seed)
    model = transformers.GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
    counted = np.arange(positions)[None] < lengths[:, None]  # each caption's tokens and its end of text
    rng = np.random.default_rng(args.seed)
    model.train()
    for step in range(args.steps):
        rows = rng.integers(len(captions), size=args.batch)
        inputs = torch.from_numpy(ids[rows])
        labels = torch.from_numpy(np.where(counted[rows], ids[rows], -100))
        loss = model(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step}: next-token loss {loss.item():.4f}")
    model.eval()
    model.save_pretrained(args.out)
    backend.save(f"{args.out}/tokenizer.json")
    print(f"wrote {args.out}: a GPT-2 for --config.init_language={args.out}")


if __name__ == "__main__":
    main()
