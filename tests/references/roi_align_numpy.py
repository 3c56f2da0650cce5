"""RoIAlign in numpy, transcribed from torchvision's C++ CPU kernel
(torchvision/csrc/ops/cpu/roi_align_kernel.cpp and roi_align_common.h), independently of
xla_ops: loops over RoIs, bins and samples as torchvision writes them, every scalar operation in
float32 in torchvision's order, vectorised only over the channels (numpy's float32 arithmetic is
IEEE float32 element by element).

The two places where torchvision's kernel is undefined or reads out of bounds follow jaxdet's
rule (docs/roi_align.md): a RoI whose batch index is not finite or not in [0, N), or with a
coordinate (or scaled coordinate, or size) that is not finite, or whose adaptive grid exceeds
2^20 samples per axis, gives zeros and no gradient; a sample outside the map reads nothing
(torchvision's CPU forward multiplies a weight of 0 by the first pixel; its CUDA kernel reads
nothing). Everything else is torchvision's arithmetic, including that every sample inside the
map reads and multiplies its four neighbours even where a weight is 0.
"""

import math

import numpy as np

F = np.float32
MAX_GRID = 1 << 20


def _geometry(roi, scale, num_images, pooled, sampling_ratio, aligned):
    """-> None for an invalid RoI, else (batch, start_h, start_w, bin_h, bin_w, grid_h, grid_w, count)."""
    b = F(roi[0])
    if not (np.isfinite(b) and b >= 0 and b < num_images):
        return None
    batch = int(b)
    offset = F(0.5) if aligned else F(0.0)
    scale = F(scale)
    with np.errstate(over="ignore", invalid="ignore"):
        start_w, start_h = F(F(roi[1]) * scale) - offset, F(F(roi[2]) * scale) - offset
        end_w, end_h = F(F(roi[3]) * scale) - offset, F(F(roi[4]) * scale) - offset
        width, height = F(end_w - start_w), F(end_h - start_h)
    if not all(np.isfinite(v) for v in (start_w, start_h, width, height)):
        return None
    if not aligned:  # "Force malformed ROIs to be 1x1"
        width, height = max(width, F(1)), max(height, F(1))
    ph, pw = pooled
    bin_h, bin_w = F(height / F(ph)), F(width / F(pw))
    if sampling_ratio > 0:
        grid_h = grid_w = sampling_ratio
    else:
        grid_h, grid_w = math.ceil(height / F(ph)), math.ceil(width / F(pw))
        if grid_h > MAX_GRID or grid_w > MAX_GRID:
            return None
    count = F(max(grid_h * grid_w, 1))
    return batch, start_h, start_w, bin_h, bin_w, grid_h, grid_w, count


def _axis(v, size):
    """torchvision's bilinear_interpolate along one axis -> (low, high, l, h) or None outside."""
    if not (v >= -1.0 and v <= size):
        return None
    if v <= 0:
        v = F(0)
    low = int(v)
    if low >= size - 1:
        high = low = size - 1
        v = F(low)
    else:
        high = low + 1
    lv = F(v - F(low))
    return low, high, lv, F(F(1) - lv)


def _positions(start, index, bin_size, grid):
    """Every sample position of bin `index` along an axis (numpy float32, element by element as
    torchvision's scalar code): start + index * bin + (i + 0.5) * bin / grid, i < grid."""
    i = np.arange(max(grid, 0), dtype=F)
    return F(start + F(F(index) * bin_size)) + (((i + F(0.5)) * bin_size) / F(grid))


def _samples(g, ph, pw, height, width):
    """The samples of bin (ph, pw) inside the map, in torchvision's order: (y axis, x axis).
    All positions are computed (vectorised), so that huge grids stay cheap where few samples
    fall inside the map."""
    _, start_h, start_w, bin_h, bin_w, grid_h, grid_w, _ = g
    ys = [_axis(v, height) for v in _positions(start_h, ph, bin_h, grid_h)
          if v >= -1.0 and v <= height]
    xs = [_axis(v, width) for v in _positions(start_w, pw, bin_w, grid_w)
          if v >= -1.0 and v <= width]
    for y in ys:
        for x in xs:
            yield y, x


def roi_align_forward(features, rois, output_size, spatial_scale, sampling_ratio=-1, aligned=False):
    """features [N, H, W, C] float32, rois [K, 5] -> [K, PH, PW, C] float32."""
    features = np.asarray(features, F)
    rois = np.asarray(rois, F)
    n, height, width, c = features.shape
    ph_n, pw_n = output_size
    out = np.zeros((rois.shape[0], ph_n, pw_n, c), F)
    if height == 0 or width == 0:
        return out
    with np.errstate(all="ignore"):
        for k, roi in enumerate(rois):
            g = _geometry(roi, spatial_scale, n, output_size, sampling_ratio, aligned)
            if g is None:
                continue
            image = features[g[0]]
            for ph in range(ph_n):
                for pw in range(pw_n):
                    acc = np.zeros(c, F)
                    for (yl, yh, ly, hy), (xl, xh, lx, hx) in _samples(g, ph, pw, height, width):
                        w1, w2, w3, w4 = F(hy * hx), F(hy * lx), F(ly * hx), F(ly * lx)
                        acc = acc + (((w1 * image[yl, xl] + w2 * image[yl, xh]) + w3 * image[yh, xl])
                                     + w4 * image[yh, xh])
                    out[k, ph, pw] = acc / g[7]
    return out


def roi_align_backward(grad_out, rois, feature_shape, spatial_scale, sampling_ratio=-1, aligned=False,
                       dtype=np.float64):
    """The gradient of roi_align_forward with respect to the features [N, H, W, C]: each bin's
    cotangent spread over the four neighbours of each of its samples, weight / count each,
    summed in `dtype` (float64 by default: a reference for sums in any order)."""
    grad_out = np.asarray(grad_out, dtype)
    rois = np.asarray(rois, F)
    n, height, width, c = feature_shape
    grad = np.zeros(feature_shape, dtype)
    if height == 0 or width == 0:
        return grad
    _, ph_n, pw_n, _ = grad_out.shape
    for k, roi in enumerate(rois):
        g = _geometry(roi, spatial_scale, n, (ph_n, pw_n), sampling_ratio, aligned)
        if g is None:
            continue
        count = dtype(g[7])
        for ph in range(ph_n):
            for pw in range(pw_n):
                go = grad_out[k, ph, pw]
                for (yl, yh, ly, hy), (xl, xh, lx, hx) in _samples(g, ph, pw, height, width):
                    for (yy, xx), w in (((yl, xl), F(hy * hx)), ((yl, xh), F(hy * lx)),
                                        ((yh, xl), F(ly * hx)), ((yh, xh), F(ly * lx))):
                        grad[g[0], yy, xx] += go * dtype(w) / count
    return grad
