"""`mmjax data convert | filter | info`: build, filter and inspect mmjax data directories (ArrayRecord shards).

    mmjax data convert SOURCE --out DIR [--records_per_shard 10000] [--num_workers N]
                       [--split train] [--data_dir TFDS_DIR]        SOURCE: tars dir | .tar | .csv | .jsonl | tfds:NAME
    mmjax data filter DIR --model WORKDIR|CHECKPOINT --out DIR2 (--threshold 0.3 | --top_fraction 0.5) [--batch_size 256]
    mmjax data info DIR
"""

from __future__ import annotations

import json
import os

from absl import flags

from mmjax.commands import checkpoint_source
from mmjax.commands.subcommand_flags import refuse_unread_flags


def _define_flags() -> None:
    flags.DEFINE_string("out", None, "Output data directory.")
    flags.DEFINE_integer("records_per_shard", 10_000, "convert (csv/jsonl/tfds) and filter: records per output shard.",
                         lower_bound=1)
    flags.DEFINE_integer("num_workers", 1, "convert: worker processes writing shards.", lower_bound=1)
    flags.DEFINE_string("split", "train", "convert tfds:NAME: the split.")
    flags.DEFINE_string("data_dir", None, "convert tfds:NAME: TFDS data directory (default $TFDS_DATA_DIR).")
    flags.DEFINE_string("model", None, "filter: the model that scores the pairs: a training workdir, or a pretrained "
                        "checkpoint (hf:ORG/NAME, a Hugging Face or OpenCLIP directory, open_clip:MODEL with --weights, "
                        "a big_vision .npz).")
    flags.DEFINE_float("threshold", None, "filter: keep pairs with CLIP score (cosine) ≥ this.")
    flags.DEFINE_float("top_fraction", None, "filter: keep this best fraction of the pairs.")
    flags.DEFINE_integer("batch_size", 256, "filter: records embedded per batch.", lower_bound=1)
    checkpoint_source.define_source_flags()


def _summary(index: dict) -> str:
    dropped = ", ".join(f"{reason} {n}" for reason, n in index["dropped"].items()) or "none"
    shards = len(index["shards"])
    return f"{index['num_records']} records in {shards} shard{'s' if shards != 1 else ''}; dropped: {dropped}"


def _convert(argv: list[str]) -> None:
    from mmjax.data.convert import convert  # noqa: PLC0415 (keep `mmjax data --help` fast)

    if len(argv) != 1 or not flags.FLAGS.out:
        raise ValueError("usage: mmjax data convert SOURCE --out DIR")
    given = [name for name in ("split", "data_dir") if flags.FLAGS[name].present]
    if given and not argv[0].startswith("tfds:"):
        raise ValueError(f"--{given[0]} applies to a tfds:NAME source, not to {argv[0]}")
    index = convert(argv[0], flags.FLAGS.out, records_per_shard=flags.FLAGS.records_per_shard,
                    num_workers=flags.FLAGS.num_workers, split=flags.FLAGS.split, data_dir=flags.FLAGS.data_dir)
    if index["num_records"] == 0:
        raise ValueError(f"{flags.FLAGS.out}: no sample of {argv[0]} was kept; {_summary(index)} "
                         f"(delete {flags.FLAGS.out} before converting the source again)")
    print(f"{flags.FLAGS.out}: {_summary(index)}")


def _filter(argv: list[str]) -> None:
    from mmjax.data.filter import check_selection, score_directory, selection_threshold, write_filtered  # noqa: PLC0415
    from mmjax.data.shards import check_can_make, read_index, refuse_nonempty_out  # noqa: PLC0415

    if len(argv) != 1 or not flags.FLAGS.out or not flags.FLAGS.model:
        raise ValueError("usage: mmjax data filter DIR --model WORKDIR|CHECKPOINT --out DIR2 (--threshold T | "
                         "--top_fraction F)")
    check_selection(flags.FLAGS.threshold, flags.FLAGS.top_fraction)
    if os.path.abspath(argv[0]) == os.path.abspath(flags.FLAGS.out):
        raise ValueError(f"--out {flags.FLAGS.out} must differ from the source directory")
    refuse_nonempty_out(flags.FLAGS.out, "mmjax data filter")  # before the scoring, which embeds every pair
    check_can_make(flags.FLAGS.out)
    read_index(argv[0])  # a missing or unconverted source is an error before the model loads
    model = checkpoint_source.load_model(flags.FLAGS.model, batch_size=flags.FLAGS.batch_size)
    scores = score_directory(argv[0], model.encoder.encode_images, model.encoder.encode_texts, model.preprocess.size,
                             flags.FLAGS.batch_size, preprocess=model.preprocess)
    minimum = selection_threshold(scores, flags.FLAGS.threshold, flags.FLAGS.top_fraction)
    index = write_filtered(argv[0], flags.FLAGS.out, scores, minimum, flags.FLAGS.records_per_shard)
    pairs = sum(len(s) for s in scores.scores if s is not None)
    kept = sum(int((s >= minimum).sum()) for s in scores.scores if s is not None)
    skipped = ", ".join(f"{reason} {n}" for reason, n in index["dropped"].items()) or "none"
    print(f"kept {kept} of {pairs} pairs (CLIP score ≥ {minimum:.4f}) in {index['num_records']} records "
          f"-> {flags.FLAGS.out}; unreadable records: {skipped}")


def _info(argv: list[str]) -> None:
    from mmjax.data.shards import INDEX_FILE, read_index  # noqa: PLC0415

    if len(argv) != 1:
        raise ValueError("usage: mmjax data info DIR")
    shards = read_index(argv[0])
    with open(os.path.join(argv[0], INDEX_FILE)) as f:
        index = json.load(f)
    missing = [os.path.basename(s.path) for s in shards if not os.path.exists(s.path)]
    print(f"{argv[0]}: {_summary(index)}" + (f"; missing shards: {', '.join(missing)}" if missing else ""))


SUBCOMMANDS = {"convert": _convert, "filter": _filter, "info": _info}
FLAGS_USED = {"convert": {"out", "records_per_shard", "num_workers", "split", "data_dir"},
              "filter": {"out", "model", "threshold", "top_fraction", "batch_size", "records_per_shard",
                         *checkpoint_source.PRETRAINED_FLAGS},
              "info": set()}
_DATA_FLAGS: set[str] = set()


def define_flags() -> None:
    before = set(flags.FLAGS)
    _define_flags()
    _DATA_FLAGS.update(set(flags.FLAGS) - before)


def run(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in SUBCOMMANDS:
        raise ValueError(f"usage: mmjax data {{{'|'.join(SUBCOMMANDS)}}} ... (got {' '.join(argv[1:]) or 'nothing'})")
    refuse_unread_flags(f"data {argv[1]}", _DATA_FLAGS, FLAGS_USED[argv[1]])
    SUBCOMMANDS[argv[1]](argv[2:])
