"""Convolutional trunks: images [N, H, W, 3] -> feature maps [N, H / stride, W / stride, C].

Every backbone exposes
  * `stride` (int): the total subsampling, the `spatial_scale` of RoI pooling is `1 / stride`;
  * `is_frozen(name) -> bool`: whether the top-level parameter group `name` (a key of the
    backbone's parameter dict) belongs to a frozen stage. Frozen stages are cut from the
    gradient with `stop_gradient` in the forward pass (no backward compute is spent on them)
    and their parameters are excluded from the optimizer update, weight decay included
    (`jaxdet.training.optimizer`).

Stages are numbered as in the VGG and ResNet papers and Detectron's `FREEZE_AT`: for VGG,
stage s holds `conv{s}_*`; for ResNet, stage 1 is the stem (`conv1`) and stage s > 1 is
`res{s}`. `frozen_stages=2` therefore freezes conv1-conv2 of VGG16 (the reference Faster
R-CNN recipes) and conv1 + res2 of a ResNet.

Variants are `functools.partial`s of one class: `VGG16`, `TinyVGG`; `ResNet50C4`,
`ResNet101C4`, `TinyResNetC4` (stride 16) with their RoI-head counterparts `ResNet50C5Head`, ...
in `jaxdet.models.roi_head`; `ResNet34`, `ResNet50` (all four stages, stride 32, for heads that
pool the last stage's features: `jaxdet.models.roi_classifier`).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


Dtype = Any


class VGG(nn.Module):
    """VGG convolutional trunk without its last max pool (as Fast/Faster R-CNN use it).

    Stage s (1-based) is a 2x2/2 max pool (except for s = 1) followed by 3x3 convolutions
    with padding 1 and ReLU named `conv{s}_{i}`, so `len(stages)` stages subsample by
    `2 ** (len(stages) - 1)`. Pooling floors odd sizes, as torchvision and Caffe do.
    With `batch_norm`, each convolution is followed by batch normalisation `bn{s}_{i}` before
    its ReLU (torchvision's vgg16_bn), kept frozen at its ImageNet statistics (`FrozenBatchNorm`:
    detection batches are too small to estimate them).

    Attributes:
      stages: output channels of each convolution, per stage.
      batch_norm: a frozen batch normalisation after every convolution.
      frozen_stages: stages 1..frozen_stages receive no gradient and no update.
      dtype: computation dtype (parameters stay float32).
      conv: the convolution layer, called as `nn.Conv` (default); `xla_ops.amx.layers_for` chooses.
    """

    stages: Sequence[Sequence[int]]
    batch_norm: bool = False
    frozen_stages: int = 0
    dtype: Dtype = jnp.float32
    conv: Any = nn.Conv

    @property
    def stride(self) -> int:
        return 2 ** (len(self.stages) - 1)

    @property
    def out_channels(self) -> int:
        return self.stages[-1][-1]

    def is_frozen(self, name: str) -> bool:
        stage = int(name.split("_")[0].removeprefix("conv").removeprefix("bn"))  # conv{s}_{i}, bn{s}_{i}
        return stage <= self.frozen_stages

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images: [N, H, W, 3] -> features [N, H // stride, W // stride, stages[-1][-1]]."""
        del train  # no dropout or normalisation statistics in VGG
        if not 0 <= self.frozen_stages <= len(self.stages):
            raise ValueError(f"frozen_stages must be in [0, {len(self.stages)}], got {self.frozen_stages}")
        x = images.astype(self.dtype)
        for s, widths in enumerate(self.stages, start=1):
            if s > 1:
                x = max_pool_2x2(x)
            for i, width in enumerate(widths, start=1):
                x = self.conv(width, (3, 3), padding=1, dtype=self.dtype, name=f"conv{s}_{i}")(x)
                if self.batch_norm:
                    x = FrozenBatchNorm(dtype=self.dtype, name=f"bn{s}_{i}")(x)
                x = nn.relu(x)
            if s == self.frozen_stages:
                x = jax.lax.stop_gradient(x)
        return x


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2: [N, H, W, C] -> [N, H // 2, W // 2, C], odd sizes floored.

    The values and the gradient of `nn.max_pool(x, (2, 2), strides=(2, 2))`, bit for bit: the
    gradient of an output goes to the first input of its window, in row-major order, that
    equals the maximum. They are computed differently: the maximum over a reshape, and the
    gradient as four elementwise selections that XLA fuses. `reduce_window`'s gradient is a
    select-and-scatter, which XLA's CPU backend lowers with full-size index arrays and a scatter
    (half of the tiny model's training step), and a plain reduction's gradient would divide
    among tied inputs instead of choosing one.
    """
    return _windows_2x2(x).max(axis=(2, 4))


def _windows_2x2(x: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [N, H // 2, 2, W // 2, 2, C]: the 2x2 windows, odd last rows and columns cut."""
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


def _max_pool_2x2_fwd(x):
    pooled = max_pool_2x2(x)
    return pooled, (x, pooled)  # pooled is the next layer's input: kept anyway, not recomputed


def _max_pool_2x2_bwd(residuals, grad):
    x, pooled = residuals
    windows = _windows_2x2(x)
    taken = jnp.zeros(pooled.shape, bool)  # an earlier input of the window already equals the max
    grads = []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        first = (windows[:, :, dy, :, dx] == pooled) & ~taken
        grads.append(jnp.where(first, grad, jnp.zeros_like(grad)))
        taken = taken | first
    n, h2, w2, c = grad.shape
    grad_windows = jnp.stack(grads, axis=-2).reshape(n, h2, w2, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    grad_x = grad_windows.reshape(n, 2 * h2, 2 * w2, c)
    return (jnp.pad(grad_x, ((0, 0), (0, x.shape[1] - 2 * h2), (0, x.shape[2] - 2 * w2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


# The 13 convolutions of VGG16 up to conv5_3: stride 16, 512 channels, 14,714,688 parameters
# (and 8,448 more scale and bias parameters of batch normalisation in VGG16BN).
VGG16 = functools.partial(VGG, stages=((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)))
VGG16BN = functools.partial(VGG16, batch_norm=True)
# The CPU demo and tests: stride 8, 64 channels, about 0.1M parameters.
TinyVGG = functools.partial(VGG, stages=((16,), (32,), (64, 64), (64, 64)))


# Detection fine-tuning runs with 1-2 images per device, too few for batch statistics, so the
# ImageNet statistics stay fixed ("frozen BN"); scale and bias remain trainable parameters.
FrozenBatchNorm = functools.partial(nn.BatchNorm, use_running_average=True, momentum=0.9, epsilon=1e-5)


class BottleneckBlock(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv, as torchvision's ResNet-50).

    x: [N, H, W, C] -> [N, H / strides, W / strides, 4 * filters].
    """

    filters: int
    strides: int = 1
    dtype: Dtype = jnp.float32
    conv: Any = nn.Conv
    expansion = 4  # output channels per filter

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(FrozenBatchNorm, dtype=self.dtype)
        y = nn.relu(norm(name="bn1")(conv(self.filters, (1, 1), name="conv1")(x)))
        y = conv(self.filters, (3, 3), strides=self.strides, padding=1, name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = norm(name="bn3")(conv(4 * self.filters, (1, 1), name="conv3")(y))
        if x.shape[-1] != 4 * self.filters or self.strides != 1:
            x = conv(4 * self.filters, (1, 1), strides=self.strides, name="downsample_conv")(x)
            x = norm(name="downsample_bn")(x)
        return nn.relu(x + y)


class BasicBlock(nn.Module):
    """ResNet basic block of ResNet-18/34 (two 3x3 convolutions, as torchvision's BasicBlock).

    x: [N, H, W, C] -> [N, H / strides, W / strides, filters].
    """

    filters: int
    strides: int = 1
    dtype: Dtype = jnp.float32
    conv: Any = nn.Conv
    expansion = 1  # output channels per filter

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(FrozenBatchNorm, dtype=self.dtype)
        y = conv(self.filters, (3, 3), strides=self.strides, padding=1, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = norm(name="bn2")(conv(self.filters, (3, 3), padding=1, name="conv2")(y))
        if x.shape[-1] != self.filters or self.strides != 1:
            x = conv(self.filters, (1, 1), strides=self.strides, name="downsample_conv")(x)
            x = norm(name="downsample_bn")(x)
        return nn.relu(x + y)


class ResStage(nn.Module):
    """`num_blocks` blocks, the first one with `strides`:
    [N, H, W, C] -> [N, H / strides, W / strides, block.expansion * filters]."""

    num_blocks: int
    filters: int
    strides: int
    block: Any = BottleneckBlock
    dtype: Dtype = jnp.float32
    conv: Any = nn.Conv

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for b in range(self.num_blocks):
            x = self.block(self.filters, self.strides if b == 0 else 1, dtype=self.dtype, conv=self.conv,
                           name=f"block{b + 1}")(x)
        return x


class ResNet(nn.Module):
    """ResNet trunk (He et al. 2016) up to its last listed stage: the stem (stride 4), then
    res2, res3, ... with `stage_sizes` blocks each, every stage after res2 halving the size.

    Three stages end at res4 ("C4", stride 16; 1024 channels for ResNet-50): res5 then runs on
    pooled RoI features in the head (`jaxdet.models.roi_head.ResNetC5Head`), the C4 pattern of
    the ResNet Faster R-CNN (detectron2's Res5ROIHeads). Four stages end at res5 (stride 32):
    the whole classification trunk without its pooling and classifier, whose features RoI
    pooling can read at `spatial_scale = 1 / 32`.

    Attributes:
      stage_sizes: number of blocks of res2, res3, ...
      block: `BottleneckBlock` (ResNet-50 and deeper) or `BasicBlock` (ResNet-18/34).
      width: channels of the stem; stage s has `width * 2 ** (s - 2)` filters per block.
      frozen_stages: 1 freezes the stem, 2 the stem and res2, ...
      dtype: computation dtype (parameters stay float32).
      conv: the convolution layer, called as `nn.Conv` (default); `xla_ops.amx.layers_for` chooses.
    """

    stage_sizes: Sequence[int]
    block: Any = BottleneckBlock
    width: int = 64
    frozen_stages: int = 0
    dtype: Dtype = jnp.float32
    conv: Any = nn.Conv

    @property
    def stride(self) -> int:
        return 4 * 2 ** (len(self.stage_sizes) - 1)

    @property
    def out_channels(self) -> int:
        return self.block.expansion * self.width * 2 ** (len(self.stage_sizes) - 1)

    def is_frozen(self, name: str) -> bool:
        stage = 1 if name in ("conv1", "bn1") else int(name[len("res"):])
        return stage <= self.frozen_stages

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images: [N, H, W, 3] -> features [N, ~H / stride, ~W / stride, out_channels]."""
        del train  # normalisation statistics are frozen
        if not 0 <= self.frozen_stages <= 1 + len(self.stage_sizes):
            raise ValueError(f"frozen_stages must be in [0, {1 + len(self.stage_sizes)}], got {self.frozen_stages}")
        x = images.astype(self.dtype)
        x = self.conv(self.width, (7, 7), strides=2, padding=3, use_bias=False, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(FrozenBatchNorm(dtype=self.dtype, name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        if self.frozen_stages == 1:
            x = jax.lax.stop_gradient(x)
        for i, num_blocks in enumerate(self.stage_sizes):
            stage = i + 2
            x = ResStage(num_blocks, self.width * 2**i, 1 if i == 0 else 2, block=self.block, dtype=self.dtype,
                         conv=self.conv, name=f"res{stage}")(x)
            if stage == self.frozen_stages:
                x = jax.lax.stop_gradient(x)
        return x


ResNet50C4 = functools.partial(ResNet, stage_sizes=(3, 4, 6))
ResNet101C4 = functools.partial(ResNet, stage_sizes=(3, 4, 23))
ResNet152C4 = functools.partial(ResNet, stage_sizes=(3, 8, 36))
TinyResNetC4 = functools.partial(ResNet, stage_sizes=(1, 1, 1), width=8)
# Whole trunks, stride 32: 21,284,672 and 23,508,032 parameters (torchvision's resnet34 and
# resnet50 without their fc layer).
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
