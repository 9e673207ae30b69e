"""`mmjax eval --model SOURCE --benchmark NAME` for a pretrained checkpoint (any `mmjax.load_pretrained` source:
hf:ORG/NAME, a Hugging Face or OpenCLIP directory, open_clip:MODEL with --weights, a big_vision .npz).

The checkpoint is evaluated as its reference library runs it: its own resize and crop, mean and std
(`Pretrained.preprocess`), its own tokenizer, and the benchmark's class names and prompt templates, with
clip_benchmark's metrics. The results file defaults to `eval_<benchmark>_<source>.json` in the current directory;
its `model` is the source and its `pretrained` the checkpoint's format (`hf_clip`, `hf_siglip`, `open_clip`,
`big_vision`).
"""

from __future__ import annotations

import os
import re


def default_output(source: str, benchmark: str, image_size: int | None = None) -> str:
    """`eval_<benchmark>_<source>.json` in the current directory: a local source by its file or directory name
    (`.` by the current directory's), a name with its characters outside `[A-Za-z0-9._-]` as `_`
    (`hf:google/siglip2-base-patch16-224` → `hf_google_siglip2-base-patch16-224`); `…_<image_size>px.json` for
    an evaluation at another image size."""
    from mmjax.eval.report import benchmark_label

    source = os.fspath(source)
    name = os.path.basename(os.path.abspath(source)) if os.path.exists(source) else source
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.")
    size = f"_{image_size}px" if image_size else ""
    return f"eval_{benchmark_label(benchmark)}_{slug}{size}.json"


def load(source: str, benchmark: str, *, data_dir: str | None, dtype: str | None, batch_size: int | None):
    """`source` as a `checkpoint_source.LoadedModel` (at `--image_size` px when given), after checking `benchmark`
    (a benchmark that is not there is said before a download or a load)."""
    from mmjax.commands.checkpoint_source import load_model
    from mmjax.eval.benchmarks import check_benchmark

    check_benchmark(benchmark, data_dir)
    return load_model(source, dtype=dtype, progress=True, batch_size=batch_size)


def evaluate(model, source: str, benchmark: str, *, output: str | None, data_dir: str | None,
             max_examples: int | None, num_workers: int) -> None:
    """Evaluates `model` (`load`'s) on `benchmark`, prints the table and writes the results JSON (which records
    the image size)."""
    import jax

    from mmjax.eval import format_table, results_json, write_results
    from mmjax.eval.benchmarks import run_benchmark

    encoder, preprocess = model.encoder, model.preprocess
    task, metrics = run_benchmark(benchmark, encoder.encode_images, encoder.encode_texts,
                                  image_size=preprocess.size, preprocess=preprocess, data_dir=data_dir,
                                  batch_size=encoder.batch_size, max_examples=max_examples, num_workers=num_workers,
                                  progress=True)
    kind = "SigLIP" if "logit_bias" in model.params else "CLIP"
    results = results_json(benchmark, source, metrics, task=task, pretrained=model.format,
                           extra={"processes": jax.process_count(), "image_size": preprocess.size})
    output = output or default_output(source, benchmark, model.image_size)
    size = f" at {model.image_size} px" if model.image_size else ""
    print(f"{source} ({model.format} {kind}{size}): {results['dataset']} ({results['task']})")
    print(format_table(metrics), flush=True)  # shown before the file is written: a full disk loses nothing
    write_results(output, results)
    print(f"results: {output}")
