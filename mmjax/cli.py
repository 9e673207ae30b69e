"""`mmjax` command line: `mmjax train | eval | models`.

    mmjax train --config configs/clip_tiny.py --workdir runs/demo [--config.batch_size=128 …]
    mmjax eval  --model runs/demo [--output runs/demo/eval.json] [--figure runs/demo/demo.png]
    mmjax models
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

USAGE = __doc__


def _define_train_flags() -> None:
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the tokenizer.")
    flags.mark_flags_as_required(["config", "workdir"])


def _train(_argv) -> None:
    from mmjax.train.loop import train
    train(flags.FLAGS.config, flags.FLAGS.workdir)


def _define_eval_flags() -> None:
    flags.DEFINE_string("model", None, "A training workdir.")
    flags.DEFINE_string("output", None, "Results JSON (default: MODEL/eval.json).")
    flags.DEFINE_string("figure", None, "Also write a PNG: loss curve and text→image retrievals.")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the one the run trained with).")
    flags.mark_flags_as_required(["model"])


def _eval(_argv) -> None:
    from mmjax.eval import (evaluate_synthetic, format_table, results_json, text_to_image_examples,
                            write_demo_figure, write_results)
    from mmjax.inference import Encoder
    from mmjax.train.workdir import load_trained

    workdir = flags.FLAGS.model
    trained = load_trained(workdir, dtype=flags.FLAGS.dtype)
    config = trained.config
    encoder = Encoder(trained.model, trained.params, trained.tokenizer, config.data.image_mean,
                      config.data.image_std, batch_size=config.eval.batch_size)
    common = dict(seed=config.data.seed, image_size=trained.model.config.vision.image_size)
    metrics = evaluate_synthetic(encoder.encode_images, encoder.encode_texts, num_heldout=config.eval.num_heldout,
                                 num_retrieval=config.eval.num_retrieval, batch_size=config.eval.batch_size, **common)
    output = flags.FLAGS.output or os.path.join(workdir, "eval.json")
    write_results(output, results_json("synthetic-shapes", workdir, metrics, extra={"step": trained.step}))
    print(f"{config.model} trained {trained.step} steps in {workdir}")
    print(format_table(metrics))
    print(f"results: {output}")
    if flags.FLAGS.figure:
        examples = text_to_image_examples(encoder.encode_images, encoder.encode_texts,
                                          num_images=config.eval.num_retrieval, **common)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        write_demo_figure(flags.FLAGS.figure, records, examples)
        print(f"figure:  {flags.FLAGS.figure}")


def _define_no_flags() -> None:
    pass


def _models(_argv) -> None:
    from mmjax.models import list_models, param_count
    for name in list_models():
        print(f"{name:24s} {param_count(name):>14,d} parameters")


COMMANDS = {
    "train": (_define_train_flags, _train),
    "eval": (_define_eval_flags, _eval),
    "models": (_define_no_flags, _models),
}


def _fail(error: BaseException) -> None:
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    text = " ".join(str(message).replace("\\n", " ").replace("\\'", "'").split())
    if isinstance(error, AttributeError):  # ml_collections: an override names a key the config lacks
        text = "unknown config key " + text.strip("'").replace("' ", ": ", 1)
    print(f"mmjax: error: {text}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a bad flag or config override reported in one line."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as error:
        _fail(error)


def _run_reporting_errors(command):
    """Known failures (bad config, missing files, shape errors) become one line, exit status 2."""
    from mmjax.train.config import ConfigError

    def run(argv):
        try:
            command(argv)
        except (ConfigError, FileNotFoundError, KeyError, ValueError) as error:
            _fail(error)

    return run


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(0 if len(argv) >= 2 and argv[1] in ("-h", "--help") else 2)
    define_flags, command = COMMANDS[argv[1]]
    define_flags()
    logging.set_verbosity(logging.ERROR)  # orbax and grain log every save at INFO
    app.run(_run_reporting_errors(command), argv=[f"mmjax {argv[1]}", *argv[2:]], flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
