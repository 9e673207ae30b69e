"""The train state pytree and its sharded creation on a mesh."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mmjax.models import Flava, TwoTower, example_inputs
from mmjax.parallel import DEFAULT_RULES, logical_shardings


@flax.struct.dataclass
class TrainState:
    """`step` (int32 scalar), `params` and `opt_state` (pytrees of arrays)."""

    step: jax.Array
    params: Any
    opt_state: Any


def _init_boxed(model: TwoTower | Flava, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    images, tokens = example_inputs(model.config)
    params = model.init(rng, images, tokens)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_shardings(model: TwoTower | Flava, tx: optax.GradientTransformation, mesh: Mesh,
                    rules=DEFAULT_RULES) -> TrainState:
    """NamedShardings of every leaf of the train state, from an abstract init
    (parameters and the optimizer moments follow the parameters' logical axes)."""
    abstract = jax.eval_shape(lambda rng: _init_boxed(model, tx, rng), jax.random.key(0))
    return logical_shardings(abstract, mesh, rules)


def create_train_state(model: TwoTower | Flava, tx: optax.GradientTransformation, rng: jax.Array,
                       shardings: TrainState) -> TrainState:
    """Initialise the state directly in its sharded layout (no host copy of the full model)."""
    init = jax.jit(lambda key: nn.unbox(_init_boxed(model, tx, key)), out_shardings=shardings)
    return init(rng)


def train_state_from_params(params, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """The state at step 0 around given (placed) parameters, with a fresh optimizer state in its sharded layout."""
    init = jax.jit(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)),
                   out_shardings=shardings)
    return init(params)


def abstract_train_state(shardings: TrainState, model: TwoTower | Flava,
                         tx: optax.GradientTransformation) -> TrainState:
    """ShapeDtypeStructs carrying the target shardings, for restoring a checkpoint."""
    abstract = jax.eval_shape(lambda rng: nn.unbox(_init_boxed(model, tx, rng)), jax.random.key(0))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
