"""Faster R-CNN with a ResNet-FPN backbone (Lin et al. 2017), as torchvision builds it, on fixed shapes.

The model of torchvision's `fasterrcnn_resnet50_fpn` (v1) and `fasterrcnn_resnet50_fpn_v2` (v2):

  extract(images [N, H, W, 3]) -> [P2, P3, P4, P5, P6], P_l [N, ceil(H / 2^l), ceil(W / 2^l), 256]
  rpn_outputs(features) -> (objectness per level [N, h_l * w_l * A], deltas per level [N, h_l * w_l * A, 4])
  classify(features, rois [N, R, 4]) -> HeadOutputs(logits [N, R, K + 1], deltas [N, R, K + 1, 4])

(`jaxdet.models.resnet_fpn`, `jaxdet.models.fpn`). One RPN head (`conv_depth` 3x3 convs + ReLU,
then 1x1 convs for one objectness logit and 4 deltas per anchor) is shared by the five levels.
Anchors (`level_anchors`) are torchvision's `AnchorGenerator` with one size per level (32 to
512) and ratios 0.5, 1, 2: templates `round(+-size * ratio^(-+1/2) / 2)` (half to even), placed
at `(x, y) * stride` with the stride per axis `padded_size // level_size` (61 for a 13-row P6 of
an 800-row canvas, as torchvision computes it), order (y, x, ratio) within a level.

Test time (`predict`), per image with fixed shapes: per level the `pre_nms_top_n` best anchors by
objectness logit, decoded (weights 1), clipped, those with a side under `rpn_min_size` (1e-3)
dropped, NMS at 0.7 within each level, the `post_nms_top_n` best over all levels
(`fpn_proposals`); multi-scale RoIAlign (`multiscale_roi_align_native`, one native
`xla_ops.roi_align` call per level, by default; `multiscale_roi_align`, a jnp gather, the same
values with `roi_impl="gather"`: each proposal pooled 7x7
from level `floor(4 + log2(sqrt(area) / 224) + 1e-6)` clamped to 2-5, sampling 2,
aligned=False, torchvision's `MultiScaleRoIAlign`); the box head (v1 `TwoMLPHead`: fc6, fc7 1024;
v2: four 3x3 conv + batch norm + ReLU, one fc 1024); class-specific decoding with weights
(10, 10, 5, 5) and the clamp `log(1000 / 16)`, clipping, softmax, scores above 0.05, boxes with
both sides at least 1e-2, class-wise NMS at 0.5, the 100 best (`postprocess_detections`).
Labels are 0-based over the K = 90 object slots of torchvision's COCO list (torchvision's
label minus one).
"""

import dataclasses
import functools
import math
from typing import Any, List, NamedTuple, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdet.models.fpn import FPN
from jaxdet.models.resnet_fpn import FrozenBatchNorm2d, ResNetBody, conv2d
from jaxdet.ops.nms import Detections, multiclass_nms, nms
from jaxdet.ops.per_image import map_images

Dtype = Any

BBOX_XFORM_CLIP = math.log(1000.0 / 16)


class HeadOutputs(NamedTuple):
    """logits: [N, R, K + 1] (0 = background); deltas: [N, R, K + 1, 4] raw (not yet divided by the box weights)."""

    logits: jax.Array
    deltas: jax.Array


class Proposals(NamedTuple):
    """boxes: [N, P, 4] xyxy input pixels; scores: [N, P] sigmoid objectness; valid: [N, P] (valid rows first,
    descending score; invalid rows zero)."""

    boxes: jax.Array
    scores: jax.Array
    valid: jax.Array


class FPNOutputs(NamedTuple):
    """What `predict` returns: the RPN's proposals and the final detections, both in input pixels."""

    proposals: Proposals
    detections: Detections


@dataclasses.dataclass(frozen=True)
class FPNTestSettings:
    """The test-time numbers of torchvision's FasterRCNN, from a config (`settings_from_config`);
    `rpn_score_thresh` is torchvision's constant (0: no objectness threshold), not a config field."""

    rpn_pre_nms_top_n: int
    rpn_post_nms_top_n: int
    rpn_nms_thresh: float
    rpn_min_size: float
    box_score_thresh: float
    box_nms_thresh: float
    box_min_size: float
    detections_per_img: int
    rpn_score_thresh: float = 0.0


