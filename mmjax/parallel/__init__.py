"""Device mesh, logical-axis rules and shardings."""

from mmjax.parallel.mesh import (BATCH_AXES, DEFAULT_RULES, MESH_AXES, batch_sharding, batch_size_multiple,
                                 check_tensor_split, logical_shardings, make_mesh, replicated)

__all__ = ["BATCH_AXES", "DEFAULT_RULES", "MESH_AXES", "batch_sharding", "batch_size_multiple",
           "check_tensor_split", "logical_shardings", "make_mesh", "replicated"]
