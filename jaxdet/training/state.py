"""The train state: `create_train_state(config, key)` builds the model (`jaxdet.models.build`), its
variables (pretrained weights where the config names them), the optimizer and the settings.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from jaxdet.models.build import build_model, initial_variables
from jaxdet.settings import DetectorSettings, OptimizerSettings
from jaxdet.training.optimizer import make_optimizer

class TrainState(struct.PyTreeNode):
    """Everything a training step reads and writes; the static fields are not checkpointed.

    step: int32 scalar, the number of updates done.
    params: the "params" collection of the model (float32).
    model_state: the other variable collections, e.g. {"batch_stats": ...} (constant in training).
    opt_state: the optax state.
    rng: the run's PRNG key as raw uint32 data; step i draws with `fold_in(rng, i)`
      (`jaxdet.training.step.step_key`).
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    rng: jax.Array
    model: nn.Module = struct.field(pytree_node=False)
    settings: DetectorSettings = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    learning_rate_fn: Callable = struct.field(pytree_node=False)

    @property
    def variables(self):
        """{"params": ..., **model_state}, what `model.apply` takes."""
        return {"params": self.params, **self.model_state}


@dataclasses.dataclass(frozen=True)
class FrozenStages:
    """(parameter path) -> whether it belongs to a frozen stage of `backbone`; hashable by value."""

    backbone: nn.Module
    scope: str = "backbone"  # the backbone's parameters' top-level name ("body": a ResNet-FPN model's trunk)

    def __call__(self, path: tuple) -> bool:
        return len(path) > 1 and path[0] == self.scope and self.backbone.is_frozen(path[1])


def frozen_stages(model: nn.Module) -> FrozenStages:
    """The FrozenStages of `model`: its `backbone`'s, or a ResNet-FPN model's trunk ("body", `trainable_layers`)."""
    return FrozenStages(model, "body") if not hasattr(model, "backbone") else FrozenStages(model.backbone)


def create_train_state(config: ml_collections.ConfigDict, key: jax.Array) -> TrainState:
    """A fresh TrainState for `config`: model variables (pretrained weights from
    `config.model.pretrained` when set), optimizer, settings, and the run key.

    Args:
      config: an experiment config (`jaxdet.configs`).
      key: PRNG key (`jax.random.key` or `PRNGKey`); split into the initialisation key and the
        run key (stored as raw key data).
    """
    model = build_model(config)
    init_key, run_key = jax.random.split(key)
    if jnp.issubdtype(run_key.dtype, jax.dtypes.prng_key):
        # Kept as raw uint32 data: checkpoints then hold a plain array, whichever key style the caller uses.
        run_key = jax.random.key_data(run_key)
    variables = initial_variables(config, model, init_key)
    params = variables.pop("params")
    tx, schedule = make_optimizer(OptimizerSettings.from_config(config), frozen_stages(model))
    arrays = dict(step=jnp.zeros((), jnp.int32), params=params, model_state=variables, opt_state=tx.init(params),
                  rng=run_key)
    # Committed to the default device, as restored checkpoints are: the step compiled for a fresh
    # state then serves a restored one (jit compiles anew when only the commitment differs).
    arrays = jax.device_put(arrays, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    return TrainState(**arrays, model=model, settings=DetectorSettings.from_config(config), tx=tx,
                      learning_rate_fn=schedule)
