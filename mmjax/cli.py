"""`mmjax` command line: `mmjax COMMAND [flags]`; `mmjax COMMAND --help` lists a command's flags.

    mmjax train --config configs/clip_tiny.py --workdir runs/demo [--config.batch_size=128 …]
    mmjax eval  --model runs/demo [--output runs/demo/eval.json] [--figure runs/demo/demo.png]
    mmjax eval  --model runs/demo --benchmark cifar10 [--data_dir DIR] | --benchmark wds:DIR
    mmjax eval  --model hf:google/siglip2-base-patch16-224 --benchmark cifar10   (any pretrained checkpoint)
    mmjax models
    mmjax embed    --model runs/demo (--images DIR | --texts FILE) --out index.safetensors
    mmjax search   --index index.safetensors (--text "a red circle" | --image q.png) -k 10 [--sheet hits.png]
    mmjax classify --model runs/demo --labels "a red circle,a blue square" IMAGE...
    mmjax caption  --model runs/flamingo [--prompt "a red"] [--temperature 0.7 --top_k 20 | --num_beams 3] IMAGE...
    (--model of eval, embed, search, classify and data filter: a workdir or a pretrained checkpoint)
    mmjax data     convert SOURCE --out DIR | filter DIR --model WORKDIR --out DIR2 … | info DIR
    mmjax convert  SOURCE --to hf|open_clip|big_vision --out DIR
    mmjax bench    train-step | data | input [flags]
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging as py_logging
import os
import re
import sys
import traceback
from collections.abc import Iterator

from absl import app, flags, logging

from mmjax import interrupts

USAGE = __doc__


def _define_train_flags() -> None:
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the tokenizer.")
    flags.mark_flags_as_required(["config", "workdir"])


def _train(_argv) -> None:
    import ml_collections
    from ml_collections import config_flags

    from mmjax.train.loop import train
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
    if not os.path.isfile(path):  # config_flags would defer this to a traceback at first use
        raise FileNotFoundError(f"config file {path} does not exist")
    if not isinstance(flags.FLAGS.config, ml_collections.ConfigDict):
        raise ValueError(f"{path}: get_config() returned a {type(flags.FLAGS.config).__name__}, not an "
                         f"ml_collections.ConfigDict")
    train(flags.FLAGS.config, flags.FLAGS.workdir)


def _define_eval_flags() -> None:
    from mmjax.commands import checkpoint_source

    flags.DEFINE_string("model", None, "A training workdir, or a pretrained checkpoint: hf:ORG/NAME, a Hugging Face "
                        "or OpenCLIP directory, open_clip:MODEL (with --weights), a big_vision .npz.")
    flags.DEFINE_string("benchmark", None, "A TFDS benchmark (cifar10, imagenet2012, coco_captions, …), wds:DIR, "
                        "or synthetic (a workdir's default): the synthetic benchmark of the run's data. A Flamingo "
                        "run's captions are scored (BLEU, CIDEr-D) on coco_captions or a wds:DIR of captioned images.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
    flags.DEFINE_integer("max_examples", None, "Evaluate only the first N images of a benchmark.", lower_bound=0)
    flags.DEFINE_integer("num_workers", 0, "grain worker processes decoding benchmark images (0: in this process).",
                         lower_bound=0)
    flags.DEFINE_string("output", None, "Results JSON (default for a workdir: MODEL/eval.json, "
                        "MODEL/eval_BENCHMARK.json or MODEL/eval_wds_DIRNAME.json; for a pretrained checkpoint: "
                        "eval_BENCHMARK_SOURCE.json here).")
    flags.DEFINE_string("figure", None, "Synthetic benchmark only: also write a PNG with the loss curve and "
                        "text→image retrievals.")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the one the run trained with, "
                      "float32 for a pretrained checkpoint).")
    _define_beam_flags()
    checkpoint_source.define_flags()
    flags.mark_flags_as_required(["model"])


def _define_beam_flags() -> None:
    flags.DEFINE_integer("num_beams", 1, "A Flamingo's captions: the best of a beam search over this many beams (1: "
                         "greedy decoding; captioning papers report 3 to 5).", lower_bound=1)
    flags.DEFINE_float("length_penalty", 1.0, "With --num_beams: a finished caption's log-probability is divided by "
                       "its length to this power (0: the likeliest whatever its length).", lower_bound=0.0)


def _decoding() -> dict:
    """The beam flags, as keyword arguments of `Captioner.caption`; a one-line ValueError for a length penalty
    without beams, or beams with a sampling temperature (`mmjax caption`'s)."""
    if flags.FLAGS.num_beams == 1 and flags.FLAGS.length_penalty != 1.0:
        raise ValueError(f"--length_penalty={flags.FLAGS.length_penalty} scores the captions of a beam search: add "
                         f"--num_beams (3, say)")
    temperature = flags.FLAGS["temperature"].value if "temperature" in flags.FLAGS else 0.0
    if flags.FLAGS.num_beams != 1 and temperature:
        raise ValueError(f"--num_beams={flags.FLAGS.num_beams} chooses the likeliest captions, "
                         f"--temperature={temperature} samples them: give one of the two")
    return {"num_beams": flags.FLAGS.num_beams, "length_penalty": flags.FLAGS.length_penalty}


def _refuse_beam_flags(model: str) -> None:
    """A one-line ValueError when `--num_beams` / `--length_penalty` are given for a model that writes no captions."""
    given = [f"--{name}" for name, default in (("num_beams", 1), ("length_penalty", 1.0))
             if flags.FLAGS[name].value != default]
    if given:
        raise ValueError(f"{' and '.join(given)}: for a Flamingo's captions; {model} is a model with embeddings")


@contextlib.contextmanager
def _checked_in_every_process() -> Iterator[None]:
    """Joins the multi-process job the environment or the cluster asks for (`MMJAX_*` / `JAX_*` variables, a
    TPU slice, SLURM: `mmjax.train.multihost`), then runs the block's checks (arguments, the checkpoint) in
    every process: when one process's fail, every process stops with one line, rather than the others waiting
    for it in the checkpoint restore or the first gather."""
    import jax

    from mmjax.parallel.distributed import raise_if_any_failed
    from mmjax.train.multihost import default_settings, initialize_distributed

    initialize_distributed(default_settings())
    error = None
    try:
        yield
    except Exception as caught:  # reported by every process alike, below
        error = caught
    raise_if_any_failed(error, jax.process_count())


def _same_step_in_every_process(step: int, workdir: str) -> int:
    """`step`, the checkpoint every process restores; a one-line ValueError in every process when their copies
    of `workdir` (each host reads its own) hold other latest checkpoints: the metrics would mix two models."""
    import jax
    import numpy as np

    from mmjax.parallel.distributed import allgather_rows

    steps = [int(rows[0]) for rows in allgather_rows(np.asarray([step], np.int32), jax.process_count())]
    if len(set(steps)) > 1:
        seen = ", ".join(f"process {process} step {seen_step}" for process, seen_step in enumerate(steps))
        raise ValueError(f"the processes see other latest checkpoints of {workdir} ({seen}): every host must see "
                         f"the same workdir")
    return step


def _eval(_argv) -> None:
    from mmjax.pretrained import is_pretrained_source

    if is_pretrained_source(flags.FLAGS.model):
        from mmjax.commands import eval_pretrained

        with _checked_in_every_process():  # a host that cannot load the checkpoint stops every host
            _refuse_beam_flags(flags.FLAGS.model)
            benchmark = _check_benchmark_arguments(workdir=None)
            model = eval_pretrained.load(flags.FLAGS.model, benchmark, data_dir=flags.FLAGS.data_dir,
                                         dtype=flags.FLAGS.dtype, batch_size=flags.FLAGS.batch_size)
        eval_pretrained.evaluate(model, flags.FLAGS.model, benchmark, output=flags.FLAGS.output,
                                 data_dir=flags.FLAGS.data_dir, max_examples=flags.FLAGS.max_examples,
                                 num_workers=flags.FLAGS.num_workers)
        return
    with _checked_in_every_process():
        workdir, benchmark, step = _check_eval_arguments()
    _evaluate(workdir, benchmark, _same_step_in_every_process(step, workdir))


def _check_eval_arguments() -> tuple[str, str | None, int]:
    """`(workdir, benchmark, checkpoint step)` of `mmjax eval` on a training workdir, after every check that needs
    no model (benchmark None: the synthetic one)."""
    from mmjax.commands.checkpoint_source import refuse_pretrained_flags
    from mmjax.eval.captioning import check_captioning_benchmark
    from mmjax.train.workdir import check_trained, is_captioner_run

    workdir = flags.FLAGS.model
    refuse_pretrained_flags(workdir)
    benchmark, step = _check_benchmark_arguments(workdir), check_trained(workdir)
    if is_captioner_run(workdir):
        if flags.FLAGS.figure:
            raise ValueError(f"{workdir} holds a Flamingo run, a captioner: --figure draws the retrievals of a model "
                             f"with embeddings")
        if benchmark is not None:
            check_captioning_benchmark(benchmark, flags.FLAGS.data_dir)
        _decoding()  # checked before the model loads
    else:
        _refuse_beam_flags(workdir)
    return workdir, benchmark, step


def _check_benchmark_arguments(workdir: str | None) -> str | None:
    """The benchmark of `mmjax eval` (None: the synthetic one, which only a training `workdir` has) after the
    checks of the flags that go with it and of the files it will write."""
    from mmjax.train.workdir import run_file

    benchmark = flags.FLAGS.benchmark
    if benchmark == "synthetic":  # the name config.eval.benchmarks uses for it
        benchmark = None
    if benchmark is None and workdir is None:
        raise ValueError(f"a pretrained checkpoint ({flags.FLAGS.model}) needs --benchmark (a TFDS benchmark or "
                         f"wds:DIR); the synthetic benchmark belongs to a training run")
    if benchmark is None and flags.FLAGS.max_examples is not None:
        raise ValueError("--max_examples applies to --benchmark; the synthetic benchmark's size is the run's "
                         "config.eval.num_heldout and num_retrieval")
    if benchmark is not None and flags.FLAGS.figure:
        raise ValueError("--figure draws the synthetic benchmark; drop it or --benchmark")
    ignored = [name for name in ("num_workers", "data_dir") if flags.FLAGS[name].present and (
        benchmark is None or (name == "data_dir" and benchmark.startswith("wds:")))]
    if ignored:
        raise ValueError(f"--{ignored[0]} applies to a TFDS benchmark{'' if ignored[0] == 'data_dir' else ' or wds:DIR'}"
                         f", not to {benchmark or 'the synthetic benchmark'}")
    for flag, path, kind in (("output", flags.FLAGS.output, "results file (.json)"),
                             ("figure", flags.FLAGS.figure, "figure (.png)")):
        if path:  # checked before the evaluation runs, not when its results are written
            if os.path.isdir(path):
                raise ValueError(f"--{flag} {path} is a directory; name the {kind}")
            if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise FileNotFoundError(f"--{flag} directory {os.path.dirname(os.path.abspath(path))} does not exist")
            own = None if workdir is None else run_file(workdir, path)
            if own is not None:
                raise ValueError(f"--{flag} {path} would overwrite the run's own {own}; name another {kind}")
    return benchmark


def _evaluate(workdir: str, benchmark: str | None, step: int) -> None:
    import jax

    from mmjax.commands.checkpoint_source import load_workdir
    from mmjax.eval import evaluate_synthetic, format_table, results_file_name, results_json, write_results
    from mmjax.eval.benchmarks import run_benchmark
    from mmjax.train.workdir import is_captioner_run

    if is_captioner_run(workdir):
        _evaluate_captioner(workdir, benchmark, step)
        return
    encoder, trained = load_workdir(workdir, dtype=flags.FLAGS.dtype, progress=benchmark is not None, step=step,
                                    batch_size=flags.FLAGS.batch_size)
    config, image_size = trained.config, trained.model.config.vision.image_size
    extra = {"step": trained.step, "processes": jax.process_count()}
    if benchmark is None:
        metrics = evaluate_synthetic(encoder.encode_images, encoder.encode_texts, seed=config.data.seed,
                                     image_size=image_size, num_heldout=config.eval.num_heldout,
                                     num_retrieval=config.eval.num_retrieval, batch_size=config.eval.batch_size)
        results = results_json("synthetic-shapes", config.model, metrics, extra=extra,
                               pretrained=workdir)
    else:
        task, metrics = run_benchmark(benchmark, encoder.encode_images, encoder.encode_texts, image_size=image_size,
                                      data_dir=flags.FLAGS.data_dir, batch_size=encoder.batch_size,
                                      max_examples=flags.FLAGS.max_examples, num_workers=flags.FLAGS.num_workers,
                                      preprocess=trained.preprocess, progress=True)
        results = results_json(benchmark, config.model, metrics, extra=extra, task=task,
                               pretrained=workdir)
    output = flags.FLAGS.output or os.path.join(workdir, results_file_name(benchmark))
    print(f"{config.model} trained {trained.step} steps in {workdir}: {results['dataset']} ({results['task']})")
    print(format_table(metrics), flush=True)  # shown before the file is written: a full disk loses nothing
    write_results(output, results)
    print(f"results: {output}")
    if flags.FLAGS.figure:
        _write_demo_figure(flags.FLAGS.figure, workdir, encoder, config, image_size)


def _evaluate_captioner(workdir: str, benchmark: str | None, step: int) -> None:
    """`mmjax eval` of a Flamingo run: its greedy captions of the synthetic retrieval images, read for the
    attributes they name (`mmjax.eval.synthetic_captions`), or of an image–text benchmark's images, scored
    against its reference captions (`mmjax.eval.captioning`)."""
    import jax

    from mmjax.captioner import Captioner
    from mmjax.eval import format_table, results_file_name, write_results
    from mmjax.eval.captioning import caption_benchmark
    from mmjax.eval.report import results_json
    from mmjax.eval.synthetic_captions import CAPTIONING_TASK, evaluate_synthetic_captions
    from mmjax.train.workdir import load_trained

    trained = load_trained(workdir, dtype=flags.FLAGS.dtype, step=step)
    config, image_size = trained.config, trained.model.config.vision.image_size
    batch_size = flags.FLAGS.batch_size or config.eval.batch_size
    captioner = Captioner(trained.model, trained.params, trained.tokenizer, config.data.image_mean,
                          config.data.image_std, batch_size=batch_size)
    extra = {"step": trained.step, "processes": jax.process_count(), **_decoding()}
    caption = functools.partial(captioner.caption, **_decoding())
    if benchmark is None:
        dataset = "synthetic-shapes"
        metrics = evaluate_synthetic_captions(caption, seed=config.data.seed, image_size=image_size,
                                              num_images=config.eval.num_retrieval)
        default_output = "synthetic_captions.json"
    else:
        dataset = benchmark
        metrics, captions = caption_benchmark(benchmark, caption, image_size=image_size,
                                              data_dir=flags.FLAGS.data_dir, batch_size=batch_size,
                                              max_examples=flags.FLAGS.max_examples,
                                              num_workers=flags.FLAGS.num_workers, progress=True)
        extra["captions"] = captions
        default_output = results_file_name(benchmark)
    output = flags.FLAGS.output or os.path.join(workdir, default_output)
    print(f"{config.model} trained {trained.step} steps in {workdir}: {dataset} ({CAPTIONING_TASK})")
    print(format_table(metrics), flush=True)  # shown before the file is written: a full disk loses nothing
    write_results(output, results_json(dataset, config.model, metrics, task=CAPTIONING_TASK, pretrained=workdir,
                                       extra=extra))
    print(f"results: {output}")


def _write_demo_figure(path: str, workdir: str, encoder, config, image_size: int) -> None:
    from mmjax.eval import text_to_image_examples, write_demo_figure

    examples = text_to_image_examples(encoder.encode_images, encoder.encode_texts, seed=config.data.seed,
                                      image_size=image_size, num_images=config.eval.num_retrieval)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    write_demo_figure(path, records, examples)
    print(f"figure:  {path}")


def _define_no_flags() -> None:
    pass


def _models(_argv) -> None:
    from mmjax.models import list_models, param_count
    for name in list_models():
        print(f"{name:24s} {param_count(name):>14,d} parameters")


def _define_embed_flags() -> None:
    from mmjax.commands import checkpoint_source

    flags.DEFINE_string("model", None, "A training workdir, or a pretrained checkpoint (as mmjax eval takes).")
    flags.DEFINE_string("images", None, "Embed the image files under this directory (recursive); ids: relative paths.")
    flags.DEFINE_string("texts", None, "Embed the non-empty lines of this UTF-8 file; ids: the texts themselves.")
    flags.DEFINE_string("out", None, "Index file to write: .safetensors or .npz.")
    checkpoint_source.define_flags()
    flags.mark_flags_as_required(["model", "out"])


def _embed(argv) -> None:
    from mmjax.commands.checkpoint_source import load_model
    from mmjax.eval.images import image_ids, list_images
    from mmjax.eval.search import Index, check_ids_fit, embed_image_files, index_format, save_index
    from mmjax.eval.text_files import read_text_lines
    from mmjax.pretrained import is_pretrained_source
    from mmjax.train.workdir import check_trained

    images, texts, out = flags.FLAGS.images, flags.FLAGS.texts, flags.FLAGS.out
    with _checked_in_every_process():
        if len(argv) == 2 and not (images or texts):  # `mmjax embed --model M IMAGE_DIR|TEXT_FILE --out F`
            images, texts = (argv[1], None) if os.path.isdir(argv[1]) else (None, argv[1])
        elif len(argv) > 1 or bool(images) == bool(texts):
            raise ValueError("give one of --images DIR or --texts FILE (or one IMAGE_DIR | TEXT_FILE argument)")
        index_format(out)
        if os.path.isdir(out):
            raise ValueError(f"--out {out} is a directory; name the index file (.safetensors or .npz)")
        paths = list_images(images) if images else None
        ids = image_ids(paths, images) if images else read_text_lines(texts)
        check_ids_fit(out, ids)  # before the model loads and embeds
        step = None if is_pretrained_source(flags.FLAGS.model) else check_trained(flags.FLAGS.model)
    if step is not None:
        step = _same_step_in_every_process(step, flags.FLAGS.model)
    model = load_model(flags.FLAGS.model, step=step, batch_size=flags.FLAGS.batch_size)
    if images:
        embeddings, ids = embed_image_files(model.encoder.encode_images, paths, model.preprocess, root=images)
        index = Index(embeddings, ids, "image", model.name, os.path.abspath(images), model.step)
    else:
        index = Index(model.encoder.encode_texts(ids), ids, "text", model.name, model_step=model.step)
    index.model_weights, index.model_tokenizer = model.files.get("weights", ""), model.files.get("tokenizer", "")
    index.model_image_size = "" if model.format == "mmjax" else str(model.preprocess.size)
    save_index(out, index)
    print(f"{len(index)} {index.modality} embeddings ({index.dim}-d) -> {out}")


def _define_search_flags() -> None:
    from mmjax.commands import checkpoint_source

    flags.DEFINE_string("model", None, "A training workdir or a pretrained checkpoint (default: the model that built "
                        "the index).")
    flags.DEFINE_string("index", None, "Index file written by `mmjax embed`.")
    flags.DEFINE_string("text", None, "Query text.")
    flags.DEFINE_string("image", None, "Query image file.")
    flags.DEFINE_integer("k", 10, "Number of hits.", lower_bound=1)
    flags.DEFINE_string("sheet", None, "Also write a contact-sheet PNG of the hits (image index).")
    checkpoint_source.define_flags()
    flags.mark_flags_as_required(["index"])


def _search(_argv) -> None:
    from mmjax.commands.checkpoint_source import load_model, model_name
    from mmjax.eval.contact_sheet import write_search_sheet
    from mmjax.eval.images import load_images
    from mmjax.eval.search import format_hits, load_index, search

    text, image = flags.FLAGS.text, flags.FLAGS.image
    if (text is None) == (image is None):
        raise ValueError("give one of --text or --image")
    index = load_index(flags.FLAGS.index)
    if flags.FLAGS.sheet and index.modality != "image":
        raise ValueError("--sheet needs an image index (the hits are texts)")
    source = flags.FLAGS.model or index.model
    if not source:
        raise ValueError(f"the index {flags.FLAGS.index} records no model; give --model WORKDIR|CHECKPOINT")
    recorded, recorded_size = {}, None
    if index.model and model_name(source) != index.model:
        print(f"mmjax: warning: the index was embedded by {index.model}, not {source}", file=sys.stderr)
    elif index.model:  # its own model: with the files and size it was loaded with, unless the flags name others
        recorded = {name: path for name, path in (("weights", index.model_weights),
                                                  ("tokenizer", index.model_tokenizer)) if path}
        for name, path in recorded.items():
            given = flags.FLAGS[name].value
            if given and os.path.abspath(given) != path:
                print(f"mmjax: warning: the index was embedded with --{name} {path}, not {given}", file=sys.stderr)
        recorded_size = int(index.model_image_size) if index.model_image_size.isdigit() else None
    model = load_model(source, batch_size=flags.FLAGS.batch_size, files=recorded, image_size=recorded_size)
    if recorded_size is not None and model.preprocess.size != recorded_size:  # --image_size said another
        print(f"mmjax: warning: the index was embedded at {recorded_size} px, not {model.preprocess.size} px",
              file=sys.stderr)
    if index.model == model.name and index.model_step not in ("", model.step):
        print(f"mmjax: warning: the index was embedded by {index.model} at step {index.model_step}, which has trained "
              f"on to step {model.step}: the query and the index are embedded by different weights; embed the "
              f"index again", file=sys.stderr)
    if text is not None:
        query = model.encoder.encode_texts([text])
    else:
        query = model.encoder.encode_images(load_images([image], model.preprocess)[0])
    indices, scores = search(index, query, flags.FLAGS.k)
    print("\n".join(format_hits(indices[0], scores[0], index.ids)))
    if flags.FLAGS.sheet:
        write_search_sheet(flags.FLAGS.sheet, index, text if text is not None else image, text is not None,
                           indices[0], scores[0])
        print(f"sheet: {flags.FLAGS.sheet}", file=sys.stderr)


def _define_classify_flags() -> None:
    from mmjax.commands import checkpoint_source

    flags.DEFINE_string("model", None, "A training workdir, or a pretrained checkpoint (as mmjax eval takes).")
    flags.DEFINE_string("labels", None, 'Comma-separated labels, used verbatim as prompts: "a cat,a dog".')
    checkpoint_source.define_flags()
    flags.mark_flags_as_required(["model", "labels"])


def _classify(argv) -> None:
    from mmjax.commands.checkpoint_source import load_model
    from mmjax.eval.classify import model_label_probabilities
    from mmjax.eval.search import embed_image_files

    labels = [label.strip() for label in flags.FLAGS.labels.split(",") if label.strip()]
    if not labels or len(argv) < 2:
        raise ValueError("usage: mmjax classify --model WORKDIR|CHECKPOINT --labels \"a cat,a dog\" IMAGE...")
    model = load_model(flags.FLAGS.model, batch_size=flags.FLAGS.batch_size)  # at --image_size, when given
    image_emb, ids = embed_image_files(model.encoder.encode_images, argv[1:], model.preprocess)
    probabilities = model_label_probabilities(model.params, image_emb, model.encoder.encode_texts(labels))
    for image_id, row in zip(ids, probabilities):
        print(image_id)
        print("\n".join(f"  {row[j]:.4f}  {labels[j]}" for j in sorted(range(len(labels)), key=lambda j: -row[j])))


def _define_caption_flags() -> None:
    flags.DEFINE_string("model", None, "A Flamingo training workdir (configs/flamingo_tiny.py).")
    flags.DEFINE_string("prompt", "", "The words each caption starts with.")
    flags.DEFINE_integer("num_tokens", None, "The most tokens written after the prompt (default: to the end of "
                         "the model's context).", lower_bound=0)
    flags.DEFINE_float("temperature", 0.0, "0: the likeliest token each time (greedy); above: sampled.",
                       lower_bound=0.0)
    flags.DEFINE_integer("top_k", 0, "Sample from the k likeliest tokens only (0: all).", lower_bound=0)
    flags.DEFINE_integer("seed", 0, "The draws of a sampled caption.")
    flags.DEFINE_integer("batch_size", None, "Images per generate call (default: the run's config.eval.batch_size).",
                         lower_bound=1)
    _define_beam_flags()
    flags.mark_flags_as_required(["model"])


def _caption(argv) -> None:
    from mmjax.captioner import Captioner
    from mmjax.eval.images import load_images
    from mmjax.models import get_config
    from mmjax.pretrained import is_pretrained_source
    from mmjax.train.workdir import check_kind, check_trained, load_config, load_trained

    if len(argv) < 2:
        raise ValueError("usage: mmjax caption --model WORKDIR [--prompt TEXT] IMAGE...")
    workdir = flags.FLAGS.model
    if is_pretrained_source(workdir):
        raise ValueError(f"mmjax caption takes a Flamingo training workdir (configs/flamingo_tiny.py); {workdir} is a "
                         f"pretrained checkpoint")
    step = check_trained(workdir)
    check_kind(workdir, captioner=True)
    decoding = _decoding()
    size = get_config(load_config(workdir).model).vision.image_size
    images, ids = load_images(argv[1:], size)  # resized and centre-cropped as the run's images; read before loading
    trained = load_trained(workdir, step=step)
    data = trained.config.data
    captioner = Captioner(trained.model, trained.params, trained.tokenizer, data.image_mean, data.image_std,
                          batch_size=flags.FLAGS.batch_size or trained.config.eval.batch_size)
    unknown = captioner.unknown_prompt_words(flags.FLAGS.prompt)
    if unknown:
        print(f"mmjax: warning: the tokenizer of {workdir} does not know the prompt's {', '.join(map(repr, unknown))}: "
              f"the model reads <unk> there", file=sys.stderr)
    captions = captioner.caption(images, flags.FLAGS.prompt, flags.FLAGS.num_tokens, flags.FLAGS.temperature,
                                 flags.FLAGS.top_k, flags.FLAGS.seed, **decoding)
    for image_id, caption in zip(ids, captions):
        print(f"{image_id}\t{caption}")


def _module_command(name: str):
    """A subcommand living in `mmjax/commands/NAME.py`, which defines `define_flags()` and `run(argv)`."""
    import importlib

    def define_flags() -> None:
        importlib.import_module(f"mmjax.commands.{name}").define_flags()

    def run(argv) -> None:
        importlib.import_module(f"mmjax.commands.{name}").run(argv)

    return define_flags, run


MODULE_COMMANDS = ("convert", "data", "bench")
FLAGS_ONLY = ("train", "eval", "models", "search")  # commands without positional arguments
COMMANDS = {
    "train": (_define_train_flags, _train),
    "eval": (_define_eval_flags, _eval),
    "models": (_define_no_flags, _models),
    "embed": (_define_embed_flags, _embed),
    "search": (_define_search_flags, _search),
    "classify": (_define_classify_flags, _classify),
    "caption": (_define_caption_flags, _caption),
    **{name: _module_command(name) for name in MODULE_COMMANDS},
}


def _fail(error: BaseException) -> None:
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    if "Traceback (most recent call last)" in str(message):  # config_flags wraps get_config's error with its trace
        message = re.sub(r"^[\w.]+: ", "", str(message).strip().splitlines()[-1])
    # one line: line breaks become spaces, but other spacing is kept (a path may hold two spaces)
    lines = str(message).replace("\\'", "'").replace("\\n", "\n").splitlines()
    text = " ".join(line.strip() for line in lines if line.strip())
    required = re.findall(r"flag --(\w+)=None: Flag --\w+ must have a value other than None\.", text)
    if required:  # absl's wording for missing required flags
        text = f"{', '.join('--' + name for name in required)} {'is' if len(required) == 1 else 'are'} required " \
               "(see --help)"
    if isinstance(error, AttributeError) and "has no attribute 'get_config'" in text:
        text = "the --config file defines no get_config()"
    elif isinstance(error, AttributeError) and "FrozenConfigDict is immutable" in text:  # config_flags' lock()
        text = ("the --config file's get_config() returned a FrozenConfigDict: return an ml_collections.ConfigDict "
                "(mmjax locks it, and --config.KEY overrides need it mutable)")
    elif isinstance(error, AttributeError):  # ml_collections: an override names a key the config lacks
        text = "unknown config key " + text.strip("'\"").replace("' ", ": ", 1)
    if isinstance(error, SyntaxError):  # in the --config file
        text = f"{error.filename}, line {error.lineno}: {error.msg}"
    if isinstance(error, ImportError):
        text = f"the --config file does not import: {text}"
    # Background threads of a failed read (TensorStore's, after a damaged checkpoint) go on reporting into asyncio
    # loops that are closing, with tracebacks that would bury the line: the process's stderr is closed to them
    # before it is said, since the process ends here. (A stderr without a file descriptor is only written to.)
    try:
        descriptor = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        print(f"mmjax: error: {text}", file=sys.stderr)
        sys.exit(2)
    sys.stderr.flush()
    stderr = os.dup(descriptor)
    os.dup2(os.open(os.devnull, os.O_WRONLY), descriptor)
    os.write(stderr, f"mmjax: error: {text}\n".encode())
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a bad flag or config override reported in one line."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError, SyntaxError, ImportError) as error:
        from mmjax.train.config import ConfigError

        chain = _error_chain(error)  # config_flags re-raises get_config()'s errors, sometimes garbling them
        if isinstance(chain[-1], ConfigError):  # mmjax's own one-line message (`configs/x.py:bogus`)
            _fail(chain[-1])
        in_users_code = [link for link in chain if _users_frames(link)]  # (a value ml_collections refused to take
        if in_users_code:                                                 # is raised while handling another error)
            _fail_in_get_config(in_users_code[0])
        _fail(error)  # SyntaxError, ImportError: the --config file's own
    except Exception as error:  # noqa: BLE001 - raised by the --config file's get_config(): said where, in one line
        _fail_in_get_config(error)


def _error_chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised while handling ("during handling of …"), the first raised last."""
    chain = [error]
    while chain[-1].__context__ is not None:
        chain.append(chain[-1].__context__)
    return chain


def _users_frames(error: BaseException) -> list[traceback.FrameSummary]:
    """The frames of `error`'s traceback in the user's own code: not Python's (frozen modules included) or an
    installed library's (under the interpreter's prefixes), nor mmjax's."""
    ours = (sys.prefix, sys.base_prefix, os.path.dirname(os.path.abspath(__file__)))
    return [frame for frame in traceback.extract_tb(error.__traceback__)
            if not frame.filename.startswith("<") and not os.path.abspath(frame.filename).startswith(ours)]


