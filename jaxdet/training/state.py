"""The train state and how a config builds the model, the settings and the optimizer.

`create_train_state(config, key)` is the one entry point; `build_model` (and
`jaxdet.settings.DetectorSettings.from_config`) expose the pieces for scripts that need only
some of them (evaluation, prediction from a checkpoint).
"""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from jaxdet.models import backbones, roi_head
from jaxdet.models.detector import FastRCNN, FasterRCNN
from jaxdet.settings import DetectorSettings, OptimizerSettings
from jaxdet.training.inputs import model_num_classes
from jaxdet.training.optimizer import make_optimizer
from jaxdet.training.weights import load_pretrained

# name -> (backbone, the res5 head that continues it).
BACKBONES = {
    "vgg16": (backbones.VGG16, None),
    "vgg16_bn": (backbones.VGG16BN, None),
    "tiny_vgg": (backbones.TinyVGG, None),
    "resnet50_c4": (backbones.ResNet50C4, roi_head.ResNet50C5Head),
    "resnet101_c4": (backbones.ResNet101C4, roi_head.ResNet50C5Head),
    "resnet152_c4": (backbones.ResNet152C4, roi_head.ResNet50C5Head),
    "tiny_resnet_c4": (backbones.TinyResNetC4, roi_head.TinyResNetC5Head),
}
DETECTORS = {"faster_rcnn": FasterRCNN, "fast_rcnn": FastRCNN}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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


def _choice(name: str, value: str, choices) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return choices[value]


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The detector of `config.model`: kind, backbone, frozen_stages, num_classes (0: as many as the
    config's class list, `jaxdet.training.inputs.model_num_classes`), anchor_scales, anchor_ratios,
    rpn_channels, pooled_size, roi_rounding, head_hidden, dropout_rate, compute_dtype."""
    m = config.model
    dtype = _choice("model.compute_dtype", m.compute_dtype, DTYPES)
    backbone_cls, res5_cls = _choice("model.backbone", m.backbone, BACKBONES)
    backbone = backbone_cls(frozen_stages=m.frozen_stages, dtype=dtype)
    if res5_cls is None:
        box_head = roi_head.FCHead(hidden=tuple(m.head_hidden), dropout_rate=m.dropout_rate, dtype=dtype)
    else:
        # Detectron's C4: res5 halves 14x14 pooled RoIs to 7x7; with 7x7 pooling it keeps stride 1.
        box_head = res5_cls(strides=2 if min(m.pooled_size) >= 14 else 1, dtype=dtype)
    common = dict(backbone=backbone, box_head=box_head, num_classes=model_num_classes(config),
                  pooled_size=tuple(m.pooled_size), roi_rounding=m.roi_rounding,
                  box_stds=tuple(config.roi.box_stds), dtype=dtype)
    kind = _choice("model.kind", m.kind, DETECTORS)
    if kind is FastRCNN:
        return FastRCNN(**common)
    return FasterRCNN(**common, anchor_scales=tuple(m.anchor_scales), anchor_ratios=tuple(m.anchor_ratios),
                      rpn_channels=m.rpn_channels)


@functools.partial(jax.jit, static_argnums=0)
def init_variables(model: nn.Module, key: jax.Array) -> dict:
    """Freshly initialised variables of `model` (parameter shapes do not depend on the image size)."""
    size = 4 * model.stride
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    rois = jnp.array([[[0.0, 0.0, size - 1.0, size - 1.0]]], jnp.float32)
    return model.init(key, images, rois)


@dataclasses.dataclass(frozen=True)
class FrozenStages:
    """(parameter path) -> whether it belongs to a frozen stage of `backbone`; hashable by value."""

    backbone: nn.Module

    def __call__(self, path: tuple) -> bool:
        return len(path) > 1 and path[0] == "backbone" and self.backbone.is_frozen(path[1])


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
    variables = dict(init_variables(model, init_key))
    if config.model.pretrained:
        variables = load_pretrained(config.model.pretrained, variables,
                                    include_fc="fc6" in variables["params"]["box_head"])
    params = variables.pop("params")
    tx, schedule = make_optimizer(OptimizerSettings.from_config(config), FrozenStages(model.backbone))
    arrays = dict(step=jnp.zeros((), jnp.int32), params=params, model_state=variables, opt_state=tx.init(params),
                  rng=run_key)
    # Committed to the default device, as restored checkpoints are: the step compiled for a fresh
    # state then serves a restored one (jit compiles anew when only the commitment differs).
    arrays = jax.device_put(arrays, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    return TrainState(**arrays, model=model, settings=DetectorSettings.from_config(config), tx=tx,
                      learning_rate_fn=schedule)