# ----------------------------------------------------------------------------- anchors


def base_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """torchvision's `AnchorGenerator.generate_anchors`: [len(ratios) * len(sizes), 4] float32 xyxy around
    the origin, ratio-major: `round([-w, -h, w, h] / 2)` (half to even) with w = size / sqrt(r),
    h = size * sqrt(r), all in float32."""
    scales = np.asarray(sizes, np.float32)
    h_ratios = np.sqrt(np.asarray(ratios, np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float32)


def level_anchors(padded_hw: Tuple[int, int], level_hws: Sequence[Tuple[int, int]], sizes: Sequence[Sequence[float]],
                  ratios: Sequence[float]) -> List[np.ndarray]:
    """The anchors of each level, torchvision's `AnchorGenerator` on a padded canvas.

    Args:
      padded_hw: (H, W) of the padded batch.
      level_hws: (h_l, w_l) of each feature level.
      sizes: per level, its anchor sizes (((32,), (64,), ...)).
      ratios: height / width ratios (0.5, 1, 2).

    Returns:
      Per level [h_l * w_l * A_l, 4] float32 xyxy, order (y, x, template), the stride of each axis
      `padded size // level size`.
    """
    out = []
    for (h, w), level_sizes in zip(level_hws, sizes):
        templates = base_anchors(level_sizes, ratios)
        stride_h, stride_w = int(padded_hw[0]) // int(h), int(padded_hw[1]) // int(w)
        shift_x = np.arange(w, dtype=np.int32) * np.int32(stride_w)
        shift_y = np.arange(h, dtype=np.int32) * np.int32(stride_h)
        sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4).astype(np.float32)
        out.append((shifts + templates[None]).reshape(-1, 4))
    return out


# ----------------------------------------------------------------------------- boxes


def decode_torchvision(deltas: jax.Array, boxes: jax.Array, weights=(1.0, 1.0, 1.0, 1.0),
                       clip=BBOX_XFORM_CLIP) -> jax.Array:
    """torchvision's `BoxCoder.decode_single`, operation for operation.

    Args:
      deltas: [..., 4] (dx, dy, dw, dh) times the weights.
      boxes: [..., 4] xyxy reference boxes (broadcast against deltas).
      weights: (wx, wy, ww, wh) the deltas are divided by.
      clip: the largest dw, dh before exp.

    Returns:
      [..., 4] xyxy.
    """
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    ctr_x = boxes[..., 0] + 0.5 * widths
    ctr_y = boxes[..., 1] + 0.5 * heights
    wx, wy, ww, wh = (jnp.float32(w) for w in weights)
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, jnp.float32(clip))
    dh = jnp.minimum(deltas[..., 3] / wh, jnp.float32(clip))
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = jnp.exp(dw) * widths
    pred_h = jnp.exp(dh) * heights
    c_w, c_h = 0.5 * pred_w, 0.5 * pred_h
    return jnp.stack([pred_ctr_x - c_w, pred_ctr_y - c_h, pred_ctr_x + c_w, pred_ctr_y + c_h], axis=-1)


def clip_to_image(boxes: jax.Array, image_hw: jax.Array) -> jax.Array:
    """boxes [..., 4] clamped to x in [0, W], y in [0, H]; image_hw [2] (H, W)."""
    h = image_hw[0].astype(boxes.dtype)
    w = image_hw[1].astype(boxes.dtype)
    x = jnp.clip(boxes[..., 0::2], 0.0, w)
    y = jnp.clip(boxes[..., 1::2], 0.0, h)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def map_levels(boxes: jax.Array, k_min: int = 2, k_max: int = 5, canonical_scale: float = 224,
               canonical_level: int = 4, eps: float = 1e-6) -> jax.Array:
    """The FPN paper's level of each box (Lin et al. 2017, eq. 1), torchvision's `LevelMapper`.

    Args:
      boxes: [..., 4] xyxy input pixels.

    Returns:
      [...] int32 level index from 0 (= k_min): `clamp(floor(k0 + log2(sqrt(area) / 224) + eps), k_min, k_max) - k_min`.
    """
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    s = jnp.sqrt(area)
    target = jnp.floor(jnp.float32(canonical_level) + jnp.log2(s / jnp.float32(canonical_scale)) + jnp.float32(eps))
    target = jnp.clip(target, k_min, k_max)
    return (target.astype(jnp.int32) - k_min).astype(jnp.int32)


