"""RoI max pooling in pure `jax.numpy`: the ground truth the native kernels are tested against.

The bin arithmetic mirrors `csrc/roi_pool_bins.h` operation by operation, in float32, so that
the bins, the pooled values and the argmax equal the kernels' bit for bit on any XLA backend:

- Every product reaches the sum that follows it through the subnormal flush (a select) and an
  optimization barrier, so that XLA cannot contract the two into a fused multiply-add, which
  rounds once where the kernels round twice. (XLA's CPU compiler does contract a plain
  `a * b + c`; the tests check that it leaves these apart.)
- The bin size `size / pooled` is the correctly rounded quotient on every backend, although
  XLA's GPU division is not (it is within 2 ulp: `div.full.f32`): `_div` corrects whatever
  quotient the backend gives with residuals computed exactly (`_nearest_quotient`).

The output is the feature gathered at the argmax, so its gradient (JAX's autodiff of that
gather) is the kernels' scatter of the cotangent through the argmax, ties and NaNs included.
As in the kernels, that scatter-add is summed in float32 for the half types and rounded to the
features' dtype once, at the end.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

ROUNDINGS = ("none", "round", "adaptive")  # numbered as roi_pool_bins.h numbers them


_FLT_MIN = 1.17549435e-38


def _flush(x):
    """Subnormals to (signed) zero, as `Flush` in roi_pool_bins.h and XLA's CPU backend do."""
    return jnp.where(jnp.abs(x) < _FLT_MIN, jnp.copysign(jnp.zeros_like(x), x), x)


def _mul(a, b):
    return _flush(jax.lax.optimization_barrier(a * b))


def _add(a, b):
    return _flush(a + b)


# The divisors of the bin sizes (pooled sizes) that `_div` divides by exactly: at most 12
# significant bits, so that a 12-bit part of a quotient times one is exact in float32.
MAX_POOLED_SIZE = 4096


