"""Writing an export directory all at once: a failed export leaves `--out` as it was, and a new export into
an earlier one leaves none of the earlier one's files behind (a stale tokenizer.json is read before the
vocab.json + merges.txt written beside it, by mmjax and by transformers alike)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from mmjax.data.clip_bpe import BPE_FILE

# Every file an export of any format writes: transformers CLIP and SigLIP, then OpenCLIP's local-dir.
EXPORT_FILES = frozenset({
    "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json",
    "vocab.json", "merges.txt", "spiece.model", "special_tokens_map.json",
    "open_clip_config.json", "open_clip_model.safetensors", BPE_FILE,
})


@contextlib.contextmanager
def staged_export(out_dir: str) -> Iterator[str]:
    """Yields an empty directory beside `out_dir` to write an export into. When the block ends without an
    error, its files replace `out_dir`'s: an earlier export's files (`EXPORT_FILES`) that this one does not
    write are removed, any other file is left as it is. On an error `out_dir` is not touched."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".mmjax-export-", dir=parent)
    try:
        yield staging
        written = set(os.listdir(staging))
        os.makedirs(out_dir, exist_ok=True)
        for name in sorted(EXPORT_FILES - written):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out_dir, name))
        for name in sorted(written):
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def written_by_export(path: str, out_dir: str) -> bool:
    """Whether an export into `out_dir` writes or removes the file `path`."""
    return (os.path.basename(path) in EXPORT_FILES and os.path.isdir(out_dir)
            and os.path.samefile(os.path.dirname(os.path.abspath(path)), out_dir))
