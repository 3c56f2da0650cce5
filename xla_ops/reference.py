"""RoI max pooling in pure `jax.numpy`: the ground truth the native kernels are tested against.

The bin arithmetic mirrors `csrc/roi_pool_bins.h` operation by operation, in float32 and with
every product kept apart from the following sum (an optimization barrier stops XLA from fusing
them into a multiply-add that would round differently), so the bins, the pooled values and the
argmax equal the kernels' bit for bit. The output is the feature gathered at the argmax, so
its gradient (JAX's autodiff of that gather) is the kernels' scatter of the cotangent through the
argmax, ties and NaNs included. As in the kernels, that scatter-add is summed in float32 for the
half types and rounded to the features' dtype once, at the end.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

ROUNDINGS = ("none", "round")


_FLT_MIN = 1.17549435e-38


def _flush(x):
    """Subnormals to (signed) zero, as `Flush` in roi_pool_bins.h and XLA's CPU backend do."""
    return jnp.where(jnp.abs(x) < _FLT_MIN, jnp.copysign(jnp.zeros_like(x), x), x)


def _mul(a, b):
    return _flush(jax.lax.optimization_barrier(a * b))


def _add(a, b):
    return _flush(a + b)


def _div(a, count):
    # XLA rewrites a / broadcast(c) as a * (1 / c), which is not correctly rounded: divide by
    # an opaque full-size array instead.
    divisor = jax.lax.optimization_barrier(jnp.full(a.shape, count, jnp.float32))
    return _flush(a / divisor)


def _round_half_away(x):
    """C's roundf: halves round away from zero (jnp.round rounds them to even)."""
    t = jnp.trunc(x)
    return jnp.where(jnp.abs(x - t) >= 0.5, t + jnp.sign(x), t)


class RoiGeometry(NamedTuple):
    """Per-RoI mapping onto the feature map (cf. `MapRoi` in roi_pool_bins.h).

    batch: [K] int32, -1 for an invalid RoI; start_h, start_w, bin_h, bin_w: [K] float32.
    """

    batch: jax.Array
    start_h: jax.Array
    start_w: jax.Array
    bin_h: jax.Array
    bin_w: jax.Array


def map_rois(rois, *, spatial_scale, num_images, pooled_hw, rounding):
    """rois: [K, 5] float32 (batch_index, x1, y1, x2, y2) -> RoiGeometry of [K] arrays."""
    rois = jax.lax.stop_gradient(rois.astype(jnp.float32))
    scale = jnp.float32(spatial_scale)
    b, rx1, ry1, rx2, ry2 = (rois[:, i] for i in range(5))
    b = _flush(b)
    valid = jnp.all(jnp.isfinite(rois), axis=1) & (b >= 0) & (b < num_images)
    if rounding == "none":
        x1, y1 = _mul(rx1, scale), _mul(ry1, scale)
        x2, y2 = _mul(_add(rx2, 1.0), scale), _mul(_add(ry2, 1.0), scale)
        w, h = _add(x2, -x1), _add(y2, -y1)
        valid &= (w > 0) & (h > 0)
    else:
        x1, y1 = _round_half_away(_mul(rx1, scale)), _round_half_away(_mul(ry1, scale))
        x2, y2 = _round_half_away(_mul(rx2, scale)), _round_half_away(_mul(ry2, scale))
        w = jnp.maximum(_add(_add(x2, -x1), 1.0), 1.0)
        h = jnp.maximum(_add(_add(y2, -y1), 1.0), 1.0)
    valid &= jnp.isfinite(w) & jnp.isfinite(h)
    ph, pw = pooled_hw
    batch = jnp.where(valid, jnp.where(valid, b, 0).astype(jnp.int32), -1)
    return RoiGeometry(batch, y1, x1, _div(h, ph), _div(w, pw))


def bin_ranges(start, bin_size, num_bins, size, *, rounding):
    """Half-open pixel ranges of the bins along one axis (cf. `BinAlongAxis`).

    start, bin_size: [K] float32. Returns (begin, end): [K, num_bins] int32, clipped to [0, size].
    """
    index = jnp.arange(num_bins, dtype=jnp.float32)
    lo_offset = _mul(jnp.broadcast_to(index, (start.shape[0], num_bins)), bin_size[:, None])
    hi_offset = _mul(jnp.broadcast_to(index + 1.0, (start.shape[0], num_bins)), bin_size[:, None])
    if rounding == "none":
        lo = jnp.floor(_add(lo_offset, start[:, None]))
        hi = jnp.ceil(_add(hi_offset, start[:, None]))
    else:
        lo = _add(jnp.floor(lo_offset), start[:, None])
        hi = _add(jnp.ceil(hi_offset), start[:, None])
    # Clamp in float before the cast so huge or infinite edges cannot overflow (as the kernels do).
    clip = lambda e: jnp.clip(jnp.nan_to_num(e, nan=0.0), 0.0, float(size)).astype(jnp.int32)
    return clip(lo), clip(hi)


@jax.custom_jvp
def _with_tangent_of(value, value32):
    """`value`, bit for bit, differentiated as `value32.astype(value.dtype)`.

    The pooled output is gathered from the features in their own dtype, so every bit of the
    kernels' copy is kept (NaN payloads included, which a float32 round trip would canonicalize),
    while its tangent comes from the same gather out of the float32 features: reverse mode then
    scatter-adds the cotangent in float32, as the kernels do.
    """
    del value32
    return value


