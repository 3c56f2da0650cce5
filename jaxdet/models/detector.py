"""Fast and Faster R-CNN: a backbone, (an RPN,) RoI max pooling or RoIAlign and a shared RoI head.

The modules hold parameters, wiring and the box coding of their outputs only; target
assignment, sampling, proposals and losses are the pure functions of `jaxdet.targets`,
`jaxdet.proposals` and `jaxdet.losses`, put together by
`jaxdet.training.step` (training) and `jaxdet.inference` (detection). Each stage is a method,
so a script calls `model.apply(variables, images, method=model.extract)` and so on:

  extract(images [N, H, W, 3], train) -> features [N, h, w, C]       (h = H // stride, ...)
  rpn_outputs(features) -> RPNOutputs(logits [N, h*w*A, 2], deltas [N, h*w*A, 4])   (Faster only)
  classify(features, rois [N, R, 4] xyxy input pixels, train) -> HeadOutputs(
      logits [N, R, K + 1], deltas [N, R, K + 1, 4])

`anchors(feature_hw)` and `box_stds` need no parameters: they are read from the unbound module.
"""

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.ops import roi_align, roi_pool
from jaxdet.ops.anchors import anchor_grid
from jaxdet.models.roi_head import BoxPredictor, HeadOutputs
from jaxdet.models.rpn import RPNHead, RPNOutputs

Dtype = Any


class FastRCNN(nn.Module):
    """Fast R-CNN (Girshick 2015): RoIs come from outside (selective search, a saved RPN).

    Attributes:
      backbone: a module of `jaxdet.models.backbones` (has `stride`, `is_frozen`).
      box_head: pooled features [..., ph, pw, C] -> [..., D] (`FCHead`, `ResNetC5Head`).
      num_classes: K object classes; the head predicts K + 1 with background = 0.
      pooled_size: (ph, pw) of RoI pooling (7x7 for VGG16's fc6).
      roi_op: "pool" (RoI max pooling, Girshick 2015) or "align" (RoIAlign, He et al. 2017:
        bilinear samples averaged per bin, as torchvision's and detectron2's default heads).
      roi_rounding: the RoI pooling op's `rounding` ("none": coordinates scaled without
        rounding; "round": Caffe / torchvision); pooling only.
      roi_sampling_ratio, roi_aligned: RoIAlign's `sampling_ratio` (samples per bin along each
        axis; <= 0: adaptive) and `aligned` (half-pixel offset); RoIAlign only.
      box_stds: the coding of the head's class-specific deltas: (tx, ty, tw, th) divided by
        these (Girshick 2015's normalised regression targets; py-faster-rcnn's
        BBOX_NORMALIZE_STDS, the inverses of torchvision's box coder weights (10, 10, 5, 5)).
        Training encodes the head's targets and detection decodes its deltas with them.
      dtype: computation dtype of the RPN and the predictor (backbone and box head carry their own).
      conv, dense: the layers of the RPN and the predictor, called as `nn.Conv` and `nn.Dense`
        (the defaults); `xla_ops.amx.layers_for` chooses.
    """

    backbone: nn.Module
    box_head: nn.Module
    num_classes: int
    pooled_size: Tuple[int, int] = (7, 7)
    roi_op: str = "pool"
    roi_rounding: str = "none"
    roi_sampling_ratio: int = 2
    roi_aligned: bool = False
    box_stds: Tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    dtype: Dtype = jnp.float32
    conv: Any = nn.Conv
    dense: Any = nn.Dense

    def setup(self):
        self.predictor = BoxPredictor(self.num_classes, dtype=self.dtype, dense=self.dense)

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def extract(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images: [N, H, W, 3] -> features [N, h, w, C]."""
        return self.backbone(images, train)

    def classify(self, features: jax.Array, rois: jax.Array, train: bool = False) -> HeadOutputs:
        """features: [N, h, w, C], rois: [N, R, 4] xyxy input pixels -> HeadOutputs for [N, R].

        Gradients reach `features` through the RoI op's custom VJP; none reach `rois`.
        """
        pooled = self.pool_rois(features, jax.lax.stop_gradient(rois))  # [N, R, ph, pw, C]
        return self.predictor(self.box_head(pooled, train))

    def pool_rois(self, features: jax.Array, rois: jax.Array) -> jax.Array:
        """features: [N, h, w, C], rois: [N, R, 4] xyxy input pixels -> [N, R, ph, pw, C] by `roi_op`."""
        scale, size = 1.0 / self.stride, tuple(self.pooled_size)
        if self.roi_op == "pool":
            return roi_pool(features, rois, output_size=size, spatial_scale=scale, rounding=self.roi_rounding)
        if self.roi_op == "align":
            return roi_align(features, rois, size, scale, self.roi_sampling_ratio, self.roi_aligned)
        raise ValueError(f"model.roi_op must be 'pool' or 'align', got {self.roi_op!r}")

    def __call__(self, images: jax.Array, rois: jax.Array, train: bool = False) -> HeadOutputs:
        """images: [N, H, W, 3], rois: [N, R, 4] -> HeadOutputs (logits [N, R, K + 1], deltas [N, R, K + 1, 4])."""
        return self.classify(self.extract(images, train), rois, train)


class FasterRCNN(FastRCNN):
    """Faster R-CNN (Ren et al. 2015): Fast R-CNN whose RoIs come from a region proposal network.

    Attributes (beyond FastRCNN's):
      anchor_scales: anchor sizes in units of the backbone stride (8, 16, 32 for VGG16).
      anchor_ratios: height / width ratios.
      rpn_channels: width of the RPN's 3x3 conv.
    """

    anchor_scales: Sequence[float] = (8, 16, 32)
    anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    rpn_channels: int = 512

    def setup(self):
        super().setup()
        self.rpn = RPNHead(self.num_anchors, self.rpn_channels, dtype=self.dtype, conv=self.conv)

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_scales) * len(self.anchor_ratios)

    def anchors(self, feature_hw: Tuple[int, int]) -> jax.Array:
        """feature_hw: static (h, w) -> anchors [h * w * A, 4] xyxy input pixels, in RPN output order."""
        return anchor_grid(tuple(int(n) for n in feature_hw), stride=self.stride,
                           scales=tuple(self.anchor_scales), ratios=tuple(self.anchor_ratios))

    def rpn_outputs(self, features: jax.Array) -> RPNOutputs:
        """features: [N, h, w, C] -> RPNOutputs(logits [N, h*w*A, 2], deltas [N, h*w*A, 4])."""
        return self.rpn(features)

    def __call__(self, images: jax.Array, rois: jax.Array, train: bool = False) -> Tuple[RPNOutputs, HeadOutputs]:
        """images: [N, H, W, 3], rois: [N, R, 4] -> (RPNOutputs, HeadOutputs); used by `init`."""
        features = self.extract(images, train)
        return self.rpn_outputs(features), self.classify(features, rois, train)
