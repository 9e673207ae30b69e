"""TFDS image–text data sets (e.g. `coco_captions`) as random-access sources of `records.Sample`s.

Read without TensorFlow through `tfds.data_source` / `builder_from_directory(...).as_data_source`,
which needs the data set prepared in the array_record file format. The data source
decodes images, so a `Sample.image` here is uint8 `[H, W, C]` pixels, not bytes.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
from typing import Any

import numpy as np

from mmjax.data.records import Sample

TFDS_PREFIX = "tfds:"


def default_data_dir() -> str:
    """``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets`` (TFDS's own default)."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def resolve_data_dir(data_dir: str | None) -> str:
    """`data_dir`, or `default_data_dir()` when it is empty, with `~` expanded as TFDS expands it (a flag
    written `--data_dir=~/tfds` or a config value reaches here unexpanded)."""
    return os.path.expanduser(data_dir or default_data_dir())


def _version_key(version_dir: str) -> tuple[int, ...]:
    """`…/1.10.0` → (1, 10, 0): versions compare as numbers, not strings ("1.9.0" < "1.10.0")."""
    return tuple(int(part) if part.isdigit() else -1 for part in os.path.basename(version_dir).split("."))


def prepared_dir(name: str, data_dir: str) -> str | None:
    """The newest prepared version directory (`DATA_DIR/NAME[/CONFIG]/VERSION`, holding dataset_info.json) of
    TFDS data set `name` (`NAME` or `NAME/CONFIG`), or None. A bare NAME whose data set has several prepared
    configs is a one-line ValueError: which one TFDS would pick (the builder's default) is in the builder's
    code, which this path does not import."""
    root = os.path.join(glob.escape(data_dir), glob.escape(name))
    versions = [os.path.dirname(p) for p in glob.glob(os.path.join(root, "*", "dataset_info.json"))]
    if not versions and "/" not in name:
        versions = [os.path.dirname(p) for p in glob.glob(os.path.join(root, "*", "*", "dataset_info.json"))]
        configs = sorted({os.path.basename(os.path.dirname(version)) for version in versions})
        if len(configs) > 1:
            raise ValueError(f"TFDS data set {name} has several prepared configs under {data_dir} "
                             f"({', '.join(configs)}): name one, e.g. {name}/{configs[-1]}")
    return max(versions, key=_version_key) if versions else None


class UnknownSplitError(ValueError):
    """A prepared TFDS data set read with a split it does not have."""


def check_split(builder, split: str, what: str) -> None:
    """An `UnknownSplitError` naming the prepared splits when `split` (`train`, `train[:10%]+test`, `all`) names
    one the builder does not have."""
    names = [part.split("[")[0].strip() for part in split.split("+")]
    unknown = [name for name in names if name != "all" and name not in builder.info.splits]
    if unknown:
        raise UnknownSplitError(f"{what} has no split {unknown[0]!r} (split {split!r}); its prepared splits: "
                                f"{', '.join(sorted(builder.info.splits))}")


def open_tfds(name: str, split: str, data_dir: str | None = None) -> Any:
    """The random-access data source of `name` (`coco_captions` or `coco_captions/2014`) and `split`.

    Raises FileNotFoundError (one line, with how to prepare it) when it is not prepared as array_record, and
    ValueError when it is but `split` names a split it does not have.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415 (import cost only when used)

    data_dir = resolve_data_dir(data_dir)
    prepared = prepared_dir(name, data_dir)
    try:
        if prepared is not None:
            builder = tfds.builder_from_directory(prepared)
            check_split(builder, split, f"TFDS data set {name} under {data_dir}")
            return builder.as_data_source(split=split)
        with contextlib.redirect_stdout(io.StringIO()):  # answers under tfds.testing.mock_data
            return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except UnknownSplitError:
        raise
    except Exception as error:  # noqa: BLE001 - tfds raises many kinds; all mean "not usable"
        raise FileNotFoundError(
            f"TFDS data set {name} ({split}) is not prepared as array_record under {data_dir}; prepare it with: "
            f"pip install tensorflow-cpu; tfds build {name} --data_dir {data_dir} --file_format array_record "
            f"({type(error).__name__})") from None


def _texts(value: Any) -> tuple[str, ...]:
    if isinstance(value, dict):  # coco_captions: Sequence({"text": ..., "id": ...})
        value = value["text"]
    if isinstance(value, (bytes, str, np.bytes_, np.str_)):
        value = [value]
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(value).tolist())


def tfds_sample(example: dict[str, Any], index: int, name: str) -> Sample:
    """One TFDS feature dict → `Sample` (captions from `captions`, `caption` or `text`)."""
    key = next((k for k in ("captions", "caption", "text") if k in example), None)
    if key is None:
        raise KeyError(f"TFDS data set {name} has no captions/caption/text feature ({sorted(example)})")
    image_id = example.get("image/id", index)
    return Sample(key=f"{name}:{int(image_id) if np.ndim(image_id) == 0 else index}", captions=_texts(example[key]),
                  image=np.asarray(example["image"], np.uint8), image_format="array")


class TfdsSamples:
    """Random access `[i]` → `Sample` over a TFDS data source (opened lazily, so it pickles to workers)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        self.name, self.split, self.data_dir = name, split, data_dir
        self._source = open_tfds(name, split, data_dir)
        self._length = len(self._source)

    def __getstate__(self) -> dict:
        return {"name": self.name, "split": self.split, "data_dir": self.data_dir, "_length": self._length}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _source=None)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Sample:
        if self._source is None:
            self._source = open_tfds(self.name, self.split, self.data_dir)
        return tfds_sample(self._source[int(index)], int(index), self.name)
