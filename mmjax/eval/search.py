"""Embedding indexes on disk and exact nearest-neighbour search over them.

An index is L2-normalised float32 embeddings ``[N, D]`` with one string id per
row, the modality they were embedded from (``"image"`` or ``"text"``), the model
source (the workdir that embedded them) and its checkpoint step, and, for image indexes, the
directory the ids are relative to. Two file formats, chosen by extension:

- ``.safetensors``: one tensor ``embeddings``; ids (a JSON list) and the other
  fields in the safetensors metadata (string → string). safetensors caps the
  header at 100 MB, i.e. a few million short ids; use ``.npz`` beyond that.
- ``.npz``: ``np.savez`` arrays ``embeddings``, ``ids`` (a unicode array) and
  0-d unicode arrays for the fields; read with ``allow_pickle=False``.

Search is exact: cosine similarity (dot products of normalised embeddings) with
:func:`mmjax.eval.retrieval.blocked_top_k`, so no ``Q × N`` matrix is built at
once; among equal scores the lower index ranks first.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from mmjax import interrupts
from mmjax.data.preprocess import ImagePreprocess
from mmjax.eval.images import load_images
from mmjax.eval.retrieval import blocked_top_k
from mmjax.eval.text_files import one_line
from mmjax.eval.zeroshot import l2_normalize
from mmjax.files import write_atomically

FORMAT = "mmjax-index"
VERSION = "1"
MODALITIES = ("image", "text")
EXTENSIONS = (".safetensors", ".npz")
_FIELDS = ("modality", "model", "root", "model_step", "model_weights", "model_tokenizer", "model_image_size")
SAFETENSORS_HEADER_LIMIT = 100_000_000  # bytes; safetensors refuses a larger header


@dataclasses.dataclass
class Index:
    """Normalised embeddings ``[N, D]`` float32 and their ids, modality, model source, image root, the model's
    checkpoint step (as text; "" when not known, as in indexes of earlier versions), the files a pretrained
    model was loaded with (``--weights`` of an ``open_clip:MODEL``, ``--tokenizer`` of a big_vision ``.npz``;
    absolute paths, "" when none) and the image size a pretrained checkpoint embedded at (its own or
    ``--image_size``, as text; "" for a workdir, whose size is its run's, and in indexes of earlier versions)."""

    embeddings: np.ndarray
    ids: list[str]
    modality: str
    model: str = ""
    root: str = ""
    model_step: str = ""
    model_weights: str = ""
    model_tokenizer: str = ""
    model_image_size: str = ""

    def __post_init__(self):
        self.embeddings = l2_normalize(self.embeddings)
        self.ids = [str(i) for i in self.ids]
        if self.embeddings.ndim != 2:
            raise ValueError(f"index embeddings must be [N, D], got {list(self.embeddings.shape)}")
        if len(self.ids) != len(self.embeddings):
            raise ValueError(f"index has {len(self.embeddings)} embeddings but {len(self.ids)} ids")
        if self.modality not in MODALITIES:
            raise ValueError(f"index modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]


def index_format(path: str) -> str:
    """The index file format, ".safetensors" or ".npz", from the extension; else a one-line ValueError."""
    for extension in EXTENSIONS:
        if path.lower().endswith(extension):
            return extension
    raise ValueError(f"index file {path} must end in {' or '.join(EXTENSIONS)}")


def check_ids_fit(path: str, ids: Sequence[str]) -> None:
    """A one-line ValueError when ``ids`` are too large for the header of a ``.safetensors`` index ``path``."""
    if index_format(path) != ".safetensors":
        return
    size = len(json.dumps(json.dumps(list(ids))).encode())  # the JSON list, itself a string in the JSON header
    if size > SAFETENSORS_HEADER_LIMIT - 10_000:  # room for the tensor's entry and the other fields
        raise ValueError(f"index file {path}: its {len(ids)} ids take {size / 1e6:.0f} MB, more than a .safetensors "
                         f"header holds ({SAFETENSORS_HEADER_LIMIT / 1e6:.0f} MB); write a .npz index")


def save_index(path: str | os.PathLike, index: Index) -> None:
    """Writes ``index`` as safetensors or npz (by ``path``'s extension), atomically."""
    path = os.fspath(path)
    extension = index_format(path)
    check_ids_fit(path, index.ids)
    fields = {name: getattr(index, name) for name in _FIELDS}
    embeddings = np.ascontiguousarray(index.embeddings, np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(temporary: str) -> None:
        if extension == ".safetensors":
            from safetensors.numpy import save_file
            metadata = {"format": FORMAT, "version": VERSION, "ids": json.dumps(index.ids), **fields}
            save_file({"embeddings": embeddings}, temporary, metadata=metadata)
        else:
            ids = np.array(index.ids, dtype=str) if index.ids else np.zeros((0,), "<U1")
            with open(temporary, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, embeddings=embeddings, ids=ids, format=np.array(FORMAT), version=np.array(VERSION),
                         **{name: np.array(value) for name, value in fields.items()})

    write_atomically(path, write)


def _read(path: str, extension: str) -> tuple[np.ndarray, dict]:
    if extension == ".safetensors":
        from safetensors import safe_open
        with safe_open(path, framework="np") as f:
            metadata = dict(f.metadata() or {})
            if "embeddings" not in f.keys():
                raise ValueError("no 'embeddings' tensor")
            embeddings = f.get_tensor("embeddings")
        if "ids" in metadata:
            metadata["ids"] = json.loads(metadata["ids"])
        return embeddings, metadata
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    if "embeddings" not in arrays:
        raise ValueError("no 'embeddings' array")
    metadata = {name: (arrays[name].tolist() if name == "ids" else str(arrays[name]))
                for name in arrays if name != "embeddings"}
    return arrays["embeddings"], metadata


def load_index(path: str | os.PathLike) -> Index:
    """Reads an index written by :func:`save_index`; a missing, truncated or foreign file → one-line error."""
    path = os.fspath(path)
    extension = index_format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"index file {path} does not exist")
    try:
        embeddings, metadata = _read(path, extension)
    except Exception as error:  # safetensors, zipfile and numpy raise many types for a damaged file
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"cannot read index {path} (truncated or not an mmjax index?): {reason}") from None
    if metadata.get("format") != FORMAT or "ids" not in metadata:
        raise ValueError(f"{path} is not an mmjax index (written by `mmjax embed`)")
    return Index(embeddings, metadata["ids"], metadata.get("modality", ""), metadata.get("model", ""),
                 metadata.get("root", ""), metadata.get("model_step", ""), metadata.get("model_weights", ""),
                 metadata.get("model_tokenizer", ""), metadata.get("model_image_size", ""))


def search(index: Index, query_emb: np.ndarray, k: int, block_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k: ``(indices [Q, k'], scores [Q, k'])`` with ``k' = min(k, N)``.

    ``query_emb`` is ``[Q, D]`` or ``[D]`` (normalised here). Scores descend along
    each row; among equal scores the lower index comes first.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    queries = l2_normalize(np.atleast_2d(query_emb))
    if queries.shape[1] != index.dim:
        raise ValueError(f"query embeddings have dimension {queries.shape[1]} but the index has {index.dim} "
                         f"(embedded by a different model? index model: {index.model or 'unknown'})")
    if len(index) == 0:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    indices = blocked_top_k(queries, index.embeddings, k, block_size).astype(np.int64)
    scores = np.einsum("qd,qkd->qk", queries, index.embeddings[indices])
    return indices, scores.astype(np.float32)


def embed_image_files(encode_images: Callable[[np.ndarray], np.ndarray], paths: Sequence[str],
                      size: int | ImagePreprocess, root: str | None = None,
                      chunk: int = 1024) -> tuple[np.ndarray, list[str]]:
    """Embeds image files ``chunk`` at a time (memory ``O(chunk)`` images): ``(emb [N, E], ids)``; ``size`` as
    :func:`~mmjax.eval.images.load_image` takes it."""
    embeddings, ids = [], []
    for start in range(0, len(paths), chunk):
        interrupts.check()
        images, chunk_ids = load_images(paths[start:start + chunk], size, root)
        embeddings.append(encode_images(images))
        ids.extend(chunk_ids)
    return np.concatenate(embeddings), ids


def format_hits(indices: np.ndarray, scores: np.ndarray, ids: Sequence[str]) -> list[str]:
    """``rank  score  id`` lines (rank from 1) for one query's hits; an id with a line break or a control character
    other than a tab is shown quoted (as Python writes it), so that each hit stays one line."""
    shown = [one_line(ids[i]) for i in indices]
    return [f"{rank:4d}  {score:7.4f}  {name}" for rank, (score, name) in enumerate(zip(scores, shown), 1)]
