"""Peak memory of `jax.value_and_grad` of the public contrastive losses at a large batch, on CPU.

    .venv/bin/python scripts/bench_loss_memory.py                 # clip_loss and sigmoid_loss, B=32768, D=512
    .venv/bin/python scripts/bench_loss_memory.py --naive         # also run the naive losses (8-12 GB each)
    .venv/bin/python scripts/bench_loss_memory.py --batch 4096 --dim 128

Every case runs in a fresh subprocess that makes the L2-normalised `[B, D]` embeddings, compiles
`jax.value_and_grad` of the loss w.r.t. both embeddings and the scalars, runs it once and reports
its own peak resident memory (`getrusage(RUSAGE_SELF).ru_maxrss`). A `baseline` subprocess does the
same with a trivial function in place of the loss; a loss's peak is its subprocess's peak minus the
baseline's. The table also gives XLA's own count from the compiled program's `memory_analysis()`
(temporaries + arguments + outputs). The naive full-matrix losses are only compiled (XLA's count)
unless `--naive` runs them too: they need 8-12 GB at the default size. Prints a table, then one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = ("clip_loss", "sigmoid_loss")
NAIVE_CASES = ("naive_clip", "naive_sigmoid")


def _naive_losses():
    """The plain full-matrix losses (diagonal positives) that the blocked ones replace."""
    import jax
    import jax.numpy as jnp

    def naive_clip(image_emb, text_emb, logit_scale):
        logits = jnp.minimum(jnp.exp(logit_scale), 100.0) * image_emb @ text_emb.T
        diagonal = jnp.diagonal(logits)
        image_to_text = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diagonal)
        text_to_image = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diagonal)
        return (image_to_text + text_to_image) / 2

    def naive_sigmoid(image_emb, text_emb, logit_scale, logit_bias):
        logits = jnp.exp(logit_scale) * image_emb @ text_emb.T + logit_bias
        signs = 2 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1
        return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / logits.shape[0]

    return {"naive_clip": naive_clip, "naive_sigmoid": naive_sigmoid}


def run_case(case: str, batch: int, dim: int, block_size: int | None, execute: bool) -> dict:
    """In this process: build inputs, compile and (when `execute`) run one case; return its measurements."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import mmjax.losses as losses

    rng = np.random.default_rng(0)

    def unit_rows():
        if not execute:
            return jax.ShapeDtypeStruct((batch, dim), jnp.float32)
        rows = rng.standard_normal((batch, dim), dtype=np.float32)
        return jnp.asarray(rows / np.linalg.norm(rows, axis=-1, keepdims=True))

    image_emb, text_emb = unit_rows(), unit_rows()
    logit_scale, logit_bias = jnp.float32(np.log(10.0)), jnp.float32(-10.0)
    if case == "baseline":
        fn, args = (lambda image_emb, text_emb: jnp.sum(image_emb) + jnp.sum(text_emb)), (image_emb, text_emb)
    elif case in NAIVE_CASES:
        fn = _naive_losses()[case]
        args = (image_emb, text_emb, logit_scale) + ((logit_bias,) if case == "naive_sigmoid" else ())
        fn = jax.value_and_grad(fn, argnums=tuple(range(len(args))))
    else:
        loss = getattr(losses, case)
        scalars = (logit_scale,) if case == "clip_loss" else (logit_scale, logit_bias)
        args = (image_emb, text_emb, *scalars)
        fn = jax.value_and_grad(lambda *a: loss(*a, block_size=block_size), argnums=tuple(range(len(args))))
    compiled = jax.jit(fn).lower(*args).compile()
    analysis = compiled.memory_analysis()
    xla_bytes = analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
    result = {"case": case, "xla_bytes": xla_bytes, "xla_temp_bytes": analysis.temp_size_in_bytes}
    if execute:
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        result["seconds"] = time.perf_counter() - start
        result["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def measure(case: str, args: argparse.Namespace, execute: bool = True) -> dict:
    """Run one case in a fresh subprocess; its last stdout line is the JSON result."""
    command = [sys.executable, __file__, "--child", case, "--batch", str(args.batch), "--dim", str(args.dim)]
    if not execute:
        command.append("--compile-only")
    if args.block_size is not None:
        command += ["--block-size", str(args.block_size)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench_loss_memory: case {case} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32768)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=None, help="tile size (default: the losses' default)")
    parser.add_argument("--naive", action="store_true", help="also run the naive losses (8-12 GB each)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("batch", "dim", "block_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.child:
        print(json.dumps(run_case(args.child, args.batch, args.dim, args.block_size, not args.compile_only)))
        return

    baseline = measure("baseline", args)
    rows = []
    for case in CASES + NAIVE_CASES:
        result = measure(case, args, execute=case in CASES or args.naive)
        if "maxrss_bytes" in result:
            result["peak_bytes"] = result["maxrss_bytes"] - baseline["maxrss_bytes"]
        rows.append(result)

    gib = 2**30
    print(f"value_and_grad, B={args.batch}, D={args.dim}, block_size={args.block_size or 'default'}; "
          f"baseline process peak {baseline['maxrss_bytes'] / gib:.2f} GiB")
    print(f"{'loss':<14} {'peak - baseline (GiB)':>22} {'XLA temp+args+out (GiB)':>24} {'XLA temp (GiB)':>15} "
          f"{'run (s)':>8}")
    for row in rows:
        peak = f"{row['peak_bytes'] / gib:.3f}" if "peak_bytes" in row else "not run"
        seconds = f"{row['seconds']:.1f}" if "seconds" in row else "-"
        print(f"{row['case']:<14} {peak:>22} {row['xla_bytes'] / gib:>24.3f} {row['xla_temp_bytes'] / gib:>15.3f} "
              f"{seconds:>8}")
    keys = ("peak_bytes", "xla_bytes", "xla_temp_bytes", "seconds")
    print(json.dumps({"batch": args.batch, "dim": args.dim, "block_size": args.block_size,
                      "baseline_maxrss_bytes": baseline["maxrss_bytes"],
                      "cases": {row["case"]: {k: row[k] for k in keys if k in row} for row in rows}}))


if __name__ == "__main__":
    main()
