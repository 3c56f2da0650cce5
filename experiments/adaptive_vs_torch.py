"""roi_pool(rounding="adaptive") against the PyTorch tutorials' SlowROIPool run by torch itself.

The tests compare the kernels with a numpy transcription of that code (tests/references/roi_pool_numpy.py);
this runs the torch code as written (a crop per RoI, then torch.nn.AdaptiveMaxPool2d) on random
features and RoIs, in both of its forms (RoIs in feature pixels scaled and truncated by
`.long()`, and boxes in [0, 1] fractions floored and ceiled), and reports whether outputs and
argmaxes are bit for bit equal. Needs torch (the optional `bench` extra):

    PYTHONPATH=. python experiments/adaptive_vs_torch.py
"""

import argparse

import jax.numpy as jnp
import numpy as np
import torch

from xla_ops import roi_pool_with_argmax, rois_from_fractions


def torch_pixel_form(features_nchw, rois, output_size, scale):
    """rois [K, 5] (batch, x1, y1, x2, y2): scaled, truncated, cropped inclusively, pooled."""
    pool = torch.nn.AdaptiveMaxPool2d(output_size, return_indices=True)
    scaled = (torch.from_numpy(rois[:, 1:]) * scale).long()
    outs, args = [], []
    for k in range(len(rois)):
        x1, y1, x2, y2 = scaled[k].tolist()
        crop = features_nchw[int(rois[k, 0]), :, y1:y2 + 1, x1:x2 + 1]
        out, index = pool(crop[None])
        width = features_nchw.shape[3]
        outs.append(out[0])
        args.append((y1 + index[0] // crop.shape[2]) * width + x1 + index[0] % crop.shape[2])
    return torch.stack(outs).numpy(), torch.stack(args).numpy()


def torch_fraction_form(features_nchw, boxes, image, output_size):
    """boxes [K, 4] in [0, 1]: floor(x1 * W) .. ceil(x2 * W), end excluded, pooled."""
    pool = torch.nn.AdaptiveMaxPool2d(output_size, return_indices=True)
    h, w = features_nchw.shape[2:]
    x1, x2 = np.floor(boxes[:, 0] * w).astype(int), np.ceil(boxes[:, 2] * w).astype(int)
    y1, y2 = np.floor(boxes[:, 1] * h).astype(int), np.ceil(boxes[:, 3] * h).astype(int)
    outs, args = [], []
    for k in range(len(boxes)):
        out, index = pool(features_nchw[image[k], :, y1[k]:y2[k], x1[k]:x2[k]][None])
        span = x2[k] - x1[k]
        outs.append(out[0])
        args.append((y1[k] + index[0] // span) * w + x1[k] + index[0] % span)
    return torch.stack(outs).numpy(), torch.stack(args).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rois", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    shape = (2, 38, 50, 16)  # NHWC, a 600x800 image at stride 16
    features = rng.normal(size=shape).astype(np.float32)
    nchw = torch.from_numpy(np.ascontiguousarray(features.transpose(0, 3, 1, 2)))
    rows = []
    for output_size, scale in [((7, 7), 1 / 16), ((4, 4), 1 / 16), ((3, 5), 1 / 8)]:
        x1 = rng.uniform(0, shape[2] / scale - 1, args.rois)
        y1 = rng.uniform(0, shape[1] / scale - 1, args.rois)
        x2 = np.minimum(x1 + rng.uniform(1, shape[2] / scale, args.rois), shape[2] / scale - 1)
        y2 = np.minimum(y1 + rng.uniform(1, shape[1] / scale, args.rois), shape[1] / scale - 1)
        rois = np.stack([rng.integers(0, 2, args.rois), x1, y1, x2, y2], 1).astype(np.float32)
        want = torch_pixel_form(nchw, rois, output_size, scale)
        got = roi_pool_with_argmax(jnp.asarray(features), rois, output_size, scale,
                                   rounding="adaptive", impl="ffi")
        rows.append((f"pixel RoIs, {output_size}, scale {scale:g}", want, got))
    a, b = rng.random((2, args.rois, 2))
    boxes = np.concatenate([np.minimum(a, b), np.maximum(a, b) + 1e-3], 1).clip(0, 1)
    image = rng.integers(0, 2, args.rois)
    want = torch_fraction_form(nchw, boxes, image, (7, 7))
    got = roi_pool_with_argmax(jnp.asarray(features), rois_from_fractions(boxes, image, shape[1:3]),
                               (7, 7), 1.0, rounding="adaptive", impl="ffi")
    rows.append(("fraction boxes, (7, 7), rois_from_fractions", want, got))
    print(f"torch {torch.__version__}, {args.rois} RoIs per row, features {shape} NHWC")
    print("| form | outputs equal (bits) | argmax equal |")
    print("|---|---|---|")
    for name, (want_out, want_arg), (out, arg) in rows:
        out = np.asarray(out).transpose(0, 3, 1, 2)
        arg = np.asarray(arg).transpose(0, 3, 1, 2)
        same_out = np.array_equal(out.view(np.uint32), want_out.view(np.uint32))
        print(f"| {name} | {same_out} | {np.array_equal(arg, want_arg)} |")


if __name__ == "__main__":
    main()