# ----------------------------------------------------------------------------- RoIAlign


def _axis_samples(start, bin_size, pooled, grid, size):
    """Sample positions and bilinear terms along one axis, torchvision's roi_align CPU kernel (aligned=False).

    Args: start, bin_size: [R] float32; pooled, grid: ints; size: [R] int32 feature size on this axis.
    Returns: low, high [R, pooled, grid] int32; w_low, w_high [R, pooled, grid] float32 (0 outside).
    """
    p = jnp.arange(pooled, dtype=jnp.float32)[None, :, None]
    g = (jnp.arange(grid, dtype=jnp.float32) + 0.5)[None, None, :]
    coord = start[:, None, None] + p * bin_size[:, None, None] + g * bin_size[:, None, None] / jnp.float32(grid)
    size = size[:, None, None]
    outside = (coord < -1.0) | (coord > size.astype(jnp.float32))
    coord = jnp.where(coord <= 0, 0.0, coord)
    low = jnp.floor(coord).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    coord = jnp.where(at_end, low.astype(jnp.float32), coord)
    frac = coord - low.astype(jnp.float32)
    w_high = jnp.where(outside, 0.0, frac)
    w_low = jnp.where(outside, 0.0, 1.0 - frac)
    return low, high, w_low, w_high


def _roi_align_flat(flat, level_hw, level_offset, level_scale, rois, output_size, sampling_ratio):
    """RoIAlign of `rois` [R, 4] from the flattened levels `flat` [S, C], per RoI level metadata [R] -> [R, ph, pw, C]."""
    ph, pw = output_size
    g = sampling_ratio
    scale = level_scale
    start_w, start_h = rois[:, 0] * scale, rois[:, 1] * scale
    end_w, end_h = rois[:, 2] * scale, rois[:, 3] * scale
    roi_w = jnp.maximum(end_w - start_w, 1.0)
    roi_h = jnp.maximum(end_h - start_h, 1.0)
    bin_h, bin_w = roi_h / jnp.float32(ph), roi_w / jnp.float32(pw)
    height, width = level_hw[:, 0], level_hw[:, 1]
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(start_h, bin_h, ph, g, height)  # [R, ph, g]
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(start_w, bin_w, pw, g, width)  # [R, pw, g]
    rows = jnp.stack([y_lo, y_hi], axis=-1) * width[:, None, None, None] + level_offset[:, None, None, None]
    cols = jnp.stack([x_lo, x_hi], axis=-1)  # [R, pw, g, 2]
    wy = jnp.stack([wy_lo, wy_hi], axis=-1)  # [R, ph, g, 2]
    wx = jnp.stack([wx_lo, wx_hi], axis=-1)
    index = rows[:, :, :, :, None, None, None] + cols[:, None, None, None, :, :, :]  # [R, ph, g, 2, pw, g, 2]
    weight = wy[:, :, :, :, None, None, None] * wx[:, None, None, None, :, :, :]
    values = flat[index]  # [R, ph, g, 2, pw, g, 2, C]
    pooled = jnp.sum(values * weight[..., None].astype(flat.dtype), axis=(2, 3, 5, 6))
    return pooled / jnp.asarray(g * g, flat.dtype)


