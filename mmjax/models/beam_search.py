"""Beam search for Flamingo: the likeliest continuations of prompts, as captioning benchmarks decode.

    ids = beam_search(model, params, images, prompts, prompt_lengths, num_tokens=20, num_beams=3, eos_id=2)

Every prompt has the same length (a captioner's `<image> <start> prompt words`). Each row keeps `num_beams`
live sequences (beams), scored by the sum of their tokens' log-probabilities. A step extends every beam by
every token, and of the best `2 · num_beams` extensions (at most `num_beams` of them end with `eos_id`), as
Hugging Face's beam search does with `early_stopping="never"`:

- those ending with `eos_id` among the best `num_beams` are finished hypotheses, scored
  `sum / n ** length_penalty` (`n`: the tokens written, `eos_id` included; `length_penalty` 1 by default, 0
  ranks by the sum alone), and the best `num_beams` hypotheses so far are kept;
- the best `num_beams` of the others are the next step's beams.

One beam and no length penalty is greedy decoding.

The search stops after `num_tokens` tokens (or at the end of the context), or once no beam can beat the worst
kept hypothesis (log-probabilities only add negative terms, so a beam's best possible score is its sum divided
by the longest length's penalty). The live beams then count as hypotheses too, and each row returns its best:
int32 `[B, L]`, the prompt, the written tokens, then `pad_id`. (Hugging Face's default, `early_stopping=False`,
divides by the current length's penalty instead, and may stop before a better hypothesis.)

The vision tower and the resampler run once per image, the prompt is cached in one pass (as `generate`), and the
language model runs one position per step over `B · num_beams` rows, each step's key-value cache reordered by
the beams' parents.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.flamingo import Flamingo
from mmjax.models.generation import cached_decoder, check_prompts, prefill_span, prefilled_cache


def beam_search(model: Flamingo, params, images, prompts, prompt_lengths, num_tokens: int, *, num_beams: int,
                eos_id: int, pad_id: int = 0, length_penalty: float = 1.0) -> np.ndarray:
    """`images [B, M, H, W, 3]` (normalised), `prompts [B, L]` int, `prompt_lengths [B]` (all equal, in
    [1, L]) → int32 `[B, L]`: each prompt continued by its best hypothesis of at most `num_tokens` tokens."""
    prompts, lengths = check_prompts(model, prompts, prompt_lengths, num_tokens)
    if isinstance(num_beams, bool) or not isinstance(num_beams, (int, np.integer)) or num_beams < 1:
        raise ValueError(f"num_beams must be a positive int, got {num_beams!r}")
    if not length_penalty >= 0:  # NaN too
        raise ValueError(f"length_penalty must be ≥ 0, got {length_penalty}")
    if len(np.unique(lengths)) > 1:
        raise ValueError(f"beam search needs prompts of one length, got lengths {sorted(set(lengths.tolist()))}")
    context = prompts.shape[1]
    length = int(lengths[0]) if len(lengths) else 1
    steps = min(num_tokens, context - length)  # the last position written is context − 1
    buffer = np.where(np.arange(context)[None] < length, prompts, pad_id).astype(np.int32)
    if steps == 0 or not len(buffer):
        return buffer
    return np.asarray(_search(model, int(num_beams), prefill_span(length - 1, context), steps, params,
                              jnp.asarray(images), buffer, length, eos_id, jnp.float32(length_penalty)))


def _gather_beams(x: jax.Array, index: jax.Array) -> jax.Array:
    """`x [B, K, …]`, `index [B, K']` → `[B, K', …]`: row b's entries `index[b]`."""
    return jnp.take_along_axis(x, index.reshape(*index.shape, *[1] * (x.ndim - 2)), axis=1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _search(model: Flamingo, beams: int, prefill: int, steps: int, params, images, buffer, length, eos_id,
            length_penalty):
    """`beam_search`'s loop, jitted: `steps` ≥ 1 tokens at most after prompts of `length` tokens."""
    batch, context = buffer.shape
    first = length - 1  # the first position whose logits are needed
    at = cached_decoder(model, params)
    latents = model.apply({"params": params}, images)
    cache = prefilled_cache(at, latents, buffer, prefill)
    # every row's beams start from its prompt: its cache, latents and tokens repeated
    cache = jax.tree.map(lambda c: jnp.repeat(c, beams, axis=0), cache)
    latents = jnp.repeat(latents, beams, axis=0)
    alive = jnp.repeat(buffer[:, None], beams, axis=1)  # [B, K, L]
    alive_scores = jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf)[None].repeat(batch, axis=0)  # one live beam
    finished, finished_scores = alive, jnp.full((batch, beams), -jnp.inf)
    longest_penalty = jnp.float32(steps) ** length_penalty

    def step(carry):
        t, alive, alive_scores, finished, finished_scores, cache = carry
        logits, cache = at(t, alive.reshape(batch * beams, context), latents, cache)
        log_probs = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32)).reshape(batch, beams, -1)
        vocab = log_probs.shape[-1]
        scores, index = jax.lax.top_k((alive_scores[..., None] + log_probs).reshape(batch, -1), 2 * beams)
        parents, tokens = index // vocab, index % vocab
        candidates = _gather_beams(alive, parents).at[:, :, t + 1].set(tokens)  # [B, 2K, L]
        ends = tokens == eos_id
        hypotheses = ends & (jnp.arange(2 * beams) < beams)  # an end below the best `beams` is dropped
        written = (t + 1 - first).astype(jnp.float32)

        alive_scores, keep = jax.lax.top_k(jnp.where(ends, -jnp.inf, scores), beams)
        alive = _gather_beams(candidates, keep)
        rows = jnp.arange(batch)[:, None] * beams + _gather_beams(parents, keep)
        cache = jax.tree.map(lambda c: c[rows.reshape(-1)], cache)

        pool_scores = jnp.concatenate([finished_scores, jnp.where(hypotheses, scores / written ** length_penalty,
                                                                  -jnp.inf)], axis=1)
        finished_scores, kept = jax.lax.top_k(pool_scores, beams)
        finished = _gather_beams(jnp.concatenate([finished, candidates], axis=1), kept)
        return t + 1, alive, alive_scores, finished, finished_scores, cache

    def searching(carry):
        t, _, alive_scores, _, finished_scores, _ = carry
        beatable = jnp.any(alive_scores[:, 0] / longest_penalty > finished_scores[:, -1])
        return (t < first + steps) & beatable

    start = (jnp.asarray(first, jnp.int32), alive, alive_scores, finished, finished_scores, cache)
    t, alive, alive_scores, finished, finished_scores, _ = jax.lax.while_loop(searching, step, start)
    live_scores = alive_scores / (t - first).astype(jnp.float32) ** length_penalty
    pool = jnp.concatenate([finished, alive], axis=1)
    best = jnp.argmax(jnp.concatenate([finished_scores, live_scores], axis=1), axis=1)
    return pool[jnp.arange(batch), best]
