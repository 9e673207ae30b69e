"""Shape checks that name the first parameter that does not fit, and config errors that name their file."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping

import flax.linen as nn
import numpy as np

from mmjax.models import TwoTowerConfig, abstract_params


def config_errors_name_the_file(parse: Callable) -> Callable:
    """Decorator for a config parser `parse(config, where, …)`: a ValueError it raises (e.g. a `TransformerSpec`
    whose heads do not split its width) starts with `where`, the file whose config asked for it, and a TypeError
    (a JSON value of the wrong type: `null` for a size, a list for a name) becomes such a ValueError too."""
    signature = inspect.signature(parse)

    @functools.wraps(parse)
    def parse_naming_the_file(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        where = bound.arguments["where"]
        try:
            return parse(*args, **kwargs)
        except ValueError as error:
            raise ValueError(str(error) if str(error).startswith(f"{where}: ") else f"{where}: {error}") from None
        except TypeError as error:
            raise ValueError(f"{where}: a value of the wrong type ({error})") from None

    return parse_naming_the_file


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested dict → `{"a/b/c": leaf}` in insertion order."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, object]) -> dict:
    """`{"a/b/c": leaf}` → nested dict."""
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def expected_shapes(config: TwoTowerConfig) -> dict[str, tuple[int, ...]]:
    """`{"image_encoder/…/kernel": shape}` of the parameters `config` needs (abstract init, nothing allocated)."""
    return {path: tuple(leaf.shape) for path, leaf in flatten(nn.unbox(abstract_params(config))).items()}


def source_shapes(export: Callable[[dict], Mapping[str, np.ndarray]],
                  config: TwoTowerConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a checkpoint format holds for `config`: the format's exporter (mmjax params →
    its tensors) run on zero-stride one-byte stand-ins of the parameters. Only what the exporter copies is
    allocated, at a byte an element (OpenCLIP's fused q/k/v projections: 1/16 of a float32 ViT's size)."""
    stand_ins = unflatten({path: np.broadcast_to(np.bool_(False), shape)
                           for path, shape in expected_shapes(config).items()})
    return {key: tuple(np.shape(value)) for key, value in export(stand_ins).items()}


def check_shapes(params: Mapping, expected: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Raises a one-line ValueError naming the first parameter of `params` (in the order the converter built
    them, i.e. the checkpoint's order) whose shape differs from `expected` or that the model does not use,
    else the first parameter of `expected` that `params` lacks."""
    flat = flatten(params)
    for path, value in flat.items():
        if path not in expected:
            raise ValueError(f"{where}: parameter {path} is not used by the model")
        if tuple(value.shape) != tuple(expected[path]):
            raise ValueError(f"{where}: parameter {path} has shape {tuple(value.shape)} "
                             f"but the config needs {tuple(expected[path])}")
    for path, shape in expected.items():
        if path not in flat:
            raise ValueError(f"{where}: parameter {path} {tuple(shape)} is missing")
