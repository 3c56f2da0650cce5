"""The feature pyramid network (Lin et al. 2017) as torchvision's `FeaturePyramidNetwork` builds it.

C2-C5 [N, h_i, w_i, c_i] -> P2-P6 [N, h_i, w_i, channels]: a 1x1 lateral conv per level
(`inner{i}`), a top-down pathway that upsamples the coarser merged map by nearest neighbour
to the lateral's size and adds it, a 3x3 output conv per level (`layer{i}`), and an extra
level P6 = P5[:, ::2, ::2] (torchvision's `LastLevelMaxPool`: max_pool2d with kernel 1,
stride 2). With `norm=True` (torchvision's fasterrcnn_resnet50_fpn_v2) each conv has no bias
and is followed by batch normalisation (`inner{i}_bn`, `layer{i}_bn`, eval mode, eps 1e-5).
"""

from typing import Any, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.models.resnet_fpn import FrozenBatchNorm2d, conv2d

Dtype = Any

# torchvision's FPN init: kaiming_uniform_(a=1): uniform with variance 1 / fan_in.
fpn_conv_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """[out_size] int source indices of torch's `interpolate(mode="nearest", size=...)` along one axis:
    identity for equal sizes, `i >> 1` for twice the size, else `min(floor(i * float32(in / out)), in - 1)`."""
    out = np.arange(out_size)
    if out_size == in_size:
        return out
    if out_size == 2 * in_size:
        return out >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(out.astype(np.float32) * scale).astype(np.int64), in_size - 1)


def upsample_nearest(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """x: [N, h, w, C] -> [N, size[0], size[1], C], torch's nearest interpolation (static sizes)."""
    (h, w), (out_h, out_w) = x.shape[1:3], tuple(size)
    if (out_h, out_w) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x[:, nearest_indices(h, out_h)][:, :, nearest_indices(w, out_w)]


class FPN(nn.Module):
    """Feature pyramid over C2-C5: [C2, ..., C5] -> [P2, ..., P5, P6], each [N, h_i, w_i, channels].

    Attributes:
      channels: output channels of every level (256).
      norm: batch norm after each conv (v2) instead of a conv bias (v1).
      bn_eps: the batch norm's eps (1e-5).
      dtype: computation dtype.
    """

    channels: int = 256
    norm: bool = False
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    def _conv(self, x, kernel, name):
        x = conv2d(self.channels, kernel, padding=kernel // 2, use_bias=not self.norm, dtype=self.dtype, name=name,
                   kernel_init=fpn_conv_init)(x)
        if self.norm:
            x = FrozenBatchNorm2d(self.bn_eps, affine_trainable=True, dtype=self.dtype, name=f"{name}_bn")(x)
        return x

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> List[jax.Array]:
        features = [f.astype(self.dtype) for f in features]
        last = len(features) - 1
        inner = self._conv(features[last], 1, f"inner{last}")
        results = [self._conv(inner, 3, f"layer{last}")]
        for i in range(last - 1, -1, -1):
            lateral = self._conv(features[i], 1, f"inner{i}")
            inner = lateral + upsample_nearest(inner, lateral.shape[1:3])
            results.insert(0, self._conv(inner, 3, f"layer{i}"))
        results.append(results[-1][:, ::2, ::2])  # LastLevelMaxPool
        return results
