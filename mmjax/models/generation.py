"""Greedy decoding for Flamingo: prompts (an image token, then text) continued token by token.

    ids = greedy_generate(model, params, images, prompts, prompt_lengths, num_tokens=20, eos_id=2)

Each row of `prompts [B, L]` holds its prompt in the first `prompt_lengths[b]` positions (the rest is
padding); `L` is the language model's context length. Step `t` runs the language model over the whole buffer
and appends, after each row's last token, the id of its largest logit there. A causal model's logits at a
position do not depend on the tokens after it, so the padding beyond never matters. The vision tower and the
resampler run once (`Flamingo(…)(images)` → latents). A row stops at `eos_id` (which it keeps) or at the end of
the buffer; positions after a row's end are `pad_id`.

There is no key-value cache: each step recomputes the language model over all `L` positions, `num_tokens`
forward passes of the language model in all (fine for captions and short answers; a cache would make each step
one position).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.flamingo import Flamingo


def greedy_generate(model: Flamingo, params, images, prompts, prompt_lengths, num_tokens: int,
                    eos_id: int | None = None, pad_id: int = 0) -> np.ndarray:
    """`images [B, M, H, W, 3]` (normalised), `prompts [B, L]` int, `prompt_lengths [B]` (each in [1, L]) →
    int32 `[B, L]`: the prompts followed by up to `num_tokens` greedy tokens each."""
    prompts, lengths = np.asarray(prompts, np.int32), np.asarray(prompt_lengths, np.int32)
    context = model.config.text.context_length
    if prompts.ndim != 2 or prompts.shape[1] != context:
        raise ValueError(f"prompts must be [B, {context}] (the context length), got {list(prompts.shape)}")
    if lengths.shape != (len(prompts),) or lengths.min(initial=1) < 1 or lengths.max(initial=1) > context:
        raise ValueError(f"prompt_lengths must be {len(prompts)} lengths in [1, {context}], got {lengths.tolist()}")
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be ≥ 0, got {num_tokens}")
    positions = np.arange(context)
    buffer = np.where(positions[None] < lengths[:, None], prompts, pad_id).astype(np.int32)
    return np.asarray(_decode(model, num_tokens, -1 if eos_id is None else eos_id, params, jnp.asarray(images),
                              buffer, lengths))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _decode(model: Flamingo, num_tokens: int, eos_id: int, params, images, buffer, lengths):
    """`greedy_generate`'s loop, jitted: the latents once, then `num_tokens` steps."""
    latents = model.apply({"params": params}, images)
    rows = jnp.arange(buffer.shape[0])
    context = buffer.shape[1]

    def step(_, carry):
        buffer, lengths, done = carry
        logits = model.apply({"params": params}, None, buffer, latents=latents)
        token = jnp.argmax(logits[rows, lengths - 1], axis=-1).astype(jnp.int32)
        write = ~done & (lengths < context)
        buffer = buffer.at[rows, jnp.minimum(lengths, context - 1)].set(
            jnp.where(write, token, buffer[rows, jnp.minimum(lengths, context - 1)]))
        done = done | (write & (token == eos_id)) | (lengths + write >= context)
        return buffer, lengths + write, done

    buffer, _, _ = jax.lax.fori_loop(0, num_tokens, step, (buffer, lengths, lengths >= context))
    return buffer
