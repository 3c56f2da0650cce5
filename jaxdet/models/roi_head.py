"""RoI heads: pooled RoI features -> per-RoI vectors -> class scores and class-specific deltas.

A box head maps pooled features [..., ph, pw, C] to vectors [..., D]: `FCHead` (VGG16's fc6
and fc7, 4096 wide) or `ResNetC5Head` (the res5 stage on the pooled features, then global
average pooling: the C4 head of He et al. 2016, detectron2's Res5ROIHeads). `BoxPredictor` then
gives K + 1 class logits (background = 0) and (K + 1) x 4 deltas. `FastRCNN` and `FasterRCNN`
share them.
"""

import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones import ResStage

Dtype = Any


class HeadOutputs(NamedTuple):
    """logits: [..., R, K + 1] (0 = background); deltas: [..., R, K + 1, 4] normalised by the box stds."""

    logits: jax.Array
    deltas: jax.Array


class FCHead(nn.Module):
    """Flatten, then fully connected layers with ReLU (and dropout in training).

    The flatten order is (ph, pw, C) of NHWC; `jaxdet.models.weights` permutes torchvision's
    (C, ph, pw) fc6 accordingly.

    Attributes:
      hidden: widths, named fc6, fc7, ... (VGG16: (4096, 4096)).
      dropout_rate: dropout after each ReLU in training (0.5 in VGG16's classifier); needs a
        "dropout" rng when > 0 and train=True.
      dtype: computation dtype.
      dense: the fully connected layer, called as `nn.Dense` (default); `xla_ops.amx.layers_for` chooses.
    """

    hidden: Sequence[int] = (4096, 4096)
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    dense: Any = nn.Dense

    @nn.compact
    def __call__(self, pooled: jax.Array, train: bool = False) -> jax.Array:
        """pooled: [..., ph, pw, C] -> [..., hidden[-1]]."""
        x = pooled.reshape(*pooled.shape[:-3], -1)
        for i, width in enumerate(self.hidden):
            x = nn.relu(self.dense(width, dtype=self.dtype, name=f"fc{i + 6}")(x))
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return x


class ResNetC5Head(nn.Module):
    """res5 (stride `strides`) on pooled features, then global average pooling.

    Attributes:
      num_blocks: bottlenecks in res5 (3 for ResNet-50/101).
      width: the backbone's stem width (64); res5 has 8 * width bottleneck channels and
        32 * width outputs (2048).
      strides: 2 when RoIs are pooled to 14x14 (Detectron's C4), 1 for 7x7.
      conv: the convolution layer, called as `nn.Conv` (default); `xla_ops.amx.layers_for` chooses.
    """

    num_blocks: int = 3
    width: int = 64
    strides: int = 2
    dtype: Dtype = jnp.float32
    conv: Any = nn.Conv

    @nn.compact
    def __call__(self, pooled: jax.Array, train: bool = False) -> jax.Array:
        """pooled: [..., ph, pw, C] -> [..., 32 * width]."""
        del train
        lead = pooled.shape[:-3]
        x = pooled.reshape(-1, *pooled.shape[-3:])  # [R, ph, pw, C]
        x = ResStage(self.num_blocks, 8 * self.width, self.strides, dtype=self.dtype, conv=self.conv, name="res5")(x)
        return jnp.mean(x, axis=(1, 2)).reshape(*lead, -1)


ResNet50C5Head = functools.partial(ResNetC5Head, num_blocks=3)
TinyResNetC5Head = functools.partial(ResNetC5Head, num_blocks=1, width=8)


class BoxPredictor(nn.Module):
    """Sibling linear layers: K + 1 class logits and (K + 1) x 4 class-specific deltas.

    Initialised N(0, 0.01) and N(0, 0.001) with zero bias, as the reference implementations.
    Outputs are float32 whatever the computation dtype, so losses are computed in float32.

    Attributes:
      num_classes: K, the object classes (background excluded).
      dense: the fully connected layer, called as `nn.Dense` (default); `xla_ops.amx.layers_for` chooses.
    """

    num_classes: int
    dtype: Dtype = jnp.float32
    dense: Any = nn.Dense

    @nn.compact
    def __call__(self, x: jax.Array) -> HeadOutputs:
        """x: [..., D] -> HeadOutputs(logits [..., K + 1], deltas [..., K + 1, 4])."""
        k1 = self.num_classes + 1
        logits = self.dense(k1, dtype=self.dtype, name="cls_score",
                            kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros)(x)
        deltas = self.dense(4 * k1, dtype=self.dtype, name="bbox_pred",
                            kernel_init=nn.initializers.normal(0.001), bias_init=nn.initializers.zeros)(x)
        return HeadOutputs(logits.astype(jnp.float32), deltas.reshape(*x.shape[:-1], k1, 4).astype(jnp.float32))
