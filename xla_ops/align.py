"""RoIAlign: the public API over the native custom calls and the jnp reference.

RoIAlign (He et al. 2017, "Mask R-CNN", section 3) with the semantics of torchvision.ops.roi_align
(which detectron2's ROIAlign shares), written down in docs/roi_align.md: every bin of a RoI is
the mean of a grid of bilinearly interpolated samples; `aligned=True` shifts the RoI by half a
pixel; `sampling_ratio <= 0` samples ceil(bin size) points per bin along each axis; samples
beyond [-1, H] x [-1, W] give 0, others clamp to the edge. Bad RoIs (batch index not finite or
outside [0, N), a coordinate not finite, a size that overflows, an adaptive grid over 2^20
points per axis) give zeros and no gradient; nothing is ever read or written out of bounds.

The second member of the op family of `xla_ops.roi_pool`: the same layouts, RoI forms, dtypes,
`impl`, `deterministic` and `batch_axes`, the same behaviour under jit, grad, vmap (folded into
one call), lax.scan and shard_map.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from xla_ops import _native
from xla_ops.arguments import (check_deterministic, check_inputs, check_output_size, check_spatial_scale,
                               from_kernel_layout, static_int, to_kernel_layout)
from xla_ops.batching import folded_backward, folded_forward
from xla_ops.roi_align_reference import MAX_GRID, roi_align_reference
from xla_ops.sharding import batch_partitioned, batch_shards, vary_together as _vary_together, warn_unpartitioned

FORWARD_TARGET = "jaxdet_roi_align_fwd"
BACKWARD_TARGET = "jaxdet_roi_align_bwd"
IMPLS = _native.IMPLS

# JAX platform name -> (extension module, XLA platform name used for registration).
_EXTENSIONS = {"cpu": ("xla_ops._roi_align_cpu", "cpu"), "cuda": ("xla_ops._roi_align_cuda", "CUDA")}


def is_built(platform):
    """Whether the native RoIAlign op is built and registered for a JAX platform ("cpu", "cuda")."""
    return platform in _EXTENSIONS and _native._load_module(*_EXTENSIONS[platform])[0]


def why_not_built(platform):
    if platform not in _EXTENSIONS:
        return f"no native RoIAlign kernel exists for platform {platform!r}"
    return _native._load_module(*_EXTENSIONS[platform])[1]


class _CallConfig(NamedTuple):
    """Static description of one native call (hashable: it is a nondiff argument)."""

    pooled_hw: tuple
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    deterministic: bool
    feature_shape: tuple  # (N, H, W, C) without any vmapped axis
    dtype: object


def roi_align(features, rois, output_size, spatial_scale, sampling_ratio=-1, aligned=False, *,
              data_format="NHWC", impl="auto", deterministic=None, batch_axes=None):
    """RoIAlign, as torchvision.ops.roi_align.

    Args:
      features: [N, H, W, C] (or [N, C, H, W] with data_format="NCHW"), float32, bfloat16 or
        float16 (computed in float32, rounded once to the features' dtype).
      rois: [K, 5] rows (batch_index, x1, y1, x2, y2) in input pixels, or [N, R, 4] boxes per
        image; any float dtype, used as float32.
      output_size: int or (PH, PW), positive.
      spatial_scale: feature-map pixels per input pixel (1/16 for a stride-16 map), a static
        positive float (used as float32).
      sampling_ratio: samples per bin along each axis; <= 0: ceil(roi size / output size),
        adaptive per RoI. A static int, at most 2^20.
      aligned: False (Mask R-CNN's original) or True (pixel centres: coordinates shifted by
        -0.5, RoIs not forced to at least 1x1).
      data_format: "NHWC" or "NCHW", for features and output alike.
      impl: "ffi" (the custom call; error if not built for this platform), "reference" (pure
        jnp), "auto" (the custom call where built, else the reference with a warning).
      deterministic: backward summation order. On CPU the backward is always deterministic
        (bit-identical run after run). On GPU, None (the default) and False select the atomicAdd
        backward, whose float32 sums may differ in the last bits from run to run; True selects
        the gather backward, bit-identical run after run and to the CPU backward.
      batch_axes: under a device mesh in context (`jax.set_mesh`), the mesh axis or axes the
        batch N is split over; None: every axis not already manual. With [N, R, 4] rois each
        device aligns its own images; [K, 5] rois carry global batch indices and run
        unpartitioned (with a warning), as does a batch that does not split evenly.

    Returns:
      [K, PH, PW, C] (NHWC) or [K, C, PH, PW] (NCHW); [N, R, ...] for [N, R, 4] rois.
      The gradient flows to the features (each bin's cotangent spread over the four
      neighbours of its samples, weight / count each); the RoIs get a zero cotangent.
    """
    features, rois = check_inputs("roi_align", features, rois, data_format)
    align = functools.partial(
        _align, pooled_hw=check_output_size("roi_align", output_size),
        spatial_scale=check_spatial_scale("roi_align", spatial_scale),
        sampling_ratio=_check_sampling_ratio(sampling_ratio), aligned=_check_aligned(aligned),
        data_format=data_format, deterministic=check_deterministic("roi_align", deterministic), impl=_resolve_impl(impl))
    if rois.ndim == 3:
        return batch_partitioned(align, batch_axes=batch_axes, name="roi_align")(features, rois)
    axes, shards = batch_shards(batch_axes)
    if shards > 1:
        warn_unpartitioned("roi_align", f"[K, 5] rois hold global batch indices, so they cannot be split "
                                        f"over the {shards} devices of mesh axes {axes} (pass [N, R, 4] boxes)")
    return align(features, rois)


def _align(features, rois, *, pooled_hw, spatial_scale, sampling_ratio, aligned, data_format,
           deterministic, impl):
    """Checked arguments -> aligned features of this device's images."""
    features, rois, batched_rois = to_kernel_layout(features, rois, data_format)
    out_shape = (rois.shape[0], *pooled_hw, features.shape[3])
    if math.prod(out_shape) == 0 or math.prod(features.shape[:3]) == 0:
        out = jnp.zeros(out_shape, features.dtype) + 0 * jnp.sum(features)
    elif impl == "reference":
        out = roi_align_reference(features, rois, output_size=pooled_hw, spatial_scale=spatial_scale,
                                  sampling_ratio=sampling_ratio, aligned=aligned)
    else:
        config = _CallConfig(pooled_hw, spatial_scale, sampling_ratio, aligned, bool(deterministic),
                             tuple(features.shape), features.dtype)
        out = _align_native(features, rois, config)
    return from_kernel_layout(out, data_format, batched_rois)


# ---------------------------------------------------------------------------------------------
# The argument checks of this op alone (those both ops share: xla_ops.arguments).


def _check_sampling_ratio(sampling_ratio):
    try:
        value = static_int(sampling_ratio)
    except TypeError:
        raise TypeError(f"roi_align: sampling_ratio must be a static int, got {sampling_ratio!r}")
    if value > MAX_GRID:
        raise ValueError(f"roi_align: sampling_ratio must be at most {MAX_GRID}, got {value}")
    return max(value, 0)  # every value <= 0 means the adaptive grid


def _check_aligned(aligned):
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"roi_align: aligned must be a bool, got {aligned!r}")
    return bool(aligned)


