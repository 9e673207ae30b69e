"""The device mesh, logical-axis rules and the shardings they imply.

One mesh with axes `("data", "fsdp", "tensor")`. Models name logical axes
(`mmjax.models.axes`); `DEFAULT_RULES` maps them to mesh axes. Data parallel,
FSDP and tensor parallel are the same code with a different mesh shape: an
axis of size 1 shards nothing.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax.models import axes

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, Any]]

DEFAULT_RULES: Rules = (
    (axes.BATCH, BATCH_AXES),
    (axes.EMBED, "fsdp"),
    (axes.MLP, "tensor"),
    (axes.HEADS, "tensor"),
    (axes.VOCAB, "tensor"),
    (axes.HEAD_DIM, None),
    (axes.PROJ, None),
    (axes.LAYERS, None),
    (axes.NORM, None),
    (axes.POSITION, None),
    (axes.LENGTH, None),
    (axes.ACT_EMBED, None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh `data × fsdp × tensor` over `devices` (all devices by default).

    One of the sizes may be -1: it takes the devices the others leave.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes data={data} fsdp={fsdp} tensor={tensor}: use positive sizes and at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh fsdp×tensor×data = {known} does not divide the {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh data={sizes[0]} × fsdp={sizes[1]} × tensor={sizes[2]} = {math.prod(sizes)} "
                         f"devices, but {len(devices)} are available")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def batch_size_multiple(mesh: Mesh) -> int:
    """The global batch must be a multiple of this (the devices the batch is split over)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over `data × fsdp`, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_tensor_split(model_config, mesh: Mesh) -> None:
    """A one-line ValueError when the mesh's `tensor` axis does not divide each tower's heads and MLP width
    (FLAVA's multimodal encoder included): those weights would stay whole on every device (correct, but neither
    split nor smaller)."""
    ways = mesh.shape.get("tensor", 1)
    for tower in ("vision", "text", "multimodal"):
        spec = getattr(model_config, tower, None)
        if spec is None:
            continue
        for what, size in (("heads", spec.num_heads), ("MLP width", spec.mlp_dim)):
            if size % ways:
                raise ValueError(f"mesh tensor={ways} does not divide the {tower} tower's {size} {what}: tensor "
                                 f"parallelism would split nothing there; use a tensor size that divides "
                                 f"{spec.num_heads} and {spec.mlp_dim}")


def _mesh_spec(shape: Sequence[int], logical: P, mesh: Mesh, rules: Rules) -> P:
    """Physical spec for one array; a dimension its mesh axes do not divide stays replicated."""
    physical = nn.logical_to_mesh_axes(tuple(logical), rules)
    dims = []
    for size, mesh_axes in zip(shape, tuple(physical) + (None,) * (len(shape) - len(physical))):
        names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        ways = math.prod(mesh.shape[n] for n in names)
        dims.append(mesh_axes if names and size % ways == 0 else None)
    return P(*dims)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """NamedShardings for a tree of (abstract) arrays boxed with logical axis names.

    Leaves without names (e.g. scalars, optimizer counters) are replicated.
    """
    specs = nn.get_partition_spec(boxed_tree)
    # the shapes only: `nn.unbox` would also apply each leaf's sharding constraint under a mesh and logical rules,
    # which fails on the abstract leaves of `jax.eval_shape`
    shapes = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
                          boxed_tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, _mesh_spec(np.shape(leaf), spec, mesh, rules)),
        specs, shapes, is_leaf=lambda x: isinstance(x, P),
    )