@_with_tangent_of.defjvp
def _with_tangent_of_jvp(primals, tangents):
    value, _ = primals
    return value, tangents[1].astype(value.dtype)


def _first_hit(hit, axis):
    """Index of the first True along `axis`, -1 where there is none."""
    return jnp.where(jnp.any(hit, axis=axis), jnp.argmax(hit, axis=axis), -1)


def _max(x, axis):
    """jnp.max with NaN propagating. XLA's CPU backend does not always propagate it: a reduction
    vectorised over many channels (33 in the tests) can drop the NaN, so the rule is explicit."""
    return jnp.where(jnp.any(jnp.isnan(x), axis=axis), jnp.nan, jnp.max(x, axis=axis))


def _is_max(x, m):
    """Where x equals the max m; NaN counts as equal to a NaN max (NaN propagates)."""
    return (x == m) | (jnp.isnan(x) & jnp.isnan(m))


def roi_pool_reference(features, rois, *, output_size, spatial_scale, rounding="none"):
    """RoI max pooling with argmax, NHWC.

    features: [N, H, W, C] float; rois: [K, 5] (batch_index, x1, y1, x2, y2) in input pixels.
    Returns (out [K, PH, PW, C] of the features' dtype, argmax [K, PH, PW, C] int32: the flat
    index h * W + w of the max in its image plane, -1 for an empty bin or invalid RoI).
    Max first over the columns of each bin, then over its rows: the first row holding the max
    and that row's first column give the row-major first occurrence, the kernels' tie rule.
    """
    features, rois = jnp.asarray(features), jnp.asarray(rois)
    n, h, w, _ = features.shape
    ph, pw = output_size
    geo = map_rois(rois, spatial_scale=spatial_scale, num_images=n, pooled_hw=output_size,
                   rounding=rounding)
    valid = geo.batch >= 0
    h_lo, h_hi = bin_ranges(geo.start_h, geo.bin_h, ph, h, rounding=rounding)  # [K, PH]
    w_lo, w_hi = bin_ranges(geo.start_w, geo.bin_w, pw, w, rounding=rounding)  # [K, PW]
    h_lo, h_hi = jnp.where(valid[:, None], h_lo, 0), jnp.where(valid[:, None], h_hi, 0)
    w_lo, w_hi = jnp.where(valid[:, None], w_lo, 0), jnp.where(valid[:, None], w_hi, 0)

    # The gradient flows through float32 features only: the scatter-add that autodiff makes of
    # the gathers below accumulates in float32 over all RoIs, and the transpose of this cast
    # rounds the sum to a half dtype once (the kernels' "float32 accumulation for half types").
    features32 = features.astype(jnp.float32)
    exact = jax.lax.stop_gradient(features)

    def pool_one(args):
        batch, hl, hh, wl, wh = args
        image32 = features32[jnp.maximum(batch, 0)]  # [H, W, C]
        # Compare in float32 with subnormals flushed, exactly as the kernels compare.
        key = _flush(jax.lax.stop_gradient(image32))
        cols = jnp.arange(w)
        col_mask = (cols[None, :] >= wl[:, None]) & (cols[None, :] < wh[:, None])  # [PW, W]
        masked = jnp.where(col_mask[None, :, :, None], key[:, None], -jnp.inf)  # [H, PW, W, C]
        row_max = _max(masked, axis=2)  # [H, PW, C]
        row_arg = _first_hit(col_mask[None, :, :, None] & _is_max(masked, row_max[:, :, None]),
                             axis=2)  # [H, PW, C]
        rows = jnp.arange(h)
        row_mask = (rows[None, :] >= hl[:, None]) & (rows[None, :] < hh[:, None])  # [PH, H]
        masked_rows = jnp.where(row_mask[:, :, None, None], row_max[None], -jnp.inf)
        bin_max = _max(masked_rows, axis=1)  # [PH, PW, C]
        best_row = _first_hit(row_mask[:, :, None, None] & _is_max(masked_rows, bin_max[:, None]),
                              axis=1)  # [PH, PW, C]
        col = jnp.take_along_axis(row_arg[None], jnp.maximum(best_row, 0)[:, None], axis=1)[:, 0]
        empty = (hh <= hl)[:, None, None] | (wh <= wl)[None, :, None]  # [PH, PW, 1]
        argmax = jnp.where(empty, -1, best_row * w + col).astype(jnp.int32)
        # The output is the element at the argmax, so its gradient is the scatter through it.
        index = jnp.maximum(argmax, 0).reshape(-1, argmax.shape[-1])  # [PH*PW, C]
        gather = lambda image: jnp.take_along_axis(image.reshape(h * w, -1), index,
                                                   axis=0).reshape(argmax.shape)
        out = _with_tangent_of(gather(exact[jnp.maximum(batch, 0)]), gather(image32))
        out = jnp.where(empty, jnp.zeros((), features.dtype), out)
        return out, argmax

    k = rois.shape[0]
    if k == 0 or n == 0 or h == 0 or w == 0:
        return (jnp.zeros((k, ph, pw, features.shape[3]), features.dtype),
                jnp.full((k, ph, pw, features.shape[3]), -1, jnp.int32))
    return jax.lax.map(pool_one, (geo.batch, h_lo, h_hi, w_lo, w_hi), batch_size=min(k, 16))