def multiscale_roi_align(features: Sequence[jax.Array], rois: jax.Array, *, strides: Sequence[int],
                         output_size=(7, 7), sampling_ratio: int = 2, canonical_scale: float = 224,
                         canonical_level: int = 4, chunk: int = 128) -> jax.Array:
    """torchvision's `MultiScaleRoIAlign` for one image: each RoI pooled from its FPN level.

    Args:
      features: per level [h_l, w_l, C] (one image), strides `strides` (4, 8, 16, 32).
      rois: [R, 4] xyxy input pixels.
      output_size: (ph, pw).
      sampling_ratio: sample points per bin side (> 0; torchvision's FPN heads use 2).
      canonical_scale, canonical_level: of `map_levels`.
      chunk: RoIs gathered at once (bounds the [chunk, ph, 2g, pw, 2g, C] intermediate).

    Returns:
      [R, ph, pw, C]: `roi_align(level, rois, output_size, 1 / stride, sampling_ratio, aligned=False)`.
    """
    if sampling_ratio <= 0:
        raise ValueError("multiscale_roi_align needs a fixed sampling_ratio > 0 (torchvision's FPN uses 2)")
    levels_log2 = [int(round(math.log2(s))) for s in strides]
    k_min, k_max = levels_log2[0], levels_log2[-1]
    levels = map_levels(rois, k_min, k_max, canonical_scale, canonical_level)  # [R]
    shapes = np.asarray([f.shape[:2] for f in features], np.int32)
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]]).astype(np.int32)
    scales = np.asarray([1.0 / s for s in strides], np.float32)
    flat = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in features])  # [S, C]
    level_hw = jnp.asarray(shapes)[levels]
    level_offset = jnp.asarray(offsets)[levels]
    level_scale = jnp.asarray(scales)[levels]
    num = rois.shape[0]
    chunk = max(1, min(chunk, num))
    pad = -num % chunk

    def padded(x):
        return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(-1, chunk, *x.shape[1:])

    def one(args):
        return _roi_align_flat(flat, *args, output_size=tuple(output_size), sampling_ratio=sampling_ratio)

    pooled = lax.map(one, (padded(level_hw), padded(level_offset), padded(level_scale), padded(rois)))
    return pooled.reshape(-1, *pooled.shape[2:])[:num]


def multiscale_roi_align_native(features: Sequence[jax.Array], rois: jax.Array, *, strides: Sequence[int],
                                output_size=(7, 7), sampling_ratio: int = 2, canonical_scale: float = 224,
                                canonical_level: int = 4) -> jax.Array:
    """`multiscale_roi_align` for a batch through the native `xla_ops.roi_align`, one call per level.

    Each level's call gets every RoI, those mapped to other levels with NaN coordinates: the op
    gives them zeros and no gradient at almost no cost, so the sum of the levels' outputs is each
    RoI pooled from its own level (x + 0 = x exactly). [N, R, 4] RoIs split over a device mesh as
    the op does (each device pools its own images).

    Args:
      features: per level [N, h_l, w_l, C], strides `strides` (4, 8, 16, 32).
      rois: [N, R, 4] xyxy input pixels.

    Returns:
      [N, R, ph, pw, C].
    """
    from xla_ops import roi_align  # the lowest layer; imported here so the module loads without the op built

    levels_log2 = [int(round(math.log2(s))) for s in strides]
    levels = map_levels(rois, levels_log2[0], levels_log2[-1], canonical_scale, canonical_level)  # [N, R]
    out = None
    for level, (feature, stride) in enumerate(zip(features, strides)):
        mine = jnp.where((levels == level)[..., None], rois, jnp.nan)
        pooled = roi_align(feature, mine, tuple(output_size), 1.0 / stride, sampling_ratio, False)
        out = pooled if out is None else out + pooled
    return out


# ----------------------------------------------------------------------------- modules


class RPNHead(nn.Module):
    """torchvision's RPNHead, shared over levels: features per level [N, h, w, C] -> (logits [N, h*w*A],
    deltas [N, h*w*A, 4]) per level, anchor order (y, x, a)."""

    num_anchors: int = 3
    conv_depth: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]):
        init = nn.initializers.normal(0.01)
        channels = features[0].shape[-1]
        convs = [conv2d(channels, 3, padding=1, use_bias=True, dtype=self.dtype, kernel_init=init, name=f"conv{i}")
                 for i in range(self.conv_depth)]
        cls = conv2d(self.num_anchors, 1, use_bias=True, dtype=self.dtype, kernel_init=init, name="cls_logits")
        reg = conv2d(4 * self.num_anchors, 1, use_bias=True, dtype=self.dtype, kernel_init=init, name="bbox_pred")
        logits, deltas = [], []
        for feature in features:
            t = feature
            for conv in convs:
                t = nn.relu(conv(t))
            n, h, w, _ = t.shape
            logits.append(cls(t).reshape(n, h * w * self.num_anchors).astype(jnp.float32))
            deltas.append(reg(t).reshape(n, h * w * self.num_anchors, 4).astype(jnp.float32))
        return logits, deltas