def _fail_in_get_config(error: BaseException) -> None:
    frame = (_users_frames(error) or traceback.extract_tb(error.__traceback__))[-1]
    # a key set on a locked ConfigDict: ml_collections' message prints the whole config (its newlines escaped, as
    # the message is a KeyError's) before its "Did you mean"
    message = re.sub(r"\s*Other fields present: .*?(?:((?:\\n|\s)+)(?=Did you mean)|(?='$))",
                     lambda match: " " if match.group(1) else "", str(error), flags=re.DOTALL)
    _fail(ValueError(f"the --config file's get_config() raised {type(error).__name__}: {message} "
                     f"({frame.filename}, line {frame.lineno})"))


def _run_reporting_errors(command):
    """Known failures (bad config, missing files, shape errors) become one line, exit status 2."""
    from mmjax.train.config import ConfigError
    from mmjax.train.preemption import Preempted

    def run(argv):
        try:
            name = argv[0].split()[-1]  # "mmjax NAME"
            if name in FLAGS_ONLY and len(argv) > 1:
                raise ValueError(f"unexpected argument {' '.join(argv[1:])!r}: mmjax {name} takes flags only "
                                 f"(see --help)")
            interrupts.check()  # one dropped during start-up stops here, before the command's work
            command(argv)  # its loops check for a Ctrl-C Python dropped (`main` watches)
            interrupts.check()  # one dropped after the last check: exit 130, not 0
        except (ConfigError, FileNotFoundError, KeyError, ValueError) as error:
            _fail(error)
        except OSError as error:
            if error.filename is None:  # not about a path: a bug or an outage, reported in full
                raise
            _fail(error)  # a workdir that cannot be made (read-only, a file in the way, too long a name, …)
        except KeyboardInterrupt:
            print(f"mmjax: interrupted{_what_an_interrupt_leaves()}", file=sys.stderr)
            _exit_now(130)
        except Preempted as stop:  # the run is saved: the status a scheduler expects of a SIGTERM-ed process
            print(f"mmjax: {stop}", file=sys.stderr)
            _exit_now(143)

    return run


