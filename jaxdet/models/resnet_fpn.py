"""ResNet-50 as torchvision's detection models use it: frozen batch norm, `trainable_layers`, C2-C5.

`ResNetBody` is torchvision's `resnet50` trunk (He et al. 2016, v1.5: the stride on the 3x3
conv of a bottleneck) without its pooling and classifier, returning the outputs of layer1-layer4
(C2-C5, strides 4, 8, 16, 32; 256, 512, 1024, 2048 channels) for the feature pyramid of
`jaxdet.models.fpn`. Convolutions pad explicitly as torch does (3 for the 7x7 stem, 1 for 3x3;
flax's "SAME" would pad stride-2 layers only at the bottom/right), the 3x3/2 max pool pads 1 with
-inf. Parameter names follow torchvision's (`conv1`, `bn1`, `layer1/block0/conv1`, ...,
`downsample_conv`, `downsample_bn`) so `jaxdet.models.torchvision_detection` maps a state dict
one name to one name.

Batch norm is `FrozenBatchNorm2d`: `x * scale + shift` with `scale = weight * rsqrt(var + eps)`
and `shift = bias - mean * scale`, torchvision's `ops.misc.FrozenBatchNorm2d` formula. Its
statistics (and, with `affine_trainable=False`, its weight and bias: buffers in torchvision)
live in the "batch_stats" collection and are never trained. torchvision's COCO
`fasterrcnn_resnet50_fpn` runs it with eps 0 (`overwrite_eps(model, 0.0)`; FrozenBatchNorm2d's
default is 1e-5); `fasterrcnn_resnet50_fpn_v2` uses `nn.BatchNorm2d` in eval mode (eps 1e-5,
trainable weight and bias), the same function of x.

`trainable_layers` (0-5) is torchvision's `_resnet_fpn_extractor` setting: the last
`trainable_layers` of (layer4, layer3, layer2, layer1, conv1) are trained; the others get no
gradient (`stop_gradient` after them) and `is_frozen(name)` tells the optimizer to leave them.
"""

import functools
from typing import Any, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Torch's default Conv2d init is replaced in torchvision's resnet by kaiming_normal(fan_out, relu).
resnet_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics: x [..., C] -> x * scale + shift (torchvision's formula).

    Attributes:
      eps: added to the variance (0 for torchvision's COCO fasterrcnn_resnet50_fpn, 1e-5 for
        nn.BatchNorm2d and FrozenBatchNorm2d's default).
      affine_trainable: weight ("scale") and bias in "params" (trained, as nn.BatchNorm2d's);
        False keeps them in "batch_stats" with the statistics (FrozenBatchNorm2d's buffers).
      dtype: computation dtype.
    """

    eps: float = 0.0
    affine_trainable: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., C] -> [..., C]."""
        channels = x.shape[-1]
        if self.affine_trainable:
            weight = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
            bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        else:
            weight = self.variable("batch_stats", "scale", jnp.ones, (channels,), jnp.float32).value
            bias = self.variable("batch_stats", "bias", jnp.zeros, (channels,), jnp.float32).value
        mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32).value
        var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32).value
        scale = weight * jax.lax.rsqrt(var + jnp.float32(self.eps))
        shift = bias - mean * scale
        return x * scale.astype(self.dtype) + shift.astype(self.dtype)


def conv2d(features, kernel, *, strides=1, padding=0, use_bias=False, dtype=jnp.float32, name=None,
           kernel_init=resnet_conv_init):
    """A flax Conv with torch's symmetric explicit padding (`padding` pixels on each side)."""
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=((padding, padding),) * 2,
                   use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init, name=name)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch's MaxPool2d(3, stride 2, padding 1): [N, H, W, C] -> [N, ceil(H / 2), ceil(W / 2), C]."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: 1x1, 3x3 (stride), 1x1 (4x), each with batch norm; x [N, H, W, C] ->
    [N, ceil(H / strides), ceil(W / strides), 4 * width]."""

    width: int
    strides: int = 1
    eps: float = 0.0
    affine_trainable: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(conv2d, dtype=self.dtype)
        norm = functools.partial(FrozenBatchNorm2d, self.eps, self.affine_trainable, self.dtype)
        y = nn.relu(norm(name="bn1")(conv(self.width, 1, name="conv1")(x)))
        y = nn.relu(norm(name="bn2")(conv(self.width, 3, strides=self.strides, padding=1, name="conv2")(y)))
        y = norm(name="bn3")(conv(4 * self.width, 1, name="conv3")(y))
        if x.shape[-1] != 4 * self.width or self.strides != 1:
            x = norm(name="downsample_bn")(conv(4 * self.width, 1, strides=self.strides, name="downsample_conv")(x))
        return nn.relu(x + y)


class ResLayer(nn.Module):
    """`num_blocks` bottlenecks named block0, block1, ...; the first has `strides`."""

    num_blocks: int
    width: int
    strides: int
    eps: float = 0.0
    affine_trainable: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for b in range(self.num_blocks):
            x = Bottleneck(self.width, self.strides if b == 0 else 1, self.eps, self.affine_trainable, self.dtype,
                           name=f"block{b}")(x)
        return x


LAYER_NAMES = ("conv1", "layer1", "layer2", "layer3", "layer4")


class ResNetBody(nn.Module):
    """ResNet trunk returning C2-C5: images [N, H, W, 3] -> [C2 [N, H/4, W/4, 4 * width], C3 (/8, 8 * width),
    C4 (/16, 16 * width), C5 (/32, 32 * width)] (sizes rounded up at each stride-2 layer).

    Attributes:
      stage_sizes: bottlenecks of layer1-layer4 ((3, 4, 6, 3) for ResNet-50).
      width: the stem's channels (64); layer i has `width * 2 ** (i - 1)` bottleneck channels.
      trainable_layers: 0-5, torchvision's setting (3 by default in its detection builders).
      bn_eps, bn_affine_trainable: of every `FrozenBatchNorm2d`.
      dtype: computation dtype (parameters stay float32).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    trainable_layers: int = 3
    bn_eps: float = 0.0
    bn_affine_trainable: bool = False
    dtype: Dtype = jnp.float32

    @property
    def out_channels(self) -> List[int]:
        return [4 * self.width * 2 ** i for i in range(len(self.stage_sizes))]

    def is_frozen(self, name: str) -> bool:
        """Whether the parameter group `name` (conv1, bn1, layer1, ...) is frozen by `trainable_layers`."""
        group = "conv1" if name in ("conv1", "bn1") else name
        frozen = LAYER_NAMES[: len(LAYER_NAMES) - self.trainable_layers]
        return group in frozen

    @nn.compact
    def __call__(self, images: jax.Array) -> List[jax.Array]:
        if not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be in [0, 5], got {self.trainable_layers}")
        num_frozen = len(LAYER_NAMES) - self.trainable_layers  # conv1 counts as the first
        x = images.astype(self.dtype)
        x = conv2d(self.width, 7, strides=2, padding=3, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(FrozenBatchNorm2d(self.bn_eps, self.bn_affine_trainable, self.dtype, name="bn1")(x))
        x = max_pool_3x3_s2(x)
        if num_frozen >= 1:
            x = jax.lax.stop_gradient(x)
        outputs = []
        for i, num_blocks in enumerate(self.stage_sizes):
            x = ResLayer(num_blocks, self.width * 2 ** i, 1 if i == 0 else 2, self.bn_eps, self.bn_affine_trainable,
                         self.dtype, name=f"layer{i + 1}")(x)
            if num_frozen >= i + 2:
                x = jax.lax.stop_gradient(x)
            outputs.append(x)
        return outputs