class TwoMLPHead(nn.Module):
    """pooled [..., 7, 7, C] -> flatten (7, 7, C order) -> fc6 -> ReLU -> fc7 -> ReLU: [..., representation]."""

    representation_size: int = 1024
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        x = pooled.reshape(*pooled.shape[:-3], -1)
        x = nn.relu(nn.Dense(self.representation_size, dtype=self.dtype, name="fc6")(x))
        return nn.relu(nn.Dense(self.representation_size, dtype=self.dtype, name="fc7")(x))


class ConvFCHead(nn.Module):
    """torchvision's FastRCNNConvFCHead with batch norm (v2): pooled [..., 7, 7, C] -> convs (3x3, no bias,
    batch norm, ReLU) -> flatten (7, 7, C order) -> fc + ReLU: [..., fc_layers[-1]]."""

    conv_layers: Sequence[int] = (256, 256, 256, 256)
    fc_layers: Sequence[int] = (1024,)
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        lead = pooled.shape[:-3]
        x = pooled.reshape(-1, *pooled.shape[-3:])
        for i, width in enumerate(self.conv_layers):
            x = conv2d(width, 3, padding=1, dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(FrozenBatchNorm2d(self.bn_eps, True, self.dtype, name=f"conv{i}_bn")(x))
        x = x.reshape(*lead, -1)
        for i, width in enumerate(self.fc_layers):
            x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i}")(x))
        return x


class FastRCNNPredictor(nn.Module):
    """x [..., D] -> HeadOutputs(logits [..., K + 1], deltas [..., K + 1, 4]) (torchvision's FastRCNNPredictor)."""

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k1 = self.num_classes + 1
        logits = nn.Dense(k1, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01), name="cls_score")(x)
        deltas = nn.Dense(4 * k1, dtype=self.dtype, kernel_init=nn.initializers.normal(0.001), name="bbox_pred")(x)
        return HeadOutputs(logits.astype(jnp.float32), deltas.reshape(*x.shape[:-1], k1, 4).astype(jnp.float32))


