"""RoIAlign in pure `jax.numpy`: the ground truth the native kernels are tested against.

torchvision's semantics (torchvision.ops.roi_align; He et al. 2017, "Mask R-CNN", section 3),
as `csrc/roi_align_bins.h` writes them and docs/roi_align.md states them: the same float32
geometry, sample positions and bilinear weights, operation by operation (products kept apart
from the sums that follow them by an optimization barrier, so that XLA cannot fuse them into a
multiply-add), and every sample read and weighted as torchvision does. Only the order in which
a bin's samples are summed differs from the kernels' (a tree, not a sequence), so values agree
to float32 rounding rather than bit for bit.

The samples of a bin along an axis are visited through a window of static length: the whole
grid for a fixed `sampling_ratio`, and for an adaptive grid (sampling_ratio <= 0, ceil(bin)
samples) the samples inside [-1, size], which are consecutive (positions increase with the
sample's index) and at most 2 * size + 8 for any grid up to the 2^20 allowed: found by
bisection, as the kernels find them.

The output's gradient is JAX's autodiff of the gathers (a scatter-add of cotangent * weight /
count), summed in float32 for the half types and rounded once, as the kernels do.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

MAX_GRID = 1 << 20  # kMaxGrid of roi_align_bins.h
_GRID_BITS = 21  # bisection steps that cover [0, MAX_GRID]
_FLT_MIN = 1.17549435e-38


def _mul(a, b):
    """a * b, never contracted with a following sum."""
    return jax.lax.optimization_barrier(a * b)


class AlignGeometry(NamedTuple):
    """Per-RoI mapping onto the feature map (cf. `MapRoi` in roi_align_bins.h); [K] arrays.

    batch: int32, -1 for an invalid RoI; start_h, start_w, bin_h, bin_w, count: float32;
    grid_h, grid_w: int32 samples per bin along each axis (0: none).
    """

    batch: jax.Array
    start_h: jax.Array
    start_w: jax.Array
    bin_h: jax.Array
    bin_w: jax.Array
    grid_h: jax.Array
    grid_w: jax.Array
    count: jax.Array


def map_rois(rois, *, spatial_scale, num_images, output_size, sampling_ratio, aligned):
    """rois: [K, 5] (batch_index, x1, y1, x2, y2) in input pixels -> AlignGeometry."""
    rois = jax.lax.stop_gradient(jnp.asarray(rois, jnp.float32))
    scale = jnp.float32(spatial_scale)
    b = rois[:, 0]
    b = jnp.where(jnp.abs(b) < _FLT_MIN, jnp.zeros_like(b), b)  # RoiImage flushes it
    valid = jnp.isfinite(b) & (b >= 0) & (b < num_images)
    offset = jnp.float32(0.5 if aligned else 0.0)
    start_w, start_h, end_w, end_h = (_mul(rois[:, i], scale) - offset for i in (1, 2, 3, 4))
    width, height = end_w - start_w, end_h - start_h
    valid &= jnp.isfinite(start_w) & jnp.isfinite(start_h) & jnp.isfinite(width) & jnp.isfinite(height)
    if not aligned:  # torchvision: "Force malformed ROIs to be 1x1"
        width, height = jnp.maximum(width, 1.0), jnp.maximum(height, 1.0)
    ph, pw = output_size
    bin_h, bin_w = height / jnp.float32(ph), width / jnp.float32(pw)
    if sampling_ratio > 0:
        grid_h = grid_w = jnp.full(b.shape, sampling_ratio, jnp.int32)
    else:
        ceil_h, ceil_w = jnp.ceil(bin_h), jnp.ceil(bin_w)
        valid &= (ceil_h <= MAX_GRID) & (ceil_w <= MAX_GRID)
        as_grid = lambda c: jnp.where(valid & (c > 0), c, 0.0).astype(jnp.int32)
        grid_h, grid_w = as_grid(ceil_h), as_grid(ceil_w)
    count = jnp.maximum(_mul(grid_h.astype(jnp.float32), grid_w.astype(jnp.float32)), 1.0)
    batch = jnp.where(valid, jnp.where(valid, b, 0.0).astype(jnp.int32), -1)
    zero = lambda x: jnp.where(valid, x, 0.0)
    return AlignGeometry(batch, zero(start_h), zero(start_w), zero(bin_h), zero(bin_w),
                         jnp.where(valid, grid_h, 0), jnp.where(valid, grid_w, 0), count)


def sample_positions(start, index, bin_size, sample, grid):
    """start + index * bin + (sample + 0.5) * bin / grid, as torchvision evaluates it (broadcast)."""
    grid = jnp.maximum(grid, 1).astype(jnp.float32)
    within = _mul(sample.astype(jnp.float32) + 0.5, bin_size) / grid
    return (start + _mul(index.astype(jnp.float32), bin_size)) + within


def _first_sample(start, index, bin_size, grid, above):
    """The smallest sample in [0, grid) whose position satisfies `above` (monotonic), else grid."""
    shape = jnp.broadcast_shapes(start.shape, index.shape)
    lo, hi = jnp.zeros(shape, jnp.int32), jnp.broadcast_to(grid, shape)

    def step(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = above(sample_positions(start, index, bin_size, mid, grid))
        open_ = lo < hi
        return jnp.where(open_ & ~ok, mid + 1, lo), jnp.where(open_ & ok, mid, hi)

    return jax.lax.fori_loop(0, _GRID_BITS + 1, step, (lo, hi))[0]


def axis_samples(start, bin_size, grid, pooled, size, *, sampling_ratio):
    """The samples of every bin along one axis, through a static window.

    start, bin_size, grid: [K]. Returns a dict of [K, pooled, T] arrays: low, high (int32
    neighbours), l, h (their weights: high's and low's), inside (bool: a sample of the grid,
    inside [-1, size]).
    """
    index = jnp.arange(pooled, dtype=jnp.int32)[None, :]  # [1, P]
    start, bin_size, grid = start[:, None], bin_size[:, None], grid[:, None]
    if sampling_ratio > 0:
        window = sampling_ratio
        shape = (grid.shape[0], pooled)
        begin, end = jnp.zeros(shape, jnp.int32), jnp.broadcast_to(grid, shape)
    else:
        window = 2 * size + 8
        begin = _first_sample(start, index, bin_size, grid, lambda v: v >= -1.0)
        end = _first_sample(start, index, bin_size, grid, lambda v: v > float(size))
    sample = begin[..., None] + jnp.arange(window, dtype=jnp.int32)  # [K, P, T]
    v = sample_positions(start[..., None], index[..., None], bin_size[..., None], sample, grid[..., None])
    inside = (sample < end[..., None]) & (v >= -1.0) & (v <= float(size))
    v = jnp.where(inside, jnp.maximum(v, 0.0), 0.0)
    low = v.astype(jnp.int32)
    clamp = low >= size - 1
    low = jnp.where(clamp, size - 1, low)
    high = jnp.where(clamp, size - 1, low + 1)
    v = jnp.where(clamp, low.astype(jnp.float32), v)
    l = v - low.astype(jnp.float32)
    return dict(low=low, high=high, l=l, h=1.0 - l, inside=inside)


def roi_align_reference(features, rois, *, output_size, spatial_scale, sampling_ratio=-1,
                        aligned=False):
    """RoIAlign, NHWC.

    features: [N, H, W, C] float; rois: [K, 5] (batch_index, x1, y1, x2, y2) in input pixels.
    Returns [K, PH, PW, C] of the features' dtype (computed in float32, rounded once).
    """
    features, rois = jnp.asarray(features), jnp.asarray(rois)
    n, h, w, c = features.shape
    ph, pw = output_size
    k = rois.shape[0]
    if k == 0 or n == 0 or h == 0 or w == 0 or c == 0:
        return jnp.zeros((k, ph, pw, c), features.dtype) + 0 * jnp.sum(features)
    geo = map_rois(rois, spatial_scale=spatial_scale, num_images=n, output_size=output_size,
                   sampling_ratio=sampling_ratio, aligned=aligned)
    ys = axis_samples(geo.start_h, geo.bin_h, geo.grid_h, ph, h, sampling_ratio=sampling_ratio)
    xs = axis_samples(geo.start_w, geo.bin_w, geo.grid_w, pw, w, sampling_ratio=sampling_ratio)
    features32 = features.astype(jnp.float32)

    def align_one(args):
        batch, count, y, x = args
        image = features32[jnp.maximum(batch, 0)]  # [H, W, C]
        # [PH, T] rows against [PW, U] columns -> [PH, T, PW, U] samples.
        row = lambda a: a[:, :, None, None]
        col = lambda a: a[None, None, :, :]
        v = lambda yy, xx: image[row(yy), col(xx)]  # [PH, T, PW, U, C]
        weight = lambda a, b: _mul(row(a), col(b))[..., None]
        total = ((_mul(weight(y["h"], x["h"]), v(y["low"], x["low"]))
                  + _mul(weight(y["h"], x["l"]), v(y["low"], x["high"])))
                 + _mul(weight(y["l"], x["h"]), v(y["high"], x["low"]))) \
            + _mul(weight(y["l"], x["l"]), v(y["high"], x["high"]))
        inside = (row(y["inside"]) & col(x["inside"]))[..., None] & (batch >= 0)
        summed = jnp.sum(jnp.where(inside, total, 0.0), axis=(1, 3))  # [PH, PW, C]
        return summed / count

    window = ys["low"].shape[-1] * xs["low"].shape[-1]
    batch_size = max(1, min(k, (1 << 22) // max(1, window * ph * pw * c)))
    out = jax.lax.map(align_one, (geo.batch, geo.count, ys, xs), batch_size=batch_size)
    return out.astype(features.dtype)
