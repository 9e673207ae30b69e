"""Decoding for Flamingo: prompts (an image token, then text) continued token by token, greedy or sampled.

    ids = generate(model, params, images, prompts, prompt_lengths, num_tokens=20, eos_id=2)
    ids = generate(..., temperature=0.8, top_k=40, seed=1)          # sampled

Each row of `prompts [B, L]` holds its prompt in the first `prompt_lengths[b]` positions (the rest is
padding); `L` is the language model's context length. The vision tower and the resampler run once
(`Flamingo(…)(images)` → latents). The language model then runs with a key-value cache (`Flamingo(…,
decode_index=t)`): step `t` feeds every row's token at position `t` (its prompt's while the prompt
lasts, then its own last choice) and, for rows past their prompt, chooses the token at `t + 1` from the logits
there: the largest (`temperature=0`), or a draw from `softmax(logits / temperature)` restricted to the `top_k`
largest (`top_k=0`: all). A row stops at `eos_id` (which it keeps), after `num_tokens` new tokens, or at the end
of the buffer; positions after a row's end are `pad_id`.

The positions before `p = min(prompt_lengths) − 1` hold every row's prompt and need no logits: one pass of
`decode_span` = the next power of two ≥ p fills the cache there (at most ⌈log2 L⌉ + 2 compiled programs per
model and batch shape), and the single-position steps start at `p`. A span running past `p` caches stale
entries there, which each step overwrites before any position attends to them. A batch costs one prefill pass
and at most `max(prompt_lengths) − p + num_tokens` steps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.flamingo import Flamingo


def generate(model: Flamingo, params, images, prompts, prompt_lengths, num_tokens: int, eos_id: int | None = None,
             pad_id: int = 0, temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> np.ndarray:
    """`images [B, M, H, W, 3]` (normalised), `prompts [B, L]` int, `prompt_lengths [B]` (each in [1, L]) →
    int32 `[B, L]`: the prompts followed by up to `num_tokens` generated tokens each. `temperature` 0 is greedy;
    `seed` picks the draws of a sampled decoding (each row draws independently)."""
    prompts, lengths = check_prompts(model, prompts, prompt_lengths, num_tokens)
    context, vocab = model.config.text.context_length, model.config.text.vocab_size
    if not temperature >= 0 or not 0 <= top_k <= vocab:  # NaN too
        raise ValueError(f"temperature must be ≥ 0 and top_k in [0, {vocab}], got {temperature} and {top_k}")
    positions = np.arange(context)
    buffer = np.where(positions[None] < lengths[:, None], prompts, pad_id).astype(np.int32)
    first = int(lengths.min()) - 1  # the first position whose logits any row needs
    return np.asarray(_decode(model, temperature == 0, int(top_k), prefill_span(first, context), params,
                              jnp.asarray(images), buffer, lengths, first, num_tokens, -1 if eos_id is None else eos_id,
                              jnp.float32(temperature or 1.0), jax.random.key(seed)))


def check_prompts(model: Flamingo, prompts, prompt_lengths, num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """`(prompts, prompt_lengths)` as int32 NumPy arrays; a one-line ValueError unless `prompts` is `[B, L]`
    (`L` the context length), each length lies in `[1, L]` and `num_tokens ≥ 0`."""
    prompts, lengths = np.asarray(prompts, np.int32), np.asarray(prompt_lengths, np.int32)
    context = model.config.text.context_length
    if prompts.ndim != 2 or prompts.shape[1] != context:
        raise ValueError(f"prompts must be [B, {context}] (the context length), got {list(prompts.shape)}")
    if lengths.shape != (len(prompts),) or lengths.min(initial=1) < 1 or lengths.max(initial=1) > context:
        raise ValueError(f"prompt_lengths must be {len(prompts)} lengths in [1, {context}], got {lengths.tolist()}")
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be ≥ 0, got {num_tokens}")
    return prompts, lengths


def prefill_span(first: int, context: int) -> int:
    """The positions cached in one pass before position `first`: the next power of two ≥ `first` (0: none)."""
    return 0 if first == 0 else min(1 << (first - 1).bit_length(), context)


def cached_decoder(model: Flamingo, params):
    """`at(t, tokens, latents, cache, span=1)` → `(logits [B, span, V], cache)`: the language model's logits at
    positions `t … t + span − 1` of `tokens [B, L]` against `latents`, from and into the key-value `cache`."""
    def at(t, tokens, latents, cache, span=1):
        logits, updated = model.apply({"params": params, "cache": cache}, None, tokens, latents=latents,
                                      decode_index=t, decode_span=span, mutable=["cache"])
        return logits, updated["cache"]
    return at


def prefilled_cache(at, latents, buffer, prefill: int):
    """The key-value cache of `buffer [B, L]`'s positions `[0, prefill)`, filled in one pass of `at`
    (`cached_decoder`); zeros elsewhere. The pass's logits are not used: XLA leaves them out."""
    shapes = jax.eval_shape(lambda b: at(0, b, latents, {})[1], buffer)
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return at(0, buffer, latents, cache, prefill)[1] if prefill else cache


def _choose(greedy: bool, top_k: int, logits: jax.Array, temperature: jax.Array, key: jax.Array) -> jax.Array:
    """`logits [B, V]` → int32 `[B]`: the largest, or one draw per row from the softmax of `logits /
    temperature` over exactly the `top_k` largest (ties at the k-th broken towards lower ids, as `lax.top_k`)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
        kept = jax.lax.top_k(logits, top_k)[1]
        rows = jnp.arange(logits.shape[0])[:, None]
        logits = jnp.full_like(logits, -jnp.inf).at[rows, kept].set(logits[rows, kept])
    return jax.random.categorical(key, logits).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _decode(model: Flamingo, greedy: bool, top_k: int, prefill: int, params, images, buffer, lengths, first,
            num_tokens, eos_id, temperature, key):
    """`generate`'s loop, jitted: the latents once, the cache of positions `[0, prefill)` in one pass, then one
    cached position per step from `first` on until every row is done."""
    latents = model.apply({"params": params}, images)
    context = buffer.shape[1]
    at = cached_decoder(model, params)
    cache = prefilled_cache(at, latents, buffer, prefill)

    def step(carry):
        t, buffer, cache, done = carry
        logits, cache = at(t, buffer, latents, cache)
        token = _choose(greedy, top_k, logits[:, 0], temperature, jax.random.fold_in(key, t))
        write = ~done & (t >= lengths - 1) & (t + 1 < lengths + num_tokens)  # past the prompt, within budget
        buffer = buffer.at[:, t + 1].set(jnp.where(write, token, buffer[:, t + 1]))
        return t + 1, buffer, cache, done | (write & (token == eos_id))

    def unfinished(carry):  # the last position is never fed: nothing follows it
        t, _, _, done = carry
        return (t < context - 1) & ~jnp.all(done | (t + 1 >= lengths + num_tokens))

    start = (jnp.asarray(first, jnp.int32), buffer, cache, jnp.zeros(buffer.shape[0], bool))
    return jax.lax.while_loop(unfinished, step, start)[1]