class FPNFasterRCNN(nn.Module):
    """Faster R-CNN with ResNet-FPN (torchvision's fasterrcnn_resnet50_fpn and _v2).

    Attributes:
      num_classes: K object classes (90 slots for torchvision's COCO list); the predictor has K + 1.
      stage_sizes, width: of the ResNet trunk ((3, 4, 6, 3), 64: ResNet-50).
      trainable_layers: torchvision's trainable backbone layers (0-5).
      bn_eps, bn_affine_trainable: the trunk's batch norm (v1 COCO weights: eps 0, frozen affine;
        v2: eps 1e-5, trainable affine).
      fpn_channels: P2-P6 channels (256). fpn_norm: v2's batch norm in the FPN.
      anchor_sizes: per level (P2-P6), its sizes. anchor_ratios: height / width.
      rpn_conv_depth: 3x3 convs of the RPN head (1 in v1, 2 in v2).
      box_head: "mlp" (v1 TwoMLPHead) or "conv" (v2 4-conv + 1-FC with batch norm).
      representation_size: the box head's output width (1024).
      pooled_size, sampling_ratio, canonical_scale, canonical_level: of multi-scale RoIAlign.
      box_weights: the head's box coder weights (10, 10, 5, 5).
      roi_chunk: RoIs gathered at once by RoIAlign (memory bound, no effect on results).
      roi_impl: "xla_ops" (`multiscale_roi_align_native`) or "gather" (`multiscale_roi_align`): the same values.
      dtype: computation dtype.
    """

    num_classes: int = 90
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    trainable_layers: int = 3
    bn_eps: float = 0.0
    bn_affine_trainable: bool = False
    fpn_channels: int = 256
    fpn_norm: bool = False
    anchor_sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,))
    anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    rpn_conv_depth: int = 1
    box_head: str = "mlp"
    representation_size: int = 1024
    pooled_size: int = 7
    sampling_ratio: int = 2
    canonical_scale: float = 224
    canonical_level: int = 4
    box_weights: Tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    roi_chunk: int = 128
    roi_impl: str = "xla_ops"
    dtype: Dtype = jnp.float32

    def setup(self):
        self.body = ResNetBody(tuple(self.stage_sizes), self.width, self.trainable_layers, self.bn_eps,
                               self.bn_affine_trainable, self.dtype)
        self.fpn = FPN(self.fpn_channels, self.fpn_norm, 1e-5, self.dtype)
        self.rpn_head = RPNHead(self.num_anchors, self.rpn_conv_depth, self.dtype)
        if self.box_head == "mlp":
            self.head = TwoMLPHead(self.representation_size, self.dtype)
        elif self.box_head == "conv":
            self.head = ConvFCHead((self.fpn_channels,) * 4, (self.representation_size,), 1e-5, self.dtype)
        else:
            raise ValueError(f"box_head must be 'mlp' or 'conv', got {self.box_head!r}")
        self.box_predictor = FastRCNNPredictor(self.num_classes, self.dtype)

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sizes[0]) * len(self.anchor_ratios)

    @property
    def stride(self) -> int:
        """The coarsest RoIAlign level's stride (32): `jaxdet.models.build.init_variables` inits on 4x it."""
        return self.strides[-1]

    @property
    def strides(self) -> Tuple[int, ...]:
        """Nominal strides of P2-P5, the levels RoIAlign reads (4, 8, 16, 32)."""
        return tuple(4 * 2 ** i for i in range(len(self.stage_sizes)))

    def is_frozen(self, name: str) -> bool:
        """Whether the trunk's parameter group `name` is frozen by `trainable_layers`."""
        return ResNetBody(trainable_layers=self.trainable_layers, parent=None).is_frozen(name)

    def extract(self, images: jax.Array) -> List[jax.Array]:
        """images [N, H, W, 3] (normalised, padded) -> [P2, ..., P6], each [N, h_l, w_l, fpn_channels]."""
        return self.fpn(self.body(images))

    def rpn_outputs(self, features: Sequence[jax.Array]):
        """features [P2..P6] -> (logits per level [N, h_l*w_l*A], deltas per level [N, h_l*w_l*A, 4])."""
        return self.rpn_head(features)

    def anchors(self, padded_hw, features) -> List[np.ndarray]:
        """Per level [h_l*w_l*A, 4] anchors of a canvas `padded_hw` (static) whose levels are `features`."""
        return level_anchors(tuple(padded_hw), [tuple(f.shape[1:3]) for f in features], self.anchor_sizes,
                             self.anchor_ratios)

    def classify(self, features: Sequence[jax.Array], rois: jax.Array) -> HeadOutputs:
        """features [P2..P6] (P6 unused), rois [N, R, 4] xyxy input pixels -> HeadOutputs [N, R, ...]."""
        levels = list(features[: len(self.strides)])
        if self.roi_impl == "xla_ops":
            pooled = multiscale_roi_align_native(
                levels, lax.stop_gradient(rois), strides=self.strides, output_size=(self.pooled_size,) * 2,
                sampling_ratio=self.sampling_ratio, canonical_scale=self.canonical_scale,
                canonical_level=self.canonical_level)
            return self.box_predictor(self.head(pooled.astype(self.dtype)))
        if self.roi_impl != "gather":
            raise ValueError(f"roi_impl must be 'xla_ops' or 'gather', got {self.roi_impl!r}")
        pool = functools.partial(multiscale_roi_align, strides=self.strides, output_size=(self.pooled_size,) * 2,
                                 sampling_ratio=self.sampling_ratio, canonical_scale=self.canonical_scale,
                                 canonical_level=self.canonical_level, chunk=self.roi_chunk)
        pooled = jax.vmap(lambda feats, r: pool(feats, r))(levels, lax.stop_gradient(rois))  # [N, R, 7, 7, C]
        return self.box_predictor(self.head(pooled.astype(self.dtype)))

    def __call__(self, images: jax.Array, rois: jax.Array):
        """images [N, H, W, 3], rois [N, R, 4] -> (RPN outputs, HeadOutputs); used by `init`."""
        features = self.extract(images)
        return self.rpn_outputs(features), self.classify(features, rois)


# ----------------------------------------------------------------------------- test time