def _exit_now(code: int) -> None:
    """Ends the process without Python's finalisation. The command's own cleanup has run (the training loop
    closes its checkpoints, writers and data workers on the way out); an interrupt that lands during start-up
    or the first compile leaves XLA threads that crash the interpreter's teardown (a segmentation fault after
    the message, and exit status -11 instead of `code`). multiprocessing's own exit hook still runs: it ends
    any worker processes and releases their queues' semaphores (else its resource tracker warns of leaks)."""
    import multiprocessing.util

    multiprocessing.util._exit_function()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _what_an_interrupt_leaves() -> str:
    """For `mmjax train`: whether the same command resumes the run or starts it again."""
    if sys.argv[1:2] != ["train"]:
        return ""
    from mmjax.train.checkpoint import has_checkpoint

    if has_checkpoint(flags.FLAGS.workdir):
        return "; run the same command to resume from the last checkpoint"
    return " before the first checkpoint; the same command starts the run again"


def _underscored(arg: str) -> str:
    """`--data-dir=x` → `--data_dir=x`: flags may be spelt with dashes."""
    if not arg.startswith("--") or arg.startswith("--config."):
        return arg
    name, sep, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + sep + value


HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def command_help(name: str) -> str:
    """`mmjax NAME --help`: the command's usage and its own flags (absl's --help knows only the main module's)."""
    import importlib

    define_flags, _ = COMMANDS[name]
    if name in MODULE_COMMANDS:
        usage = importlib.import_module(f"mmjax.commands.{name}").__doc__.strip()
    else:
        usage = "\n".join(line for line in USAGE.splitlines() if line.strip().startswith(f"mmjax {name}"))
    before = set(flags.FLAGS)
    define_flags()
    lines = [usage]
    for flag_name in sorted(set(flags.FLAGS) - before):
        flag = flags.FLAGS[flag_name]
        if flag.name == flag_name:  # not a short alias
            default = "" if flag.default is None else f" (default: {flag.default})"
            lines.append(f"  --{flag.name}: {flag.help}{default}")
    if len(lines) > 1:
        lines.insert(1, "\nflags (each may also be spelt with dashes: --data-dir = --data_dir):")
    return "\n".join(lines)


