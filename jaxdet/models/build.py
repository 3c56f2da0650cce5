"""How a config builds a detector: `build_model(config)` picks the backbone, the box head and the
detector of `config.model`; `initial_variables(config, model, key)` gives the variables training
starts from: freshly initialised (`init_variables`), with the pretrained weights of
`config.model.pretrained` where it names a file (`jaxdet.models.weights`).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxdet.data.build import declared_class_names, model_num_classes
from jaxdet.models import backbones, roi_head
from jaxdet.models.detector import FastRCNN, FasterRCNN
from jaxdet.models.fpn_detector import model_from_config as fpn_model_from_config
from jaxdet.models.torch_checkpoint import load_state_dict
from jaxdet.models.torchvision_detection import variables_from_state_dict
from jaxdet.models.weights import load_pretrained
from xla_ops.amx import layers_for

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
FPN_KIND = "faster_rcnn_fpn"  # torchvision's ResNet-FPN detectors (jaxdet.models.fpn_detector), their own config fields
ROI_OPS = ("pool", "align")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _choice(name: str, value: str, choices) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return choices[value]


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The detector of `config.model`: kind, backbone, frozen_stages, num_classes (0: as many as the
    config's class list, `jaxdet.data.build.model_num_classes`), anchor_scales, anchor_ratios,
    rpn_channels, pooled_size, roi_op, roi_rounding, roi_sampling_ratio, roi_aligned, head_hidden,
    dropout_rate, compute_dtype, cpu_bf16_kernels (the layers: flax's nn.Conv / nn.Dense, or `xla_ops.amx`'s where it opts in
    and can run them: `xla_ops.amx.layers_for`)."""
    m = config.model
    if m.kind == FPN_KIND:
        return fpn_model_from_config(m, num_classes=model_num_classes(config) if int(m.num_classes) or
                                     declared_class_names(config) else None)
    if m.roi_op not in ROI_OPS:
        raise ValueError(f"model.roi_op must be one of {ROI_OPS}, got {m.roi_op!r}")
    dtype = _choice("model.compute_dtype", m.compute_dtype, DTYPES)
    conv, dense = layers_for(dtype, cpu_bf16_kernels=m.cpu_bf16_kernels)
    backbone_cls, res5_cls = _choice("model.backbone", m.backbone, BACKBONES)
    backbone = backbone_cls(frozen_stages=m.frozen_stages, dtype=dtype, conv=conv)
    if res5_cls is None:
        box_head = roi_head.FCHead(hidden=tuple(m.head_hidden), dropout_rate=m.dropout_rate, dtype=dtype, dense=dense)
    else:
        # Detectron's C4: res5 halves 14x14 pooled RoIs to 7x7; with 7x7 pooling it keeps stride 1.
        box_head = res5_cls(strides=2 if min(m.pooled_size) >= 14 else 1, dtype=dtype, conv=conv)
    common = dict(backbone=backbone, box_head=box_head, num_classes=model_num_classes(config),
                  pooled_size=tuple(m.pooled_size), roi_op=m.roi_op,
                  roi_rounding=m.roi_rounding, roi_sampling_ratio=int(m.roi_sampling_ratio),
                  roi_aligned=bool(m.roi_aligned),
                  box_stds=tuple(config.roi.box_stds), dtype=dtype, conv=conv, dense=dense)
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


def initial_variables(config: ml_collections.ConfigDict, model: nn.Module, key: jax.Array) -> dict:
    """`init_variables(model, key)`, the backbone's (and with a VGG16 the fc6/fc7 head's) replaced by
    the pretrained weights of `config.model.pretrained` when it names a file.

    Raises:
      WeightsError: the file does not fit the model.
    """
    if config.model.kind == FPN_KIND:
        return _fpn_initial_variables(config, model, key)
    variables = dict(init_variables(model, key))
    if config.model.pretrained:
        variables = load_pretrained(config.model.pretrained, variables,
                                    include_fc="fc6" in variables["params"]["box_head"])
    return variables


def keeps_pretrained_predictor(config: ml_collections.ConfigDict) -> bool:
    """Whether an FPN config's classes (`data.classes`) are its weights file's (`model.pretrained_classes`),
    so the file's box predictor is kept; otherwise new class layers are made for them."""
    return tuple(config.data.classes) == tuple(config.model.pretrained_classes)


def _fpn_initial_variables(config: ml_collections.ConfigDict, model: nn.Module, key: jax.Array) -> dict:
    """An `FPNFasterRCNN`'s variables: fresh, or torchvision's detection state dict of `model.pretrained`
    imported whole, the box predictor too when `keeps_pretrained_predictor` (then nothing is computed
    for initialisation), else initialised afresh for the config's classes.

    Raises:
      WeightsMismatch: the file does not fit the model (names or shapes, all listed).
    """
    if not config.model.pretrained:
        return dict(init_variables(model, key))
    keep = keeps_pretrained_predictor(config)
    template = jax.eval_shape(lambda k: init_variables(model, k), key) if keep else init_variables(model, key)
    variables = variables_from_state_dict(load_state_dict(config.model.pretrained), template,
                                          pooled_channels=model.fpn_channels, include_predictor=keep)
    return jax.tree.map(jnp.asarray, variables)