def _resolve_impl(impl):
    return _native.resolve_impl("roi_align", impl, is_built, why_not_built)


# ---------------------------------------------------------------------------------------------
# The custom calls and their VJP (vmap folds into one call: xla_ops.batching).


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _align_native(features, rois, config):
    return _forward_call(features, rois, config)


def _align_native_fwd(features, rois, config):
    return _forward_call(features, rois, config), rois


def _align_native_bwd(config, rois, grad_out):
    grad = _backward_call(grad_out.astype(config.dtype), rois, config.feature_shape[0], config)
    return grad.astype(config.dtype), jnp.zeros_like(rois)


_align_native.defvjp(_align_native_fwd, _align_native_bwd)


def _attributes(config):
    return dict(spatial_scale=np.float32(config.spatial_scale), sampling_ratio=np.int64(config.sampling_ratio),
                aligned=bool(config.aligned))


def _ffi_forward(features, rois, config):
    ph, pw = config.pooled_hw
    features, rois = operands = _vary_together(features, rois)
    out = jax.ffi.ffi_call(
        FORWARD_TARGET, jax.ShapeDtypeStruct((rois.shape[0], ph, pw, features.shape[3]), features.dtype),
    )(features, rois, pooled_h=np.int64(ph), pooled_w=np.int64(pw), **_attributes(config))
    return _vary_together(out, like=operands)[0]


def _ffi_backward(grad_out, rois, num_images, config):
    _, h, w, c = config.feature_shape
    operands = _vary_together(grad_out, rois)
    grad = jax.ffi.ffi_call(
        BACKWARD_TARGET, jax.ShapeDtypeStruct((num_images, h, w, c), jnp.float32),
    )(*operands, deterministic=config.deterministic, **_attributes(config))
    return _vary_together(grad, like=operands)[0]


def _forward_call(features, rois, config):
    """features [N, H, W, C], rois [K, 5] -> [K, PH, PW, C]."""
    return folded_forward(lambda f, r: (_ffi_forward(f, r, config),), features, rois)[0]


def _backward_call(grad_out, rois, num_images, config):
    """grad_out: [K, PH, PW, C]; rois: [K, 5] -> float32 [num_images, H, W, C]."""
    return folded_backward(lambda r, per_roi, n: _ffi_backward(per_roi[0], r, n, config),
                           rois, (grad_out,), num_images)
