"""`mmjax convert`: load any supported checkpoint and write it as a Hugging Face or OpenCLIP directory, or a
big_vision `.npz`.

    mmjax convert SOURCE --to hf|open_clip|big_vision --out DIR [--weights FILE] [--tokenizer FILE]
                  [--allow_pickle] [--image_size N]
    mmjax convert FINE_TUNED_WORKDIR --to hf|open_clip|big_vision --out DIR --wise_ft ALPHA   (mmjax/train/wise_ft.py)

SOURCE: hf:ORG/NAME, a Hugging Face or OpenCLIP directory, open_clip:MODEL (with --weights FILE),
a big_vision .npz, or an mmjax training workdir. `--to hf` writes a transformers `CLIPModel`
(or `SiglipModel`) directory, `--to open_clip` a directory for OpenCLIP's `local-dir:`, `--to big_vision` a
SigLIP's `DIR/siglip_{image size}.npz` and its SentencePiece model beside it (`mmjax/convert/big_vision.py`).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import flags


def define_flags() -> None:
    flags.DEFINE_enum("to", None, ["hf", "open_clip", "big_vision"], "Output format.")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_string("weights", None, "Weights file of an open_clip:MODEL source.")
    flags.DEFINE_string("tokenizer", None, "SentencePiece model of a big_vision .npz source "
                        "(default: the .model file beside it).")
    flags.DEFINE_bool("allow_pickle", False, "Read pickle-based .bin/.pt weights (with torch.load(weights_only=True)).")
    flags.DEFINE_integer("image_size", None, "Write the model for this image size (position embeddings interpolated).",
                         lower_bound=1)
    flags.DEFINE_float("wise_ft", None, "A run fine-tuned from a checkpoint: write (1 − α)·the checkpoint + α·the "
                       "fine-tuned weights (WiSE-FT), α given here in [0, 1].", lower_bound=0, upper_bound=1)


def exporter(pretrained, target: str):
    """The `export(pretrained, out_dir)` function that writes `pretrained` in format `target`."""
    is_siglip = pretrained.config.logit_bias_init is not None
    if target == "big_vision":
        if not is_siglip:
            raise ValueError("--to big_vision writes SigLIP models only; use --to hf or --to open_clip for CLIP")
        from mmjax.convert import big_vision
        return big_vision.export
    if target == "hf":
        if is_siglip:
            from mmjax.convert import hf_siglip
            return hf_siglip.export
        from mmjax.convert import hf_clip
        return hf_clip.export
    if is_siglip:
        from mmjax.convert import open_clip_siglip
        return open_clip_siglip.export
    from mmjax.convert import open_clip
    return open_clip.export


# What an mmjax training workdir holds besides the files an export writes (config.json, tokenizer.json).
WORKDIR_MARKS = ("checkpoints", "metrics.jsonl", ".lock")


def _refuse_out(source: str, out: str, inputs: dict[str, str | None]) -> None:
    """A one-line ValueError for an `--out` whose files an export would overwrite and that are not an earlier
    export: the source itself, an input file (`inputs`: flag → path, e.g. an `open_clip:NAME` source's
    `--weights` file named `model.safetensors`), a training workdir (its config.json and tokenizer.json), or a
    data directory."""
    from mmjax.convert.export_dir import written_by_export
    from mmjax.data.shards import data_files

    if os.path.exists(source) and os.path.exists(out) and os.path.samefile(source, out):
        raise ValueError(f"--out {out} is the source; name another directory")
    for flag, path in inputs.items():
        if path and os.path.isfile(path) and written_by_export(path, out):
            raise ValueError(f"--out {out} holds the {flag} file {path}, which the export would overwrite or remove; "
                             f"name another directory")
    marks = [name for name in WORKDIR_MARKS if os.path.exists(os.path.join(out, name))] + data_files(out)
    if marks:
        raise ValueError(f"--out {out} holds an mmjax training workdir or data directory ({', '.join(marks[:3])}), "
                         f"whose files the export would overwrite; name another directory")


def run(argv: list[str]) -> None:
    if len(argv) != 2 or not flags.FLAGS.to or not flags.FLAGS.out:
        raise ValueError("usage: mmjax convert SOURCE --to hf|open_clip|big_vision --out DIR [--weights FILE] "
                         "[--tokenizer FILE] [--allow_pickle]")
    from mmjax.convert.checks import flatten
    from mmjax.data.clip_bpe import BPE_FILE
    from mmjax.convert.image_processor import colour_caveat, crop_caveat
    from mmjax.pretrained import load_pretrained

    source, out = argv[1], flags.FLAGS.out
    inputs = {"source": source, "--weights": flags.FLAGS.weights, "--tokenizer": flags.FLAGS.tokenizer}
    if flags.FLAGS.weights:  # an open_clip:NAME source reads the BPE vocabulary beside its weights
        inputs["BPE vocabulary"] = os.path.join(os.path.dirname(os.path.abspath(flags.FLAGS.weights)), BPE_FILE)
    _refuse_out(source, out, inputs)
    if flags.FLAGS.wise_ft is not None:
        from mmjax.train.wise_ft import wise_ft

        given = [name for name in ("weights", "tokenizer", "image_size", "allow_pickle") if flags.FLAGS[name].present]
        if given:
            raise ValueError(f"--{given[0]} does not apply with --wise_ft: the run's own config.pretrained files, "
                             f"image size and allow_pickle are used")
        pretrained = wise_ft(source, flags.FLAGS.wise_ft)
    else:
        pretrained = load_pretrained(source, image_size=flags.FLAGS.image_size, allow_pickle=flags.FLAGS.allow_pickle,
                                     weights=flags.FLAGS.weights, tokenizer=flags.FLAGS.tokenizer)
    exporter(pretrained, flags.FLAGS.to)(pretrained, out)
    count = sum(int(np.prod(np.shape(leaf))) for leaf in flatten(pretrained.params).values())
    kind = "SigLIP" if pretrained.config.logit_bias_init is not None else "CLIP"
    print(f"{source} ({pretrained.format} {kind}, {count:,} parameters) -> {out} ({flags.FLAGS.to})")
    for caveat in (crop_caveat(pretrained.preprocess, flags.FLAGS.to), colour_caveat(pretrained.preprocess,
                                                                                       flags.FLAGS.to)):
        if caveat:
            print(f"mmjax: warning: {source}'s preprocessing {caveat}", file=sys.stderr)
    if flags.FLAGS.to == "hf" and getattr(pretrained.tokenizer, "normalization", None) == "big_vision":
        if pretrained.tokenizer.is_gemma:
            print(f"mmjax: warning: {source} tokenizes as big_vision does (A-Z lower-cased, other capitals kept); the "
                  f"Siglip2Tokenizer written to {out} lower-cases every letter, so texts with capitals outside A-Z get "
                  f"other ids there", file=sys.stderr)
        else:
            print(f"mmjax: warning: {source} tokenizes as big_vision does (punctuation kept); the SiglipTokenizer "
                  f"written to {out} removes punctuation, as transformers' own SigLIP conversion does, so texts with "
                  f"punctuation get other ids there", file=sys.stderr)
    if flags.FLAGS.to == "big_vision":
        from mmjax.convert.big_vision import export_caveats

        for caveat in export_caveats(pretrained):
            print(f"mmjax: warning: {source} {caveat}", file=sys.stderr)
    if flags.FLAGS.to == "open_clip" and pretrained.config.logit_bias_init is None:  # a CLIP, read by SimpleTokenizer
        from mmjax.convert.open_clip import is_clip_bpe

        if not is_clip_bpe(pretrained.tokenizer):
            print(f"mmjax: warning: {source}'s tokenizer ({pretrained.tokenizer.vocab_size} tokens) is not CLIP's BPE: "
                  f"open_clip.get_tokenizer('local-dir:{out}') gives OpenCLIP's own BPE, which this model cannot read; "
                  f"mmjax.load_pretrained('{out}') reads the tokenizer.json written there", file=sys.stderr)
