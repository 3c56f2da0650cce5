"""Independent numpy versions of RoI max pooling, element by element, for the tests: the
unrounded CUDA kernel and the Caffe/torchvision one (`seed_roi_pool`), and the per-RoI crop and
adaptive max pooling of the PyTorch Fast R-CNN tutorials (`slow_roi_pool`)."""

import numpy as np

f32 = np.float32


def _is_valid_index(b, num_images):
    return np.isfinite(b) and 0 <= b < num_images


def seed_roi_pool(features, rois, output_size, spatial_scale, rounding="none"):
    """features: [N, H, W, C] float; rois: [K, 5]. Returns (out [K, PH, PW, C], argmax).

    Follows the unrounded CUDA kernel line by line in float32, except that the running max
    starts at the bin's first element (a `first - 1` start fails for |x| >= 2^24 and NaN), and
    that invalid RoIs pool to zeros: a bad batch index, a non-finite coordinate,
    or a scaled size that is not finite (e.g. x1 = x2 = 3.4e38 at scale 4: inf - inf, whose bins
    would be NaN), the rule of `MapRoi` in xla_ops/csrc/roi_pool_bins.h.
    """
    n, h, w, c = features.shape
    ph_n, pw_n = output_size
    k_n = rois.shape[0]
    out = np.zeros((k_n, ph_n, pw_n, c), features.dtype)
    argmax = np.full((k_n, ph_n, pw_n, c), -1, np.int32)
    scale = f32(spatial_scale)
    with np.errstate(all="ignore"):
        for k in range(k_n):
            b, x1, y1, x2, y2 = (f32(v) for v in rois[k])
            if not _is_valid_index(b, n) or not np.all(np.isfinite(rois[k])):
                continue
            if rounding == "none":
                rx1, ry1 = x1 * scale, y1 * scale
                rx2, ry2 = (x2 + f32(1)) * scale, (y2 + f32(1)) * scale
                roi_w, roi_h = rx2 - rx1, ry2 - ry1
                if roi_w <= 0 or roi_h <= 0:
                    continue
            else:
                round_half_away = lambda v: f32(np.sign(v) * np.floor(np.abs(np.float64(v)) + 0.5))
                rx1, ry1 = round_half_away(x1 * scale), round_half_away(y1 * scale)
                rx2, ry2 = round_half_away(x2 * scale), round_half_away(y2 * scale)
                roi_w = max(rx2 - rx1 + f32(1), f32(1))
                roi_h = max(ry2 - ry1 + f32(1), f32(1))
            if not (np.isfinite(roi_w) and np.isfinite(roi_h)):
                continue
            bin_w, bin_h = roi_w / f32(pw_n), roi_h / f32(ph_n)
            for ph in range(ph_n):
                for pw in range(pw_n):
                    if rounding == "none":
                        hs = np.floor(f32(ph) * bin_h + ry1)
                        he = np.ceil(f32(ph + 1) * bin_h + ry1)
                        ws = np.floor(f32(pw) * bin_w + rx1)
                        we = np.ceil(f32(pw + 1) * bin_w + rx1)
                    else:
                        hs = np.floor(f32(ph) * bin_h) + ry1
                        he = np.ceil(f32(ph + 1) * bin_h) + ry1
                        ws = np.floor(f32(pw) * bin_w) + rx1
                        we = np.ceil(f32(pw + 1) * bin_w) + rx1
                    hs, he = (int(min(max(v, 0), h)) for v in (hs, he))
                    ws, we = (int(min(max(v, 0), w)) for v in (ws, we))
                    if he <= hs or we <= ws:
                        continue
                    plane = features[int(b)]
                    for ch in range(c):
                        best, best_i = None, -1
                        for yy in range(hs, he):
                            for xx in range(ws, we):
                                v = f32(plane[yy, xx, ch])
                                if best is None or v > best or (np.isnan(v) and not np.isnan(best)):
                                    best, best_i = v, yy * w + xx
                        out[k, ph, pw, ch] = plane.reshape(h * w, c)[best_i, ch]
                        argmax[k, ph, pw, ch] = best_i
    return out, argmax


