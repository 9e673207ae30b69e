"""Safe reading and writing of weight files: safetensors and `.npz`; pickles only when asked for.

A pickle can run arbitrary code when it is loaded, so `.bin` / `.pt` / `.pth` / `.ckpt`
files are refused unless the caller passes `allow_pickle=True` (`--allow_pickle`), and
even then they are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from mmjax.convert.jsonfile import read_json
from mmjax.files import naming_the_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# A transformers model directory's weights, in the order they are looked for; an `.index.json` file maps each
# tensor name to the shard file that holds it (what `save_pretrained` writes above `max_shard_size`).
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json")


def _float32(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype.kind == "f" and array.dtype != np.float32 else array


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np") as f:
            return {key: _float32(f.get_tensor(key)) for key in f.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None
    except TypeError:  # bfloat16 has no NumPy dtype: read through ml_dtypes-aware flax
        return _read_safetensors_bf16(path)


def _read_safetensors_bf16(path: str) -> dict[str, np.ndarray]:
    import ml_dtypes
    from safetensors import safe_open

    tensors = {}
    with safe_open(path, framework="flax") as f:
        for key in f.keys():
            array = np.asarray(f.get_tensor(key))
            tensors[key] = array.astype(np.float32) if array.dtype == ml_dtypes.bfloat16 else _float32(array)
    return tensors


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: _float32(archive[key]) for key in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable .npz file ({error})") from None
    except ValueError as error:  # object arrays need pickle
        raise ValueError(f"{path} holds pickled objects, which are never loaded ({error})") from None


def _read_pickle(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ValueError(f"reading {path} needs torch (pip install torch), or convert it to safetensors") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds (UnpicklingError, RuntimeError) for bad files
        raise ValueError(f"{path} could not be read with torch.load(weights_only=True): "
                         f"{str(error).splitlines()[0]}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return {key: _float32(value.float().numpy() if value.is_floating_point() else value.numpy())
            for key, value in state.items() if hasattr(value, "numpy")}


def read_tensors(path: str, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """All tensors of a weight file as NumPy arrays (floating point upcast to float32), by stored name."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.endswith(".npz"):
        return _read_npz(path)
    if path.endswith(PICKLE_SUFFIXES):
        if not allow_pickle:
            raise ValueError(f"{path} is a pickle-based checkpoint, which can run code when loaded; pass "
                             "--allow_pickle (allow_pickle=True) to read it with torch.load(weights_only=True), "
                             "or convert it to safetensors")
        return _read_pickle(path)
    raise ValueError(f"{path}: unknown weights format (expected .safetensors, .npz, or with --allow_pickle "
                     f"{', '.join(PICKLE_SUFFIXES)})")


def read_transformers_weights(directory: str, *, allow_pickle: bool = False) -> tuple[dict[str, np.ndarray], str]:
    """`(tensors, the file they were found through)` of a transformers model directory: the first of
    `TRANSFORMERS_WEIGHTS` it holds, a sharded checkpoint read shard by shard through its index."""
    for name in TRANSFORMERS_WEIGHTS:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return (_read_sharded(path, allow_pickle) if name.endswith(".index.json")
                    else read_tensors(path, allow_pickle=allow_pickle)), path
    raise FileNotFoundError(f"{directory} has no {' or '.join(TRANSFORMERS_WEIGHTS)}")


def _read_sharded(index_path: str, allow_pickle: bool) -> dict[str, np.ndarray]:
    """The tensors of every shard an index file's `weight_map` (tensor name → shard file) names, checked
    against the map: a missing shard or a tensor its shard does not hold is named in one line."""
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path} has no weight_map (tensor name → shard file)")
    directory, tensors = os.path.dirname(index_path), {}
    for shard in sorted(set(weight_map.values())):
        path = os.path.join(directory, shard)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"shard {path} named by {index_path} does not exist")
        shard_tensors = read_tensors(path, allow_pickle=allow_pickle)
        absent = next((name for name, file in weight_map.items() if file == shard and name not in shard_tensors), None)
        if absent is not None:
            raise ValueError(f"{index_path} puts tensor {absent} in {shard}, which does not hold it")
        tensors.update(shard_tensors)
    return tensors


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes `tensors` (contiguous copies) to a safetensors file."""
    from safetensors.numpy import save_file

    with naming_the_file(os.fspath(path)):
        save_file({key: np.require(value, requirements="C") for key, value in tensors.items()}, os.fspath(path),
                  metadata=metadata)
