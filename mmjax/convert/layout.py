"""torch ↔ mmjax parameter layouts, shared by the converters.

torch `nn.Linear.weight` is `[out, in]` and computes `x @ weight.T`; mmjax kernels are
`[in, out]` (`DenseGeneral`), with attention projections split per head: query/key/value
kernels `[W, H, Dh]`, biases `[H, Dh]`, the output kernel `[H, Dh, W]`. A patch conv is
`[W, 3, p, p]` in torch and `[p, p, 3, W]` in Flax.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def take(tensors: Mapping[str, np.ndarray], key: str, where: str,
         shape: tuple[int, ...] | None = None) -> np.ndarray:
    """`tensors[key]` as float32, or a one-line ValueError naming the file and the tensor that is missing or,
    when `shape` is given, has another shape (a scalar may be stored as any one-element array)."""
    if key not in tensors:
        raise ValueError(f"{where}: tensor {key} is missing")
    value = np.asarray(tensors[key], np.float32)
    if shape is not None and value.shape != shape and not (shape == () and value.size == 1):
        raise ValueError(f"{where}: tensor {key} has shape {value.shape} but the config needs {shape}")
    return value.reshape(()) if shape == () else value


def dense(weight: np.ndarray, bias: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """torch Linear `[out, in]` (+ bias `[out]`) → `{"kernel": [in, out], "bias": [out]}`."""
    params = {"kernel": weight.T}
    if bias is not None:
        params["bias"] = bias
    return params


def heads_in(weight: np.ndarray, bias: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
    """A q/k/v Linear `[H*Dh, W]`, `[H*Dh]` → kernel `[W, H, Dh]`, bias `[H, Dh]`."""
    width_out, width_in = weight.shape
    return {"kernel": weight.T.reshape(width_in, num_heads, width_out // num_heads),
            "bias": bias.reshape(num_heads, width_out // num_heads)}


def heads_out(weight: np.ndarray, bias: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
    """The attention output Linear `[W, H*Dh]`, `[W]` → kernel `[H, Dh, W]`, bias `[W]`."""
    width_out, width_in = weight.shape
    return {"kernel": weight.T.reshape(num_heads, width_in // num_heads, width_out), "bias": bias}


def layer_norm(weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    return {"scale": weight, "bias": bias}


Pair = tuple[np.ndarray, np.ndarray]


def transformer_block(ln_1: Pair, query: Pair, key: Pair, value: Pair, out: Pair, ln_2: Pair, fc1: Pair, fc2: Pair,
                      num_heads: int) -> dict:
    """mmjax `TransformerBlock` params from the torch `(weight, bias)` pair of each sub-layer."""
    return {
        "ln_1": layer_norm(*ln_1),
        "attn": {"query": heads_in(*query, num_heads), "key": heads_in(*key, num_heads),
                 "value": heads_in(*value, num_heads), "out": heads_out(*out, num_heads)},
        "ln_2": layer_norm(*ln_2),
        "mlp": {"fc1": dense(*fc1), "fc2": dense(*fc2)},
    }


def patch_conv(weight: np.ndarray) -> np.ndarray:
    """torch conv `[W, 3, p, p]` → Flax `[p, p, 3, W]`."""
    return weight.transpose(2, 3, 1, 0)


def to_torch_linear(params: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Inverse of `dense`, `heads_in` and `heads_out`: `(weight [out, in], bias [out] or None)`."""
    kernel = np.asarray(params["kernel"])
    if kernel.ndim == 3 and "bias" in params and np.ndim(params["bias"]) == 2:  # q/k/v: [W, H, Dh]
        weight = kernel.reshape(kernel.shape[0], -1).T
        return weight, np.asarray(params["bias"]).reshape(-1)
    if kernel.ndim == 3:  # attention output: [H, Dh, W]
        weight = kernel.reshape(-1, kernel.shape[-1]).T
    else:
        weight = kernel.T
    return weight, (np.asarray(params["bias"]) if "bias" in params else None)


def to_torch_conv(kernel: np.ndarray) -> np.ndarray:
    """Flax `[p, p, 3, W]` → torch `[W, 3, p, p]`."""
    return np.asarray(kernel).transpose(3, 2, 0, 1)


def unscan(params: Mapping) -> dict:
    """Scanned `encoder/layers/...` (leading depth axis) → `encoder/layers_{i}/...`; other entries unchanged."""
    out = {}
    for key, value in params.items():
        if not isinstance(value, Mapping):
            out[key] = value
        elif key == "layers" and "ln_1" in value:
            depth = np.shape(value["ln_1"]["scale"])[0]
            for i in range(depth):
                out[f"layers_{i}"] = _index(value, i)
        else:
            out[key] = unscan(value)
    return out


def scan(params: Mapping) -> dict:
    """Inverse of `unscan`: numbered `encoder/layers_{i}/...` → one `encoder/layers/...` stacked along a leading
    depth axis (the layout of `scan_layers=True`); other entries unchanged."""
    out, numbered = {}, {}
    for key, value in params.items():
        index = key.removeprefix("layers_")
        if isinstance(value, Mapping) and index.isdigit() and "ln_1" in value:
            numbered[int(index)] = value
        else:
            out[key] = scan(value) if isinstance(value, Mapping) else value
    if numbered:
        if sorted(numbered) != list(range(len(numbered))):
            raise ValueError(f"layers {sorted(numbered)} are not numbered 0..{len(numbered) - 1}")
        out["layers"] = _stack([numbered[i] for i in range(len(numbered))])
    return out


def _stack(trees: list[Mapping]) -> dict:
    return {key: _stack([tree[key] for tree in trees]) if isinstance(value, Mapping)
            else np.stack([np.asarray(tree[key]) for tree in trees]) for key, value in trees[0].items()}


def _index(tree: Mapping, i: int) -> dict:
    return {key: _index(value, i) if isinstance(value, Mapping) else np.asarray(value)[i]
            for key, value in tree.items()}


def to_numpy(params: Mapping) -> dict:
    """A nested dict of (possibly sharded) arrays → the same dict of NumPy arrays on the host."""
    return {key: to_numpy(value) if isinstance(value, Mapping) else np.asarray(value)
            for key, value in params.items()}