class _DropUnretrievedTaskErrors(py_logging.Filter):
    """asyncio's "Task exception was never retrieved" log records (with a traceback): Orbax reads a checkpoint's
    arrays in concurrent tasks, and when a damaged file fails them, the first failure is the one-line error and
    the others, the same failure, are logged when their tasks are collected."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Task exception was never retrieved")


def _quiet_closed_event_loops() -> None:
    """After a checkpoint read fails (a damaged file), TensorStore's threads that finish later call into asyncio
    loops Orbax has closed; each raises "Event loop is closed", which Python reports as unraisable, with a
    traceback, around the one-line error, and asyncio logs the sibling tasks' failures
    (`_DropUnretrievedTaskErrors`). Those reports alone are dropped; every other one is reported."""
    reporting = sys.unraisablehook

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            reporting(unraisable)

    sys.unraisablehook = hook
    py_logging.getLogger("asyncio").addFilter(_DropUnretrievedTaskErrors())


def main(argv: list[str] | None = None) -> None:
    try:
        with interrupts.watching():  # a Ctrl-C Python drops is raised by the next check, not reported as ignored
            interrupts.install()  # before the imports and flag parsing, which take seconds and collect garbage
            _quiet_closed_event_loops()
            _main(sys.argv if argv is None else argv)
            interrupts.check()
    except KeyboardInterrupt:  # during start-up; the command's own interrupts are reported where it runs
        print("mmjax: interrupted", file=sys.stderr)
        _exit_now(130)
    except BrokenPipeError:  # the reader of stdout stopped (`mmjax models | head`): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] in HELP_FLAGS:
        print(USAGE, file=sys.stderr if len(argv) < 2 else sys.stdout)
        sys.exit(0 if len(argv) >= 2 else 2)
    if argv[1] not in COMMANDS:
        print(f"mmjax: error: unknown command {argv[1]!r}; the commands are {', '.join(COMMANDS)} (mmjax --help)",
              file=sys.stderr)
        sys.exit(2)
    if any(arg in HELP_FLAGS for arg in argv[2:]):
        print(command_help(argv[1]))
        sys.exit(0)
    if argv[1] == "train":  # XLA:CPU's per-step buffers on 2 MiB pages: ~30 % faster CPU steps
        from mmjax.hugepages import reexec_with_hugepages
        reexec_with_hugepages()
    define_flags, command = COMMANDS[argv[1]]
    args = [_underscored(arg) for arg in argv[2:]]
    define_flags()
    logging.set_verbosity(logging.ERROR)  # orbax and grain log every save at INFO
    app.run(_run_reporting_errors(command), argv=[f"mmjax {argv[1]}", *args], flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
