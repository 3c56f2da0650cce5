"""A trained detector: the model and its variables, restored from a run's checkpoint for detection.

`restore_trained(config, workdir)` builds the config's model (`jaxdet.models.build_model`), checks
the checkpoint's shapes against it (`jaxdet.checkpoint_format.check_fits`: a checkpoint of another
model is named by the config keys that differ from the run's) and restores the checkpoint's
"params" and "model_state" on this process's first device; the optimizer's state, which training
saved with them, is never read. A training run's final state serves as a `TrainedDetector` as it
is (`jaxdet.training.TrainState` has the same `model`, `variables` and `step`).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections
from flax import struct

from jaxdet import checkpoint_format
from jaxdet.models.build import build_model, init_variables

VARIABLES = ("params", "model_state")  # the parts of a checkpoint's arrays detection reads


class TrainedDetector(struct.PyTreeNode):
    """What detection reads of a trained run.

    variables: {"params": ..., **model_state}, what `model.apply` takes.
    step: int32 scalar, the checkpoint's step.
    """

    variables: Any
    step: jax.Array
    model: nn.Module = struct.field(pytree_node=False)

    @property
    def params(self):
        return self.variables["params"]


def restore_trained(config: ml_collections.ConfigDict, workdir: str, *,
                    step: Optional[int] = None) -> TrainedDetector:
    """The detector of the checkpoint of a run in `workdir` (the latest if `step` is None), its arrays
    on this process's first device.

    Raises:
      FileNotFoundError: workdir has no checkpoint (or not that step: the message lists those there).
      CheckpointMismatch: the checkpoint does not fit the config's model.
    """
    model = build_model(config)
    shapes = dict(jax.eval_shape(lambda key: init_variables(model, key), jax.random.key(0)))
    wanted = {"params": shapes.pop("params"), "model_state": shapes}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    manager, step = checkpoint_format.open_run(workdir, step)
    try:
        checkpoint_format.check_fits(manager, step, wanted, config, workdir)
        target = checkpoint_format.stored_arrays(manager, step, device)
        arrays, _ = checkpoint_format.restore_arrays(manager, step, target)
    finally:
        manager.close()
    return TrainedDetector(variables={"params": arrays["params"], **arrays.get("model_state", {})},
                           step=arrays["step"], model=model)
