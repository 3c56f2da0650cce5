"""The arguments both RoI ops take (RoI max pooling, `xla_ops.ops`; RoIAlign, `xla_ops.align`):
their checks, and the layouts they accept around the kernels' NHWC and [K, 5].

Shape, dtype and value errors name the op and the argument; data-dependent problems (bad batch
indices, NaN coordinates, ...) are the kernels' business and give zeros.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

FEATURE_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
DATA_FORMATS = ("NHWC", "NCHW")


def check_inputs(op, features, rois, data_format):
    """-> (features, rois as float32): [N, H, W, C] (or NCHW) and [K, 5] or [N, R, 4]."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"{op}: data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    features = jnp.asarray(features)
    rois = jnp.asarray(rois)
    if features.ndim != 4:
        layout = "[N, H, W, C]" if data_format == "NHWC" else "[N, C, H, W]"
        raise ValueError(f"{op}: features must be {layout}, got shape {features.shape}")
    if features.dtype not in FEATURE_DTYPES:
        raise TypeError(f"{op}: features must be float32, bfloat16 or float16, got {features.dtype}")
    if not jnp.issubdtype(rois.dtype, jnp.floating):
        raise TypeError(f"{op}: rois must be a float array, got {rois.dtype}")
    if rois.ndim == 3 and rois.shape[2] == 4:
        if rois.shape[0] != features.shape[0]:
            raise ValueError(f"{op}: rois [N, R, 4] has N={rois.shape[0]} but features have "
                             f"N={features.shape[0]}")
    elif rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"{op}: rois must be [K, 5] (batch_index, x1, y1, x2, y2) or "
                         f"[N, R, 4], got shape {rois.shape}")
    return features, rois.astype(jnp.float32)


def static_int(value):
    """A Python or numpy integer (not a bool) as an int; TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(value)
    return int(value)


def check_output_size(op, output_size):
    """An int or a pair of positive ints -> (PH, PW)."""
    size = (output_size, output_size) if isinstance(output_size, (int, np.integer)) else output_size
    try:
        ph, pw = (static_int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: output_size must be an int or a pair of ints, got {output_size!r}")
    if ph <= 0 or pw <= 0:
        raise ValueError(f"{op}: output_size must be positive, got {output_size!r}")
    return ph, pw


def check_spatial_scale(op, spatial_scale):
    """A static positive finite float, rounded to float32 as the kernels read it."""
    if isinstance(spatial_scale, jax.core.Tracer):
        raise TypeError(f"{op}: spatial_scale must be a static Python float, not a traced value")
    try:
        value = float(spatial_scale)
    except TypeError:
        raise TypeError(f"{op}: spatial_scale must be a float, got {spatial_scale!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{op}: spatial_scale must be positive and finite, got {spatial_scale!r}")
    return float(np.float32(value))


def check_deterministic(op, deterministic):
    if deterministic not in (None, True, False):
        raise ValueError(f"{op}: deterministic must be None or a bool, got {deterministic!r}")
    return deterministic


def to_kernel_layout(features, rois, data_format):
    """Checked arguments -> (features [N, H, W, C], rois [K, 5], the [N, R] of [N, R, 4] rois or None).

    [N, R, 4] boxes become [N * R, 5] RoIs, each with its image's index."""
    if data_format == "NCHW":
        features = jnp.transpose(features, (0, 2, 3, 1))
    batched_rois = None
    if rois.ndim == 3:
        batched_rois = rois.shape[:2]
        index = jnp.broadcast_to(jnp.arange(rois.shape[0], dtype=jnp.float32)[:, None, None],
                                 rois.shape[:2] + (1,))
        rois = jnp.concatenate([index, rois], axis=2).reshape(-1, 5)
    return features, rois, batched_rois


def from_kernel_layout(out, data_format, batched_rois):
    """A [K, PH, PW, C] result -> the caller's layout: NCHW if asked, [N, R, ...] for [N, R, 4] rois."""
    if data_format == "NCHW":
        out = jnp.transpose(out, (0, 3, 1, 2))
    if batched_rois is not None:
        out = out.reshape(batched_rois + out.shape[1:])
    return out