def fpn_proposals(logits: Sequence[jax.Array], deltas: Sequence[jax.Array], anchors: Sequence[np.ndarray],
                  image_hw: jax.Array, *, pre_nms_top_n: int, post_nms_top_n: int, nms_thresh: float,
                  min_size: float, score_thresh: float = 0.0) -> Proposals:
    """torchvision's `RegionProposalNetwork.filter_proposals` for one image, on fixed shapes.

    Args:
      logits: per level [A_l] objectness logits; deltas: per level [A_l, 4]; anchors: per level [A_l, 4].
      image_hw: [2] (H, W) of the image content (boxes are clipped to it).
      pre_nms_top_n: anchors kept per level before NMS (fewer where a level has fewer).
      post_nms_top_n: proposals returned.
      nms_thresh: NMS IoU, applied within each level ("batched" by level).
      min_size: boxes with a side under it are dropped.
      score_thresh: sigmoid objectness below it dropped (0 keeps all).

    Returns:
      Proposals without the batch axis: boxes [post_nms_top_n, 4], scores, valid.
    """
    ks = [min(pre_nms_top_n, l.shape[0]) for l in logits]
    k = max(ks)
    boxes_l, scores_l, valid_l = [], [], []
    for level_logits, level_deltas, level_anchors_, kl in zip(logits, deltas, anchors, ks):
        top_logits, top = lax.top_k(level_logits, kl)
        boxes = decode_torchvision(level_deltas[top], jnp.asarray(level_anchors_)[top])
        boxes = clip_to_image(boxes, image_hw)
        scores = jax.nn.sigmoid(top_logits)
        valid = ((boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)
                 & (scores >= score_thresh))
        boxes_l.append(jnp.pad(boxes, ((0, k - kl), (0, 0))))
        scores_l.append(jnp.pad(scores, (0, k - kl)))
        valid_l.append(jnp.pad(valid, (0, k - kl)))
    boxes, scores, valid = jnp.stack(boxes_l), jnp.stack(scores_l), jnp.stack(valid_l)  # [L, k, ...]
    per_level = min(post_nms_top_n, k)
    keep, _ = jax.vmap(functools.partial(nms, iou_threshold=nms_thresh, max_output=per_level))(
        boxes, scores, valid=valid)  # [L, per_level]
    kept = keep >= 0
    rows = jnp.maximum(keep, 0)
    kept_boxes = jnp.take_along_axis(boxes, rows[..., None], axis=1).reshape(-1, 4)
    kept_scores = jnp.where(kept, jnp.take_along_axis(scores, rows, axis=1), -jnp.inf).reshape(-1)
    out = min(post_nms_top_n, kept_scores.shape[0])
    best_scores, best = lax.top_k(kept_scores, out)
    ok = best_scores > -jnp.inf
    result = Proposals(boxes=jnp.where(ok[:, None], kept_boxes[best], 0.0), scores=jnp.where(ok, best_scores, 0.0),
                       valid=ok)
    if out < post_nms_top_n:
        extra = post_nms_top_n - out
        result = Proposals(jnp.pad(result.boxes, ((0, extra), (0, 0))), jnp.pad(result.scores, (0, extra)),
                           jnp.pad(result.valid, (0, extra)))
    return result


