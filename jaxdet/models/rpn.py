"""The region proposal network head (Ren et al. 2015, sec. 3.1): features -> per-anchor objectness and deltas."""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


Dtype = Any


class RPNOutputs(NamedTuple):
    """logits: [N, h * w * A, 2] (background, object); deltas: [N, h * w * A, 4] (tx, ty, tw, th).

    Anchors are ordered (y, x, anchor template) as `jaxdet.ops.anchor_grid` orders them.
    """

    logits: jax.Array
    deltas: jax.Array


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then sibling 1x1 convs for 2 scores and 4 deltas per anchor.

    All three convolutions are initialised N(0, 0.01) with zero bias, as in the paper.

    Attributes:
      num_anchors: anchor templates per position (A = 9 for 3 scales x 3 ratios).
      channels: width of the 3x3 conv (512 for VGG16).
      dtype: computation dtype; outputs are returned in float32 for the losses.
      conv: the convolution layer, called as `nn.Conv` (default); `xla_ops.amx.layers_for` chooses.
    """

    num_anchors: int
    channels: int = 512
    dtype: Dtype = jnp.float32
    conv: Any = nn.Conv

    @nn.compact
    def __call__(self, features: jax.Array) -> RPNOutputs:
        """features: [N, h, w, C] -> RPNOutputs with h * w * num_anchors anchors per image."""
        conv = lambda width, size, name: self.conv(  # noqa: E731
            width, size, padding="SAME", dtype=self.dtype, name=name,
            kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros)
        x = nn.relu(conv(self.channels, (3, 3), "conv")(features))
        n, h, w, _ = x.shape
        # The channel axis is (anchor, 2) and (anchor, 4), so the reshape gives (y, x, anchor) order.
        logits = conv(2 * self.num_anchors, (1, 1), "cls_logits")(x).reshape(n, h * w * self.num_anchors, 2)
        deltas = conv(4 * self.num_anchors, (1, 1), "bbox_deltas")(x).reshape(n, h * w * self.num_anchors, 4)
        return RPNOutputs(logits.astype(jnp.float32), deltas.astype(jnp.float32))