def _split(x):
    """x = hi + lo exactly, hi keeping the top 12 of float32's 24 significant bits (x with the
    low 12 mantissa bits cleared) and lo the rest (at most 12 significant bits)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    hi = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
    return hi, x - hi


def _residual(w, c, p):
    """w - c * p, exactly, for an integer p in [1, MAX_POOLED_SIZE] and c within a relative
    2^-12 of w / p, all of them (and the ulp of c) normal floats.

    c = hi + lo (`_split`): hi * p and lo * p are exact (12 bits times at most 12 bits);
    w - hi * p is exact by Sterbenz's lemma (hi * p lies within a factor 2 of w); and the final
    difference, w - c * p, is a multiple of ulp(c) below 2^24 ulp(c) in magnitude, hence
    representable, so that subtraction is exact too. Every step being exact, a backend that
    contracts a product with its subtraction into a fused multiply-add gets the same bits.
    """
    hi, lo = _split(c)
    return (w - hi * p) - lo * p


def _nearest_quotient(w, p, q0):
    """The float32 nearest to w / p, from an approximation q0 of it.

    w: float32 array of normal floats in [2^-80, 2^100] (or zero); p: a Python int in [1,
    MAX_POOLED_SIZE]; q0: any approximation within a relative 2^-13 of w / p (a GPU's
    division, within 2 ulp, or w times the rounded reciprocal of p).

    One Newton step with the exact residual, c1 = q0 + (w - q0 * p) / p, lands within a
    relative 2^-36 of w / p, so the float nearest w / p is c1 or one of its two neighbours;
    the one whose exact residual is smallest in magnitude is it. (No tie is possible: a
    midpoint m between two adjacent floats has 25 significant bits, and so has p * m at least,
    its odd part being m's times p's: w = p * m would be no float.)
    """
    p32 = jnp.float32(p)
    c1 = q0 + _residual(w, q0, p32) * jnp.float32(1 / p)
    best, best_error = c1, jnp.abs(_residual(w, c1, p32))
    for c in (jnp.nextafter(c1, jnp.float32(-jnp.inf)), jnp.nextafter(c1, jnp.float32(jnp.inf))):
        error = jnp.abs(_residual(w, c, p32))
        closer = error < best_error  # False for a NaN error (a candidate that overflowed)
        best, best_error = jnp.where(closer, c, best), jnp.where(closer, error, best_error)
    return best


def _div(a, count):
    """Div of roi_pool_bins.h: the correctly rounded a / count (count a Python int in [1,
    MAX_POOLED_SIZE]), flushed, for every a that is zero or a positive normal float, whatever
    the backend's division.

    a is first scaled by a power of two (exactly) into the range where `_nearest_quotient`'s
    residuals are exact; scaling the quotient back is exact wherever it is a normal float, and
    where it is not, Flush makes it zero, as it does in the kernels. (A quotient that rounds up
    to the smallest normal float from just below it would differ, but no float a and integer
    count give one: a would have to lie between two adjacent floats.) A negative, NaN or
    infinite a, which only an invalid RoI has, gives some value that nothing uses.
    """
    if not 1 <= count <= MAX_POOLED_SIZE:
        raise ValueError(f"roi_pool reference: output sizes must be in [1, {MAX_POOLED_SIZE}] "
                         f"for the exact bin arithmetic, got {count}")
    big, tiny = jnp.abs(a) > 2.0**100, jnp.abs(a) < 2.0**-80
    power = lambda k: jnp.where(big, jnp.float32(2.0**-k), jnp.where(tiny, jnp.float32(2.0**k), 1.0))
    scaled = a * power(64)
    quotient = _nearest_quotient(scaled, count, scaled / jnp.float32(count))
    return _flush(quotient * power(-64))


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
    if rounding == "adaptive":
        # The crop floor(x1 * scale) .. floor(x2 * scale), both ends included: its first pixel
        # as the start and its exclusive end in place of the bin size, as MapRoi stores them.
        batch = jnp.where(valid, jnp.where(valid, b, 0).astype(jnp.int32), -1)
        end = lambda r: _add(jnp.floor(_mul(r, scale)), 1.0)
        return RoiGeometry(batch, jnp.floor(_mul(ry1, scale)), jnp.floor(_mul(rx1, scale)),
                           end(ry2), end(rx2))
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

    start, bin_size: [K] float32 (rounding "adaptive": bin_size is the crop's exclusive end).
    Returns (begin, end): [K, num_bins] int32, clipped to [0, size].
    """
    # Clamp in float before the cast so huge or infinite edges cannot overflow (as the kernels
    # do), and the integer again: above 2^24, float(size) may round up past size.
    clip = lambda e: jnp.minimum(
        jnp.clip(jnp.nan_to_num(e, nan=0.0), 0.0, float(size)).astype(jnp.int32), size)
    if rounding == "adaptive":
        # torch's adaptive pooling windows over the clipped crop of length L: bin i covers
        # [floor(i * L / n), ceil((i + 1) * L / n)), with L = q * n + r split so that no
        # product overflows int32.
        begin = clip(start)[:, None]
        length = clip(bin_size)[:, None] - begin
        q, r = length // num_bins, length % num_bins
        i = jnp.arange(num_bins, dtype=jnp.int32)
        lo = begin + i * q + i * r // num_bins
        hi = begin + (i + 1) * q + ((i + 1) * r + num_bins - 1) // num_bins
        return jnp.where(length > 0, lo, 0), jnp.where(length > 0, hi, 0)
    index = jnp.arange(num_bins, dtype=jnp.float32)
    lo_offset = _mul(jnp.broadcast_to(index, (start.shape[0], num_bins)), bin_size[:, None])
    hi_offset = _mul(jnp.broadcast_to(index + 1.0, (start.shape[0], num_bins)), bin_size[:, None])
    if rounding == "none":
        lo = jnp.floor(_add(lo_offset, start[:, None]))
        hi = jnp.ceil(_add(hi_offset, start[:, None]))
    else:
        lo = _add(jnp.floor(lo_offset), start[:, None])
        hi = _add(jnp.ceil(hi_offset), start[:, None])
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