def postprocess_detections(logits: jax.Array, deltas: jax.Array, proposals: jax.Array, proposal_valid: jax.Array,
                           image_hw: jax.Array, *, box_weights, score_thresh: float, nms_thresh: float,
                           min_size: float, detections_per_img: int) -> Detections:
    """torchvision's `RoIHeads.postprocess_detections` for one image, on fixed shapes.

    Args:
      logits: [R, K + 1]; deltas: [R, K + 1, 4] (raw); proposals: [R, 4]; proposal_valid: [R].
      image_hw: [2] (H, W) of the image content.

    Returns:
      Detections [detections_per_img], labels in [0, K) (torchvision's label - 1), best first.
    """
    boxes = decode_torchvision(deltas, proposals[:, None, :], box_weights)  # [R, K + 1, 4]
    boxes = clip_to_image(boxes, image_hw)[:, 1:]
    scores = jax.nn.softmax(logits, axis=-1)[:, 1:]
    ok = (proposal_valid[:, None] & (scores > score_thresh) & (boxes[..., 2] - boxes[..., 0] >= min_size)
          & (boxes[..., 3] - boxes[..., 1] >= min_size))
    return multiclass_nms(boxes, jnp.where(ok, scores, -1.0), iou_threshold=nms_thresh, score_threshold=score_thresh,
                          max_output=detections_per_img)


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def predict(model: FPNFasterRCNN, variables, images: jax.Array, image_hw: jax.Array, *,
            settings: FPNTestSettings) -> FPNOutputs:
    """Proposals and detections of a padded batch, one jit.

    Args:
      model: an `FPNFasterRCNN` (static).
      variables: {"params": ..., "batch_stats": ...}.
      images: [N, H, W, 3] normalised, zero-padded at the bottom/right (`jaxdet.models.fpn_transform`).
      image_hw: [N, 2] int (height, width) of each image's content.
      settings: FPNTestSettings (static).

    Returns:
      FPNOutputs: proposals [N, rpn_post_nms_top_n] and detections [N, detections_per_img], input pixels.
    """
    image_hw = jnp.asarray(image_hw, jnp.int32)
    features = model.apply(variables, images, method=model.extract)
    logits, deltas = model.apply(variables, features, method=model.rpn_outputs)
    anchors = level_anchors(images.shape[1:3], [f.shape[1:3] for f in features], model.anchor_sizes,
                            model.anchor_ratios)
    propose = functools.partial(
        fpn_proposals, anchors=anchors, pre_nms_top_n=settings.rpn_pre_nms_top_n,
        post_nms_top_n=settings.rpn_post_nms_top_n, nms_thresh=settings.rpn_nms_thresh,
        min_size=settings.rpn_min_size, score_thresh=settings.rpn_score_thresh)
    proposals = map_images(lambda lg, dl, hw: propose(lg, dl, image_hw=hw))(
        [lax.stop_gradient(x) for x in logits], [lax.stop_gradient(x) for x in deltas], image_hw)
    head = model.apply(variables, features, proposals.boxes, method=model.classify)
    post = functools.partial(postprocess_detections, box_weights=model.box_weights,
                             score_thresh=settings.box_score_thresh, nms_thresh=settings.box_nms_thresh,
                             min_size=settings.box_min_size, detections_per_img=settings.detections_per_img)
    detections = map_images(post)(head.logits, head.deltas, proposals.boxes, proposals.valid, image_hw)
    return FPNOutputs(proposals, detections)


def model_from_config(model_config, dtype=None, num_classes=None) -> FPNFasterRCNN:
    """The `FPNFasterRCNN` of a config's `model` section (`jaxdet.configs.fasterrcnn_resnet50_fpn_coco`).

    Its classes: `num_classes` if given, else `model.num_classes`, else (0) as many as
    `model.pretrained_classes` (the weights file's)."""
    c = model_config
    num_classes = num_classes or int(c.num_classes) or len(c.pretrained_classes)
    if dtype is None:
        dtype = jnp.bfloat16 if c.compute_dtype == "bfloat16" else jnp.float32
    return FPNFasterRCNN(
        num_classes=int(num_classes), stage_sizes=tuple(c.stage_sizes), width=int(c.width),
        trainable_layers=int(c.trainable_layers), bn_eps=float(c.bn_eps), bn_affine_trainable=bool(c.bn_affine_trainable),
        fpn_channels=int(c.fpn_channels), fpn_norm=bool(c.fpn_norm),
        anchor_sizes=tuple(tuple(s) for s in c.anchor_sizes), anchor_ratios=tuple(c.anchor_ratios),
        rpn_conv_depth=int(c.rpn_conv_depth), box_head=str(c.box_head), representation_size=int(c.representation_size),
        pooled_size=int(c.pooled_size), sampling_ratio=int(c.sampling_ratio), canonical_scale=float(c.canonical_scale),
        canonical_level=int(c.canonical_level), box_weights=tuple(float(w) for w in c.box_weights),
        roi_impl=str(c.roi_impl), dtype=dtype)


def settings_from_config(config) -> FPNTestSettings:
    """The `FPNTestSettings` of a config's rpn and test sections."""
    return FPNTestSettings(
        rpn_pre_nms_top_n=int(config.rpn.test_pre_nms), rpn_post_nms_top_n=int(config.rpn.test_post_nms),
        rpn_nms_thresh=float(config.rpn.nms_iou), rpn_min_size=float(config.rpn.min_proposal_size),
        box_score_thresh=float(config.test.score_threshold), box_nms_thresh=float(config.test.nms_iou),
        box_min_size=float(config.model.box_min_size),
        detections_per_img=int(config.test.max_detections))
