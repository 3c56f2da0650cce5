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
from xla_ops.reference import ROUNDINGS, roi_pool_reference
from xla_ops.sharding import batch_partitioned, batch_shards, vary_together as _vary_together, warn_unpartitioned

FEATURE_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
IMPLS = _native.IMPLS
DATA_FORMATS = ("NHWC", "NCHW")


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
    features, rois = _check_inputs(features, rois, data_format)
    pool = functools.partial(
        _pool, pooled_hw=_check_output_size(output_size), spatial_scale=_check_spatial_scale(spatial_scale),
        data_format=data_format, rounding=_check_rounding(rounding),
        deterministic=_check_deterministic(deterministic), impl=_resolve_impl(impl))
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
    if data_format == "NCHW":
        features = jnp.transpose(features, (0, 2, 3, 1))
    batched_rois = None
    if rois.ndim == 3:  # [N, R, 4] -> [N * R, 5] with each box's image index
        batched_rois = rois.shape[:2]
        index = jnp.broadcast_to(jnp.arange(rois.shape[0], dtype=jnp.float32)[:, None, None],
                                 rois.shape[:2] + (1,))
        rois = jnp.concatenate([index, rois], axis=2).reshape(-1, 5)
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

    if data_format == "NCHW":
        out, argmax = (jnp.transpose(x, (0, 3, 1, 2)) for x in (out, argmax))
    if batched_rois is not None:
        out, argmax = (x.reshape(batched_rois + x.shape[1:]) for x in (out, argmax))
    return out, argmax


# ---------------------------------------------------------------------------------------------
# Argument checks: shape and dtype errors name the argument; data-dependent problems (bad batch
# indices, NaN coordinates, ...) are the kernels' business and give zeros with argmax -1.


def _check_inputs(features, rois, data_format):
    """-> (features, rois as float32): [N, H, W, C] (or NCHW) and [K, 5] or [N, R, 4]."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"roi_pool: data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    features = jnp.asarray(features)
    rois = jnp.asarray(rois)
    if features.ndim != 4:
        layout = "[N, H, W, C]" if data_format == "NHWC" else "[N, C, H, W]"
        raise ValueError(f"roi_pool: features must be {layout}, got shape {features.shape}")
    if features.dtype not in FEATURE_DTYPES:
        raise TypeError("roi_pool: features must be float32, bfloat16 or float16, "
                        f"got {features.dtype}")
    if not jnp.issubdtype(rois.dtype, jnp.floating):
        raise TypeError(f"roi_pool: rois must be a float array, got {rois.dtype}")
    if rois.ndim == 3 and rois.shape[2] == 4:
        if rois.shape[0] != features.shape[0]:
            raise ValueError(f"roi_pool: rois [N, R, 4] has N={rois.shape[0]} but features have "
                             f"N={features.shape[0]}")
    elif rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError("roi_pool: rois must be [K, 5] (batch_index, x1, y1, x2, y2) or "
                         f"[N, R, 4], got shape {rois.shape}")
    return features, rois.astype(jnp.float32)


def _check_rounding(rounding):
    if rounding not in ROUNDINGS:
        raise ValueError(f"roi_pool: rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return rounding


def _check_deterministic(deterministic):
    if deterministic not in (None, True, False):
        raise ValueError(f"roi_pool: deterministic must be None or a bool, got {deterministic!r}")
    return deterministic


def _check_output_size(output_size):
    size = (output_size, output_size) if isinstance(output_size, (int, np.integer)) else output_size
    try:
        ph, pw = (operator_index(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"roi_pool: output_size must be an int or a pair of ints, got {output_size!r}")
    if ph <= 0 or pw <= 0:
        raise ValueError(f"roi_pool: output_size must be positive, got {output_size!r}")
    return ph, pw


def operator_index(value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(value)
    return int(value)


def _check_spatial_scale(spatial_scale):
    if isinstance(spatial_scale, jax.core.Tracer):
        raise TypeError("roi_pool: spatial_scale must be a static Python float, not a traced value")
    try:
        value = float(spatial_scale)
    except TypeError:
        raise TypeError(f"roi_pool: spatial_scale must be a float, got {spatial_scale!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"roi_pool: spatial_scale must be positive and finite, got {spatial_scale!r}")
    return float(np.float32(value))


def _resolve_impl(impl):
    return _native.resolve_impl("roi_pool", impl, _native.is_built, _native.why_not_built)


# ---------------------------------------------------------------------------------------------
# The custom calls, their VJP, and their batching rule.


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


def _fold_rois(rois, axis_size, num_images):
    """rois [B, K, 5] of B independent problems over N images each -> [B*K, 5] indexing the
    [B*N] folded images. Invalid batch indices stay invalid (-1) rather than landing in another
    problem's images."""
    rois = jnp.asarray(rois)
    b = rois[..., 0]
    ok = jnp.isfinite(b) & (b >= 0) & (b < num_images)
    offset = (jnp.arange(axis_size, dtype=jnp.float32) * num_images)[:, None]
    rois = rois.at[..., 0].set(jnp.where(ok, jnp.trunc(b) + offset, -1.0))
    return rois.reshape(-1, 5)


def _broadcast_unbatched(axis_size, in_batched, *args):
    return [x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape)
            for x, batched in zip(args, in_batched)]


def _forward_call(features, rois, config):
    # vmap folds the mapped axis into the images and RoIs of ONE custom call, rather than
    # looping over the batch.
    @jax.custom_batching.custom_vmap
    def forward(features, rois):
        return _ffi_forward(features, rois, config)

    @forward.def_vmap
    def forward_batched(axis_size, in_batched, features, rois):
        features_batched, rois_batched = in_batched
        num_rois = rois.shape[1] if rois_batched else rois.shape[0]
        if features_batched:
            (rois,) = _broadcast_unbatched(axis_size, [rois_batched], rois)
            rois = _fold_rois(rois, axis_size, features.shape[1])
            features = features.reshape((-1,) + features.shape[2:])
        else:  # every problem pools the same images
            rois = rois.reshape(-1, 5)
        out, argmax = forward(features, rois)
        unfold = lambda x: x.reshape((axis_size, num_rois) + x.shape[1:])
        return (unfold(out), unfold(argmax)), (True, True)

    return forward(features, rois)


def _backward_call(grad_out, rois, argmax, num_images, config):
    """grad_out, argmax: [K, PH, PW, C]; rois: [K, 5] -> float32 [num_images, H, W, C]."""

    @jax.custom_batching.custom_vmap
    def backward(grad_out, rois, argmax):
        return _ffi_backward(grad_out, rois, argmax, num_images, config)

    @backward.def_vmap
    def backward_batched(axis_size, in_batched, grad_out, rois, argmax):
        # Always produce per-problem gradients [B, N, H, W, C]; where the primal features were
        # shared by the problems, custom_vjp's batching sums them over B.
        grad_out, rois, argmax = _broadcast_unbatched(axis_size, in_batched, grad_out, rois, argmax)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        grad = _backward_call(flat(grad_out), _fold_rois(rois, axis_size, num_images),
                              flat(argmax), axis_size * num_images, config)
        return grad.reshape((axis_size, num_images) + grad.shape[1:]), True

    return backward(grad_out, rois, argmax)
