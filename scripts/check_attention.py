"""Checks cuDNN's attention against XLA's on this machine's GPU, through a whole two-tower model.

    .venv/bin/python scripts/check_attention.py                      # on an NVIDIA GPU: xla and cudnn
    .venv/bin/python scripts/check_attention.py --attention xla      # any backend: XLA's bf16 alone

The model (`--model`, default `bench-tiny`) gets 33 text tokens, so both towers have odd lengths
(bench-tiny: 65 image tokens): with
cuDNN each `Transformer` pads its sequence to an even length and masks the padding. For unrolled and scanned
layers, the image and text embeddings and the parameter gradient of a random projection of them, computed
in bfloat16 with each attention, are compared with the same model computed in float32 with XLA's attention
(relative error: the norm of the difference over the norm of the reference). bf16 XLA's error is the yardstick:
the script exits with status 1 when another attention's error is more than `--tolerance` times it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import models
from mmjax.models.layers import ATTENTION_IMPLEMENTATIONS

BATCH, TEXT_LENGTH = 16, 33


def _config(model: str, scan_layers: bool, dtype: str = "float32", attention: str = "xla") -> models.TwoTowerConfig:
    config = models.get_config(model, scan_layers=scan_layers, dtype=dtype, attention=attention)
    return dataclasses.replace(config, text=dataclasses.replace(config.text, context_length=TEXT_LENGTH))


def _inputs(config: models.TwoTowerConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    size, vocab = config.vision.image_size, config.text.vocab_size
    tokens = rng.integers(1, vocab - 1, (BATCH, TEXT_LENGTH)).astype(np.int32)
    tokens[:, TEXT_LENGTH // 2] = vocab - 1  # end of text: pooled here
    return {"image": rng.normal(size=(BATCH, size, size, 3)).astype(np.float32), "text": tokens,
            "image_weights": rng.normal(size=(BATCH, config.embed_dim)).astype(np.float32),
            "text_weights": rng.normal(size=(BATCH, config.embed_dim)).astype(np.float32)}


def embeddings_and_gradient(config: models.TwoTowerConfig, params, inputs) -> tuple[jax.Array, ...]:
    """`(image embeddings, text embeddings, flat parameter gradient)` of `sum(weights · embeddings)`."""
    model = models.TwoTower(config)

    def projection(p):
        image_emb, text_emb, _ = model.apply({"params": p}, image=inputs["image"], text=inputs["text"])
        value = jnp.sum(image_emb * inputs["image_weights"]) + jnp.sum(text_emb * inputs["text_weights"])
        return value, (image_emb, text_emb)

    (_, (image_emb, text_emb)), grads = jax.jit(jax.value_and_grad(projection, has_aux=True))(params)
    return image_emb, text_emb, jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])


def relative_error(got: jax.Array, want: jax.Array) -> float:
    return float(jnp.linalg.norm(got.astype(jnp.float32) - want) / jnp.linalg.norm(want))


def check(model: str, attentions: list[str], tolerance: float) -> list[str]:
    """Prints one line per (layers, attention); returns the failures."""
    failures = []
    for scan_layers in (False, True):
        reference_config = _config(model, scan_layers)
        inputs = _inputs(reference_config)
        params = nn.unbox(models.TwoTower(reference_config).init(jax.random.key(0), image=inputs["image"],
                                                                  text=inputs["text"]))["params"]
        reference = embeddings_and_gradient(reference_config, params, inputs)
        errors = {}
        for attention in ["xla"] + [a for a in attentions if a != "xla"]:
            got = embeddings_and_gradient(_config(model, scan_layers, "bfloat16", attention), params, inputs)
            errors[attention] = [relative_error(g, r) for g, r in zip(got, reference)]
            print(f"{'scanned' if scan_layers else 'unrolled'} layers, bf16 {attention}: relative error "
                  f"image embeddings {errors[attention][0]:.2e}, text embeddings {errors[attention][1]:.2e}, "
                  f"gradient {errors[attention][2]:.2e}", flush=True)
            worst = max(e / x for e, x in zip(errors[attention], errors["xla"]))
            if worst > tolerance:
                failures.append(f"{attention} ({'scanned' if scan_layers else 'unrolled'}): {worst:.1f}× bf16 "
                                f"XLA's error")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bench-tiny", help="registered model (default bench-tiny)")
    parser.add_argument("--attention", nargs="+", choices=ATTENTION_IMPLEMENTATIONS,
                        default=list(ATTENTION_IMPLEMENTATIONS))
    parser.add_argument("--tolerance", type=float, default=2.0,
                        help="largest allowed ratio of an attention's error to bf16 XLA's (default 2)")
    args = parser.parse_args(argv)
    try:
        models.check_two_tower(args.model, "check_attention.py checks")
    except (KeyError, ValueError) as error:
        parser.error(str(error).strip("'\""))
    if "cudnn" in args.attention and jax.default_backend() != "gpu":
        parser.error(f"cudnn needs an NVIDIA GPU; this backend is {jax.default_backend()} (use --attention xla)")
    failures = check(args.model, args.attention, args.tolerance)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