def scatter_through_argmax(grad_out, rois, argmax, feature_shape):
    """float64 gradient of the features: grad_out [K, PH, PW, C] added at argmax."""
    n, h, w, c = feature_shape
    grad = np.zeros((n, h * w, c), np.float64)
    grad_out = np.asarray(grad_out, np.float64)
    argmax = np.asarray(argmax)
    k, i, j, ch = np.nonzero(argmax >= 0)  # only valid RoIs have an argmax: finite batch index
    np.add.at(grad, (np.asarray(rois)[k, 0].astype(np.int64), argmax[k, i, j, ch], ch),
              grad_out[k, i, j, ch])
    return grad.reshape(n, h, w, c)


def _adaptive_window(i, length, count):
    """aten's adaptive pooling window i of `count` over `length`: [floor(i * length / count),
    ceil((i + 1) * length / count)), in integers."""
    return (i * length) // count, -((-(i + 1) * length) // count)


def adaptive_max_pool(crop, output_size):
    """torch.nn.AdaptiveMaxPool2d(output_size, return_indices=True) on one crop [h, w, C]:
    aten's CPU kernel, whose running max starts at -inf on the window's first element and is
    replaced by a larger value or by a NaN (`val > maxval || isnan(val)`).
    Returns (out [PH, PW, C], index [PH, PW, C] into the crop's plane, y * w + x)."""
    h, w, c = crop.shape
    ph_n, pw_n = output_size
    out = np.zeros((ph_n, pw_n, c), crop.dtype)
    index = np.zeros((ph_n, pw_n, c), np.int64)
    for ph in range(ph_n):
        h0, h1 = _adaptive_window(ph, h, ph_n)
        for pw in range(pw_n):
            w0, w1 = _adaptive_window(pw, w, pw_n)
            for ch in range(c):
                best, best_i = -np.inf, h0 * w + w0
                for yy in range(h0, h1):
                    for xx in range(w0, w1):
                        v = np.float64(crop[yy, xx, ch])
                        if v > best or np.isnan(v):
                            best, best_i = v, yy * w + xx
                out[ph, pw, ch] = crop.reshape(h * w, c)[best_i, ch]
                index[ph, pw, ch] = best_i
    return out, index


def slow_roi_pool(features, rois, output_size, spatial_scale):
    """The per-RoI loop of the PyTorch Fast R-CNN tutorials, on NHWC features:

        rois = (rois * spatial_scale).long()                 # float32 product, truncated
        crop = features[b, y1:y2 + 1, x1:x2 + 1]           # both ends included
        out = AdaptiveMaxPool2d(output_size)(crop)

    rois: [K, 5] (batch_index, x1, y1, x2, y2) with valid batch indices and coordinates that are
    not negative once scaled (Python would count negative slice starts from the end). A crop
    that Python's slicing leaves empty (torch raises for it) pools to zeros with argmax -1.
    Returns (out [K, PH, PW, C], argmax: the flat index y * W + x in the image's plane)."""
    n, h, w, c = features.shape
    ph_n, pw_n = output_size
    out = np.zeros((len(rois), ph_n, pw_n, c), features.dtype)
    argmax = np.full((len(rois), ph_n, pw_n, c), -1, np.int32)
    for k, roi in enumerate(np.asarray(rois, f32)):
        scaled = roi[1:] * f32(spatial_scale)
        assert (scaled >= 0).all(), "negative coordinates: Python would slice from the end"
        x1, y1, x2, y2 = (int(v) for v in scaled)
        crop = features[int(roi[0]), y1:y2 + 1, x1:x2 + 1]
        if crop.shape[0] == 0 or crop.shape[1] == 0:
            continue
        out[k], index = adaptive_max_pool(crop, output_size)
        argmax[k] = (y1 + index // crop.shape[1]) * w + x1 + index % crop.shape[1]
    return out, argmax
