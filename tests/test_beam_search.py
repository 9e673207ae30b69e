"""Beam search (`mmjax.models.beam_search`) against the same search written out in Python over the whole model
(no cache, one sequence at a time), one beam against greedy decoding, and one-line errors."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

import mmjax.models as models
from mmjax.models.beam_search import beam_search
from mmjax.models.generation import generate

PAD = 0


@functools.cache
def setup():
    """flamingo-test with its initial parameters, 4 random images, prompts `[<image>, 2]`."""
    model = models.create_model("flamingo-test")
    config = model.config
    rng = np.random.default_rng(0)
    size = config.vision.image_size
    images = rng.normal(size=(4, 1, size, size, 3)).astype(np.float32)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(1), *models.example_inputs(config)))["params"]
    prompts = np.full((4, config.text.context_length), PAD, np.int32)
    prompts[:, :2] = [config.media_token_id, 2]
    return model, params, images, prompts


def naive_beam_search(model, params, image, prompt, num_tokens, beams, eos, length_penalty):
    """One row's search as the module docstring says it, each candidate's log-probabilities from a forward pass
    of the whole model over its tokens."""
    context = model.config.text.context_length
    forward = jax.jit(lambda ids: model.apply({"params": params}, image[None], ids[None])[0])

    def log_probs(sequence):
        ids = np.full(context, PAD, np.int32)
        ids[:len(sequence)] = sequence
        logits = np.asarray(forward(ids)[len(sequence) - 1], np.float64)
        return logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())

    steps = min(num_tokens, context - len(prompt))
    alive, finished = [(0.0, list(prompt))], []
    for written in range(1, steps + 1):
        candidates = sorted(((score + lp, sequence + [token]) for score, sequence in alive
                             for token, lp in enumerate(log_probs(sequence))), key=lambda c: -c[0])[:2 * beams]
        finished += [(score / written ** length_penalty, sequence) for score, sequence in candidates[:beams]
                     if sequence[-1] == eos]
        finished = sorted(finished, key=lambda c: -c[0])[:beams]
        alive = [c for c in candidates if c[1][-1] != eos][:beams]
        if len(finished) == beams and alive[0][0] / steps ** length_penalty <= finished[-1][0]:
            break
    pool = finished + [(score / written ** length_penalty, sequence) for score, sequence in alive]
    best = max(pool, key=lambda c: c[0])[1]
    return best + [PAD] * (context - len(best))


@pytest.mark.parametrize("beams, length_penalty", [(3, 1.0), (3, 0.0), (2, 2.0)])
def test_beam_search_finds_what_the_search_written_out_finds(beams, length_penalty):
    model, params, images, prompts = setup()
    greedy = generate(model, params, images, prompts, [2] * 4, num_tokens=6)
    eos = int(greedy[0, 2])  # row 0's likeliest first token ends a caption: finished hypotheses early on
    got = beam_search(model, params, images, prompts, [2] * 4, num_tokens=5, num_beams=beams, eos_id=eos,
                      length_penalty=length_penalty)
    want = [naive_beam_search(model, params, images[i], prompts[i, :2].tolist(), 5, beams, eos, length_penalty)
            for i in range(4)]
    np.testing.assert_array_equal(got, want)
    if length_penalty == 0:  # by their sums alone, short hypotheses win: some row ends at once
        assert any(row[2] == eos for row in got) and (got[:, 3:] != PAD).any()


@pytest.mark.parametrize("prompt, images_per_row", [([2, 7], 1), ([2, "image", 5], 2)],
                         ids=["words", "two-images"])
def test_longer_prompts_and_several_images_per_row(prompt, images_per_row):
    """A prompt of words after the start of text, and one that places a second image after a word."""
    model, params, images, prompts = setup()
    media = model.config.media_token_id
    prompt = [media] + [media if token == "image" else token for token in prompt]
    images = np.concatenate([images, images[::-1]], axis=1)[:, :images_per_row]
    prompts = prompts.copy()
    prompts[:, :len(prompt)] = prompt
    greedy = generate(model, params, images, prompts, [len(prompt)] * 4, num_tokens=4)
    eos = int(greedy[2, len(prompt)])
    got = beam_search(model, params, images, prompts, [len(prompt)] * 4, num_tokens=4, num_beams=3, eos_id=eos)
    want = [naive_beam_search(model, params, images[i], prompt, 4, 3, eos, 1.0) for i in range(4)]
    np.testing.assert_array_equal(got, want)


def test_one_beam_without_length_penalty_is_greedy_decoding():
    model, params, images, prompts = setup()
    greedy = generate(model, params, images, prompts, [2] * 4, num_tokens=6)
    eos = int(greedy[1, 4])
    want = generate(model, params, images, prompts, [2] * 4, num_tokens=6, eos_id=eos)
    got = beam_search(model, params, images, prompts, [2] * 4, num_tokens=6, num_beams=1, eos_id=eos,
                      length_penalty=0.0)
    np.testing.assert_array_equal(got, want)


def test_bad_arguments_are_one_line_errors():
    model, params, images, prompts = setup()
    search = functools.partial(beam_search, model, params, images, prompts, num_tokens=3, eos_id=3)
    with pytest.raises(ValueError, match=r"beam search needs prompts of one length, got lengths \[2, 3\]"):
        search([2, 2, 3, 2], num_beams=2)
    with pytest.raises(ValueError, match="num_beams must be a positive int, got 0"):
        search([2] * 4, num_beams=0)
    with pytest.raises(ValueError, match="length_penalty must be ≥ 0, got -1"):
        search([2] * 4, num_beams=2, length_penalty=-1.0)
    np.testing.assert_array_equal(beam_search(model, params, images, prompts, [2] * 4, 0, num_beams=2, eos_id=3),
                                  prompts)
