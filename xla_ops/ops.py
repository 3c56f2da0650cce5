"""RoI max pooling: the public API over the native custom calls and the jnp reference.

Semantics (RoI max pooling of Fast R-CNN, Girshick 2015): for every RoI `(batch_index, x1, y1, x2, y2)` in input pixels
and every bin of an `output_size` grid, the max of the feature map over the bin and its argmax,
the flat index `h * W + w` inside that image's plane.

- rounding="none" (default, unrounded): x1 * scale, (x2 + 1) * scale without rounding; bin
  edges floor / ceil; a RoI of non-positive size pools to zeros.
- rounding="round" (Caffe, torchvision): scaled coordinates rounded half away from zero, size
  max(x2 - x1 + 1, 1).
- rounding="adaptive" (the `SlowROIPool` of the PyTorch Fast R-CNN tutorials): the crop of
  feature pixels floor(x1 * scale) to floor(x2 * scale), both included, clipped to the map,
  then adaptive max pooling (torch.nn.AdaptiveMaxPool2d's windows: bin i of a crop of length L
  covers [floor(i * L / n), ceil((i + 1) * L / n))). Where those crops slice from negative
  indices (counted from the end, in Python), this crop starts at 0.
  `xla_ops.rois_from_fractions` gives the RoIs of boxes in [0, 1] image fractions.
- Bins are clipped to the map; an empty bin gives 0 with argmax -1.
- Invalid RoIs (batch index not in [0, N) or not finite, a non-finite coordinate, or a scaled
  width or height that is not finite, as when a coordinate overflows to inf once scaled) give 0
  with argmax -1. Nothing is ever read or written out of bounds.
- Ties: the first maximal element in row-major order wins. NaN features propagate: a bin holding
  a NaN outputs NaN and its argmax is the first NaN (as jnp.max does). Kernel and reference agree.
- Gradient: the output cotangent is added to the feature at the argmax (for half types summed in
  float32 and rounded to the features' dtype once, at the end); RoIs get a zero cotangent.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from xla_ops import _native
from xla_ops.arguments import (check_deterministic, check_inputs, check_output_size, check_spatial_scale,
                               from_kernel_layout, to_kernel_layout)
from xla_ops.batching import folded_backward, folded_forward
from xla_ops.reference import ROUNDINGS, roi_pool_reference
from xla_ops.sharding import batch_partitioned, batch_shards, vary_together as _vary_together, warn_unpartitioned

IMPLS = _native.IMPLS


class _CallConfig(NamedTuple):
    """Static description of one native call (hashable: it is a nondiff argument)."""

    pooled_hw: tuple
    spatial_scale: float
    rounding: int  # index into ROUNDINGS, as the kernels number them
    deterministic: bool
    feature_shape: tuple  # (N, H, W, C) without any vmapped axis
    dtype: object


def roi_pool(features, rois, output_size=(7, 7), spatial_scale=1 / 16, *, data_format="NHWC",
             rounding="none", impl="auto", deterministic=None, batch_axes=None):
    """RoI max pooling.

    Args:
      features: [N, H, W, C] (or [N, C, H, W] with data_format="NCHW"), float32, bfloat16 or
        float16.
      rois: [K, 5] rows (batch_index, x1, y1, x2, y2) in input pixels, or [N, R, 4] boxes per
        image; any float dtype, used as float32.
      output_size: int or (PH, PW), positive.
      spatial_scale: feature-map pixels per input pixel (1/16 for VGG16 conv5_3).
      data_format: "NHWC" or "NCHW", for features and output alike.
      rounding: "none" (unrounded edges), "round" (Caffe/torchvision) or "adaptive" (crop, then
        adaptive max pooling, as the PyTorch tutorials' SlowROIPool).
      impl: "ffi" (the custom call; error if not built for this platform), "reference" (pure
        jnp), "auto" (the custom call where built, else the reference with a warning).
      deterministic: backward summation order. On CPU the backward is always deterministic
        (bit-identical run after run), whatever this is: None, True and False alike. On GPU,
        None (the default) and False select the fast atomicAdd backward, whose float32 sums may
        differ in the last bits from run to run; True selects the gather backward,
        bit-identical run after run (and to the CPU backward).
      batch_axes: under a device mesh in context (`jax.set_mesh`), the mesh axis or axes the
        batch N is split over; None: every axis not already manual. With [N, R, 4] rois each
        device pools its own images (`xla_ops.sharding`), and no feature map crosses devices.
        [K, 5] rois carry global batch indices, so they are pooled unpartitioned (a warning
        says so), as is a batch that does not split evenly over the devices.

    Returns:
      [K, PH, PW, C] (NHWC) or [K, C, PH, PW] (NCHW); [N, R, ...] for [N, R, 4] rois.
    """
    return roi_pool_with_argmax(features, rois, output_size, spatial_scale,
                                data_format=data_format, rounding=rounding, impl=impl,
                                deterministic=deterministic, batch_axes=batch_axes)[0]


def roi_pool_with_argmax(features, rois, output_size=(7, 7), spatial_scale=1 / 16, *,
                         data_format="NHWC", rounding="none", impl="auto", deterministic=None,
                         batch_axes=None):
    """As `roi_pool`, also returning argmax: int32 of the output's shape, the flat index
    h * W + w of each max inside its image plane, -1 for an empty bin or invalid RoI."""
    features, rois = check_inputs("roi_pool", features, rois, data_format)
    pool = functools.partial(
        _pool, pooled_hw=check_output_size("roi_pool", output_size),
        spatial_scale=check_spatial_scale("roi_pool", spatial_scale),
        data_format=data_format, rounding=_check_rounding(rounding),
        deterministic=check_deterministic("roi_pool", deterministic), impl=_resolve_impl(impl))
    if rois.ndim == 3:
        return batch_partitioned(pool, batch_axes=batch_axes, name="roi_pool")(features, rois)
    axes, shards = batch_shards(batch_axes)
    if shards > 1:
        warn_unpartitioned("roi_pool", f"[K, 5] rois hold global batch indices, so they cannot be split "
                                       f"over the {shards} devices of mesh axes {axes} (pass [N, R, 4] boxes)")
    return pool(features, rois)


def rois_from_fractions(boxes, batch_index, feature_hw):
    """RoIs for rounding="adaptive" from boxes given as fractions of the image.

    The `SlowROIPool` of the PyTorch Fast R-CNN tutorials takes boxes (x1, y1, x2, y2) in [0, 1]
    and crops the feature pixels floor(x1 * W) to ceil(x2 * W), end excluded (and likewise along
    y with H), computing in float64 with numpy. This does the same arithmetic and returns the
    RoIs that pool the same crops with rounding="adaptive" and spatial_scale=1.

    Args:
      boxes: [K, 4] fractions (x1, y1, x2, y2), array-like.
      batch_index: [K] image of each box (or one int for all).
      feature_hw: (H, W) of the feature map.
    Returns:
      [K, 5] float32 numpy array (batch_index, x1, y1, x2, y2) in feature pixels, x2 and y2
      included in the crop.
    """
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"rois_from_fractions: boxes must be [K, 4], got shape {boxes.shape}")
    batch = np.broadcast_to(np.asarray(batch_index, np.float64), boxes.shape[:1])
    h, w = feature_hw
    x1, x2 = np.floor(boxes[:, 0] * w), np.ceil(boxes[:, 2] * w) - 1
    y1, y2 = np.floor(boxes[:, 1] * h), np.ceil(boxes[:, 3] * h) - 1
    return np.stack([batch, x1, y1, x2, y2], axis=1).astype(np.float32)


def _pool(features, rois, *, pooled_hw, spatial_scale, data_format, rounding, deterministic, impl):
    """Checked arguments -> (pooled, argmax) on this device's images."""
    features, rois, batched_rois = to_kernel_layout(features, rois, data_format)
    out_shape = (rois.shape[0], *pooled_hw, features.shape[3])
    if math.prod(out_shape) == 0 or math.prod(features.shape[:3]) == 0:
        out = jnp.zeros(out_shape, features.dtype) + 0 * jnp.sum(features)
        argmax = jnp.full(out_shape, -1, jnp.int32)
    elif impl == "reference":
        out, argmax = roi_pool_reference(features, rois, output_size=pooled_hw,
                                         spatial_scale=spatial_scale, rounding=rounding)
    else:
        config = _CallConfig(pooled_hw, spatial_scale, ROUNDINGS.index(rounding),
                             bool(deterministic), tuple(features.shape), features.dtype)
        out, argmax = _pool_native(features, rois, config)
    return tuple(from_kernel_layout(x, data_format, batched_rois) for x in (out, argmax))


# ---------------------------------------------------------------------------------------------
# The argument checks of this op alone (those both ops share: xla_ops.arguments).


def _check_rounding(rounding):
    if rounding not in ROUNDINGS:
        raise ValueError(f"roi_pool: rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return rounding


def _resolve_impl(impl):
    return _native.resolve_impl("roi_pool", impl, _native.is_built, _native.why_not_built)


# ---------------------------------------------------------------------------------------------
# The custom calls and their VJP (vmap folds into one call: xla_ops.batching).


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pool_native(features, rois, config):
    return _forward_call(features, rois, config)


def _pool_native_fwd(features, rois, config):
    out, argmax = _forward_call(features, rois, config)
    return (out, argmax), (rois, argmax)


def _pool_native_bwd(config, residuals, cotangents):
    rois, argmax = residuals
    grad_out, _ = cotangents  # argmax is an integer output: no cotangent
    grad = _backward_call(grad_out.astype(config.dtype), rois, argmax, config.feature_shape[0],
                          config)
    return grad.astype(config.dtype), jnp.zeros_like(rois)


_pool_native.defvjp(_pool_native_fwd, _pool_native_bwd)


def _ffi_forward(features, rois, config):
    ph, pw = config.pooled_hw
    shape = (rois.shape[0], ph, pw, features.shape[3])
    features, rois = operands = _vary_together(features, rois)
    results = jax.ffi.ffi_call(
        _native.FORWARD_TARGET,
        (jax.ShapeDtypeStruct(shape, features.dtype), jax.ShapeDtypeStruct(shape, jnp.int32)),
    )(features, rois, pooled_h=np.int64(ph), pooled_w=np.int64(pw),
      spatial_scale=np.float32(config.spatial_scale), rounding=np.int32(config.rounding))
    return tuple(_vary_together(*results, like=operands))


def _ffi_backward(grad_out, rois, argmax, num_images, config):
    _, h, w, c = config.feature_shape
    operands = _vary_together(grad_out, rois, argmax)
    grad = jax.ffi.ffi_call(
        _native.BACKWARD_TARGET, jax.ShapeDtypeStruct((num_images, h, w, c), jnp.float32),
    )(*operands, deterministic=config.deterministic,
      spatial_scale=np.float32(config.spatial_scale), rounding=np.int32(config.rounding))
    return _vary_together(grad, like=operands)[0]


def _forward_call(features, rois, config):
    """features [N, H, W, C], rois [K, 5] -> (out, argmax), each [K, PH, PW, C]."""
    return folded_forward(lambda f, r: _ffi_forward(f, r, config), features, rois)


def _backward_call(grad_out, rois, argmax, num_images, config):
    """grad_out, argmax: [K, PH, PW, C]; rois: [K, 5] -> float32 [num_images, H, W, C]."""
    return folded_backward(lambda r, per_roi, n: _ffi_backward(per_roi[0], r, per_roi[1], n, config),
                           rois, (grad_out, argmax), num_images)
