"""`mmjax eval --model SOURCE --benchmark NAME` for a pretrained checkpoint (any `mmjax.load_pretrained` source:
hf:ORG/NAME, a Hugging Face or OpenCLIP directory, open_clip:MODEL with --weights, a big_vision .npz).

The checkpoint is evaluated as its reference library runs it: its own resize and crop, mean and std
(`Pretrained.preprocess`), its own tokenizer, and the benchmark's class names and prompt templates, with
clip_benchmark's metrics. The results file defaults to `eval_<benchmark>_<source>.json` in the current directory;
its `model` is the source and its `pretrained` the checkpoint's format (`hf_clip`, `hf_siglip`, `open_clip`,
`big_vision`).
"""

from __future__ import annotations

import dataclasses
import os
import re

from absl import flags

# The flags only a pretrained checkpoint reads (as `mmjax convert` spells them).
PRETRAINED_FLAGS = ("weights", "tokenizer", "allow_pickle")


def define_flags() -> None:
    flags.DEFINE_string("weights", None, "Weights file of an open_clip:MODEL --model.")
    flags.DEFINE_string("tokenizer", None, "SentencePiece model of a big_vision .npz --model "
                        "(default: the .model file beside it).")
    flags.DEFINE_bool("allow_pickle", False, "Read pickle-based .bin/.pt weights (with torch.load(weights_only=True)).")
    flags.DEFINE_integer("batch_size", None, "Images (and texts) per jitted batch (default: a workdir's "
                         "config.eval.batch_size; 64 for a pretrained checkpoint).", lower_bound=1)


DEFAULT_BATCH_SIZE = 64


def default_output(source: str, benchmark: str) -> str:
    """`eval_<benchmark>_<source>.json` in the current directory, the source's characters outside
    `[A-Za-z0-9._-]` as `_` (`hf:google/siglip2-base-patch16-224` → `hf_google_siglip2-base-patch16-224`)."""
    from mmjax.eval.report import benchmark_label

    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", os.fspath(source).rstrip("/")).strip("_.")
    return f"eval_{benchmark_label(benchmark)}_{slug}.json"


def evaluate(source: str, benchmark: str, *, output: str | None, dtype: str | None, batch_size: int | None,
             data_dir: str | None, max_examples: int | None, num_workers: int) -> None:
    """Loads `source`, evaluates it on `benchmark`, prints the table and writes the results JSON."""
    import jax

    from mmjax.eval import format_table, results_json, write_results
    from mmjax.eval.benchmarks import check_benchmark, run_benchmark
    from mmjax.inference import Encoder
    from mmjax.models import TwoTower
    from mmjax.pretrained import load_pretrained

    check_benchmark(benchmark, data_dir)  # a benchmark that is not there: said before a download or a load
    pretrained = load_pretrained(source, weights=flags.FLAGS.weights, tokenizer=flags.FLAGS.tokenizer,
                                 allow_pickle=flags.FLAGS.allow_pickle)
    config = pretrained.config
    if dtype is not None:
        config = dataclasses.replace(config, options=dataclasses.replace(config.options, dtype=dtype))
    preprocess = pretrained.preprocess
    encoder = Encoder(TwoTower(config), pretrained.params, pretrained.tokenizer, preprocess.mean, preprocess.std,
                      batch_size=batch_size or DEFAULT_BATCH_SIZE, progress=True)
    task, metrics = run_benchmark(benchmark, encoder.encode_images, encoder.encode_texts,
                                  image_size=config.vision.image_size, preprocess=preprocess, data_dir=data_dir,
                                  batch_size=encoder.batch_size, max_examples=max_examples, num_workers=num_workers,
                                  progress=True)
    kind = "SigLIP" if config.logit_bias_init is not None else "CLIP"
    results = results_json(benchmark, source, metrics, task=task, pretrained=pretrained.format,
                           extra={"processes": jax.process_count()})
    output = output or default_output(source, benchmark)
    write_results(output, results)
    print(f"{source} ({pretrained.format} {kind}): {results['dataset']} ({results['task']})")
    print(format_table(metrics))
    print(f"results: {output}")
