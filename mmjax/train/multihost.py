"""Starting JAX's multi-process runtime (`jax.distributed.initialize`) from the config or the environment.

Every process of a multi-host job runs the same `mmjax train`; they find each other
through a coordinator. Settings come from, in order:

1. the config: `config.distributed.coordinator_address` ("host:port"), `num_processes`, `process_id`;
2. the environment: `MMJAX_COORDINATOR_ADDRESS`, `MMJAX_NUM_PROCESSES`, `MMJAX_PROCESS_ID`, or JAX's
   `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`;
3. a managed cluster JAX detects by itself (Cloud TPU VMs and GKE TPU slices, SLURM, Open MPI,
   Kubernetes): `jax.distributed.initialize()` with no arguments.

With none of these, training runs in one process. `config.distributed.initialize` is `"auto"`
(the rules above), `"off"` (never) or `"on"` (always call it: with the settings when some are given, which
must then be all three, or with none, for JAX to detect the cluster).
On GPU and CPU (gloo collectives) give the coordinator explicitly; on a TPU slice nothing is needed.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import ml_collections

MODES = ("auto", "on", "off")


def default_settings() -> ml_collections.ConfigDict:
    """`config.distributed` as `base_config` makes it: "auto", nothing given ("" / 0 / -1)."""
    return ml_collections.ConfigDict(dict(initialize="auto", coordinator_address="", num_processes=0, process_id=-1))
ENV_NAMES = {
    "coordinator_address": ("MMJAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("MMJAX_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("MMJAX_PROCESS_ID", "JAX_PROCESS_ID"),
}


def explicit_settings(distributed: ml_collections.ConfigDict, environ: Mapping[str, str]) -> dict:
    """The coordinator settings given in the config (preferred) or the environment; `{}` when none is.

    Raises ValueError naming what is missing when some but not all three are given, or a value is malformed.
    """
    given = {"coordinator_address": distributed.coordinator_address or None,
             "num_processes": distributed.num_processes if distributed.num_processes > 0 else None,
             "process_id": distributed.process_id if distributed.process_id >= 0 else None}
    sources = {key: "config.distributed." + key for key, value in given.items() if value is not None}
    for key, names in ENV_NAMES.items():
        for name in names:
            if given[key] is None and environ.get(name):
                given[key], sources[key] = environ[name], name
    if all(value is None for value in given.values()):
        return {}
    missing = [" or ".join(("config.distributed." + key,) + ENV_NAMES[key]) for key, v in given.items() if v is None]
    if missing:
        got = ", ".join(sorted(sources.values()))
        raise ValueError(f"a multi-process run needs {', '.join(missing)} (got {got})")
    for key in ("num_processes", "process_id"):
        try:
            given[key] = int(given[key])
        except ValueError:
            raise ValueError(f"{sources[key]}={given[key]!r} is not an integer") from None
    if not 0 <= given["process_id"] < given["num_processes"] or ":" not in given["coordinator_address"]:
        raise ValueError(f"multi-process settings {given} need process_id in [0, num_processes) and a "
                         "coordinator address host:port")
    return given


def managed_cluster_detected() -> bool:
    """Whether JAX's own cluster detection (TPU VM, SLURM, Open MPI, Kubernetes) finds an environment."""
    from jax._src import clusters

    for env in clusters.ClusterEnv._cluster_types:
        try:
            if not env.opt_in_only_method and env.is_env_present():
                return True
        except NotImplementedError:
            continue
    return False


def initialize_distributed(distributed: ml_collections.ConfigDict, environ: Mapping[str, str] | None = None) -> bool:
    """Call `jax.distributed.initialize` when the config, the environment or the cluster asks for it.

    Must run before anything touches a JAX device. Returns whether JAX runs multi-process
    (also when the caller had already initialised it). Raises ValueError for a bad mode or settings.
    """
    if distributed.initialize not in MODES:
        raise ValueError(f"config.distributed.initialize={distributed.initialize!r} must be one of {MODES}")
    if jax.distributed.is_initialized():
        return True
    if distributed.initialize == "off":
        return False
    settings = explicit_settings(distributed, os.environ if environ is None else environ)
    if settings or distributed.initialize == "on" or managed_cluster_detected():
        jax.distributed.initialize(**settings)
        return True
    return False
