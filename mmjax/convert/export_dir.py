"""Writing an export directory all at once: a failed export leaves `--out` as it was, and a new export into
an earlier one leaves none of the earlier one's files behind (a stale tokenizer.json is read before the
vocab.json + merges.txt written beside it, by mmjax and by transformers alike)."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from mmjax.data.clip_bpe import BPE_FILE

# Every file an export of any format writes: transformers CLIP and SigLIP, OpenCLIP's local-dir, then big_vision's
# SigLIP `.npz` and its SentencePiece model (`big_vision.export_stem`: `siglip_{image size}`), as full-match patterns.
EXPORT_FILES = tuple(re.compile(pattern) for pattern in (
    *(re.escape(name) for name in (
        "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json",
        "vocab.json", "merges.txt", "spiece.model", "special_tokens_map.json",
        "open_clip_config.json", "open_clip_model.safetensors", BPE_FILE)),
    r"siglip_\d+\.npz", r"siglip_\d+\.model"))
# The file that says a directory holds an export: a transformers config, OpenCLIP's, or a big_vision `.npz`.
EXPORT_MARKS = tuple(re.compile(pattern) for pattern in (r"config\.json", r"open_clip_config\.json",
                                                           r"siglip_\d+\.npz"))
STAGING_PREFIX = ".mmjax-export-"


def _matching(names, patterns: tuple[re.Pattern, ...]) -> set[str]:
    """The names that one of `patterns` matches in full."""
    return {name for name in names if any(pattern.fullmatch(name) for pattern in patterns)}


@contextlib.contextmanager
def staged_export(out_dir: str) -> Iterator[str]:
    """Yields an empty staging directory inside `out_dir` to write an export into. When the block ends without
    an error, its files are moved into `out_dir` (the same file system, so each move is a rename), then, when
    `out_dir` held an earlier export (`EXPORT_MARKS`), that export's other files (`EXPORT_FILES`) are removed;
    any other file is left as it is. On an error `out_dir` is left as it was (the directories this made for it
    are removed again). A staging directory that a killed export left behind is removed by the next one."""
    made = _missing_directories(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(out_dir), STAGING_PREFIX + "*")):
        shutil.rmtree(stale, ignore_errors=True)
    earlier_export = any(os.path.isfile(os.path.join(out_dir, name))
                         for name in _matching(os.listdir(out_dir), EXPORT_MARKS))
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir)
    try:
        yield staging
        written = set(os.listdir(staging))
        for name in sorted(written):
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
        for name in sorted(_matching(os.listdir(out_dir), EXPORT_FILES) - written) if earlier_export else ():
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out_dir, name))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in made:  # deepest first; one that is not empty (someone else's files) stays
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _missing_directories(path: str) -> list[str]:
    """`path` and those of its parents that do not exist, deepest first."""
    missing, path = [], os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def written_by_export(path: str, out_dir: str) -> bool:
    """Whether an export into `out_dir` writes or removes the file `path`."""
    return (bool(_matching([os.path.basename(path)], EXPORT_FILES)) and os.path.isdir(out_dir)
            and os.path.samefile(os.path.dirname(os.path.abspath(path)), out_dir))
