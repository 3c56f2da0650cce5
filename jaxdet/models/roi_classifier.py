"""Classifying RoIs on their own: RoI max pooling, a head, and a dense classifier.

The two places the RoI pooling layer takes in a classifier (Girshick 2015, Sec. 2; Apache
MXNet Gluon's RoIPooling example shows both on a batch of two 128x128 images):
  * R-CNN style (Girshick et al. 2014): the RoIs are pooled from the images themselves
    (`trunk=None`, spatial scale 1, e.g. 64x64 crops of RGB) and every crop goes through a
    classification network (`GlobalPoolHead(trunk=...)`).
  * Fast R-CNN style: the RoIs are pooled from the last features of a trunk (e.g.
    `jaxdet.models.ResNet34`, stride 32, 4x4 bins at spatial scale 1/32), then global average
    pooling (`GlobalPoolHead()`) and the dense layer.
`GlobalPoolHead` is also a box head for `jaxdet.models.FastRCNN`, which adds box regression and
the detection losses to the same pooling.
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.ops import roi_pool

Dtype = Any


class GlobalPoolHead(nn.Module):
    """Pooled RoI features [K, ph, pw, C] (or [..., ph, pw, C]) -> [..., D]: an optional
    convolutional `trunk` on each pooled RoI (R-CNN style, on image crops), then global average
    pooling over the bins.

    Attributes:
      trunk: images [K, h, w, C] -> features [K, h', w', D] (a `jaxdet.models` backbone), or
        None: D = C.
    """

    trunk: Optional[nn.Module] = None

    @nn.compact
    def __call__(self, pooled: jax.Array, train: bool = False) -> jax.Array:
        if self.trunk is not None:
            lead = pooled.shape[:-3]
            pooled = self.trunk(pooled.reshape(-1, *pooled.shape[-3:]), train)
            pooled = pooled.reshape(*lead, *pooled.shape[-3:])
        return pooled.mean(axis=(-3, -2))


class RoIClassifier(nn.Module):
    """images [N, H, W, 3] and rois [K, 5] (batch_index, x1, y1, x2, y2 in image pixels) ->
    class logits [K, num_classes].

    Attributes:
      num_classes: outputs per RoI (e.g. 10 categories and one "no object").
      head: pooled features [K, ph, pw, C] -> [K, D] (`GlobalPoolHead`, `jaxdet.models.FCHead`).
      trunk: images -> features with a `stride` (a `jaxdet.models` backbone); None pools the
        images themselves (R-CNN style).
      pooled_size: (ph, pw) of RoI pooling.
      rounding: RoI pooling's `rounding` ("none", "round" or "adaptive"; see `xla_ops.roi_pool`).
      dtype: computation dtype of the classifier layer.
    """

    num_classes: int
    head: nn.Module
    trunk: Optional[nn.Module] = None
    pooled_size: Tuple[int, int] = (4, 4)
    rounding: str = "none"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, rois: jax.Array, train: bool = False) -> jax.Array:
        features = images if self.trunk is None else self.trunk(images, train)
        scale = 1.0 if self.trunk is None else 1.0 / self.trunk.stride
        pooled = roi_pool(features, jax.lax.stop_gradient(rois), output_size=tuple(self.pooled_size),
                          spatial_scale=scale, rounding=self.rounding)  # [K, ph, pw, C]
        return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(self.head(pooled, train))
