"""Benchmark of RoI max pooling: the native custom call against the jnp reference, the seed's
SlowROIPool (PyTorch AdaptiveMaxPool2d per RoI) and, on GPUs, torchvision.ops.roi_pool, all in
one run, with the kernel's effective bandwidth against a plain memory copy of the same run.

Usage:  python experiments/bench_roi_pool.py [--rois 128 2000] [--repeats 20] [--out FILE.md]
Features are [1, 50, 50, 512] (an 800x800 image through VGG16, stride 16), output 7x7.
"""

import argparse
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from xla_ops import roi_pool, roi_pool_with_argmax
from xla_ops.reference import map_rois, bin_ranges

IMAGE = 800
STRIDE = 16
OUTPUT = (7, 7)


def make_inputs(num_rois, seed=0):
    rng = np.random.default_rng(seed)
    feature_hw = IMAGE // STRIDE
    features = rng.normal(size=(1, feature_hw, feature_hw, 512)).astype(np.float32)
    # Proposal-like boxes: 16 to 400 pixels a side, inside the image.
    size = rng.uniform(16, 400, (num_rois, 2))
    x1 = rng.uniform(0, IMAGE - size[:, 0])
    y1 = rng.uniform(0, IMAGE - size[:, 1])
    rois = np.stack([np.zeros(num_rois), x1, y1, x1 + size[:, 0], y1 + size[:, 1]], 1)
    return features, rois.astype(np.float32)


def timed(fn, repeats, warmup=2):
    """Median seconds of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bytes_touched(features, rois):
    """Bytes the forward pass must move: every feature element read once per bin it lies in,
    plus the output and argmax written."""
    n, h, w, c = features.shape
    geo = map_rois(jnp.asarray(rois), spatial_scale=1 / STRIDE, num_images=n, pooled_hw=OUTPUT,
                   rounding="none")
    h_lo, h_hi = bin_ranges(geo.start_h, geo.bin_h, OUTPUT[0], h, rounding="none")
    w_lo, w_hi = bin_ranges(geo.start_w, geo.bin_w, OUTPUT[1], w, rounding="none")
    rows = np.maximum(np.asarray(h_hi - h_lo), 0)  # [K, PH]
    cols = np.maximum(np.asarray(w_hi - w_lo), 0)  # [K, PW]
    pixels = (rows[:, :, None] * cols[:, None, :]).sum()
    outputs = rois.shape[0] * OUTPUT[0] * OUTPUT[1] * c
    return int(pixels) * c * 4 + outputs * (4 + 4)


def copy_bandwidth(nbytes, repeats):
    """Bytes per second (read + write) of a plain numpy copy of an out-of-cache buffer."""
    src = np.ones(max(nbytes, 256 << 20) // 4, np.float32)
    dst = np.empty_like(src)
    seconds = timed(lambda: np.copyto(dst, src), repeats)
    return 2 * src.nbytes / seconds


def jax_fns(features, rois, impl):
    cot = jnp.asarray(np.random.default_rng(1).normal(size=(rois.shape[0], *OUTPUT, features.shape[3]))
                      .astype(np.float32))
    fwd = jax.jit(lambda f, r: roi_pool(f, r, OUTPUT, 1 / STRIDE, impl=impl))
    fwd_bwd = jax.jit(jax.grad(lambda f, r: jnp.vdot(roi_pool(f, r, OUTPUT, 1 / STRIDE, impl=impl), cot)))
    f, r = jnp.asarray(features), jnp.asarray(rois)
    return (lambda: fwd(f, r).block_until_ready()), (lambda: fwd_bwd(f, r).block_until_ready())


def torch_fns(features, rois, device):
    """The seed's SlowROIPool (AdaptiveMaxPool2d per RoI) and, on CUDA, torchvision's kernel."""
    import torch

    f = torch.tensor(features.transpose(0, 3, 1, 2), device=device, requires_grad=True)
    # The seed's crop: floor of the scaled x1/y1, ceil of the scaled x2 + 1, y2 + 1.
    scaled = rois[:, 1:] / STRIDE
    x1 = np.floor(scaled[:, 0]).astype(int)
    y1 = np.floor(scaled[:, 1]).astype(int)
    x2 = np.ceil(scaled[:, 2] + 1 / STRIDE).astype(int)
    y2 = np.ceil(scaled[:, 3] + 1 / STRIDE).astype(int)
    pool = torch.nn.AdaptiveMaxPool2d(OUTPUT)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def slow_forward():
        return torch.cat([pool(f[:1, :, y1[i]:y2[i], x1[i]:x2[i]]) for i in range(len(rois))])

    def run(forward, backward):
        def fn():
            if backward:
                f.grad = None
                forward().sum().backward()
            else:
                with torch.no_grad():
                    forward()
            sync()
        return fn

    fns = {"seed SlowROIPool (torch)": (run(slow_forward, False), run(slow_forward, True))}
    if device == "cuda":
        from torchvision.ops import roi_pool as tv_roi_pool

        boxes = torch.tensor(rois, device=device)
        tv = lambda: tv_roi_pool(f, boxes, OUTPUT, 1 / STRIDE)
        fns["torchvision.ops.roi_pool"] = (run(tv, False), run(tv, True))
    return fns


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, nargs="+", default=[128, 2000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--reference-max-rois", type=int, default=128,
                        help="skip the (slow) jnp reference above this many RoIs")
    parser.add_argument("--out", help="append the markdown table to this file")
    args = parser.parse_args()

    backend = jax.default_backend()
    torch_device = "cuda" if backend == "gpu" else "cpu"
    try:
        import torch  # noqa: F401  (its default thread count matches XLA's: all cores)

        have_torch = True
    except ImportError:
        have_torch = False

    lines = [f"### {platform.node()} · JAX {jax.__version__} on {backend} "
             f"({jax.devices()[0].device_kind}) · features [1, 50, 50, 512] float32, 7x7",
             "", f"Command: `{' '.join([sys.executable.split('/')[-1]] + sys.argv)}`", "",
             "| RoIs | implementation | forward ms | fwd+bwd ms | fwd speed-up of ffi | fwd+bwd speed-up of ffi |",
             "|---:|---|---:|---:|---:|---:|"]
    bandwidth_lines = []
    copy_bw = copy_bandwidth(256 << 20, 5) if backend == "cpu" else None
    for num_rois in args.rois:
        features, rois = make_inputs(num_rois)
        results = {"ffi (custom call)": [timed(fn, args.repeats) for fn in jax_fns(features, rois, "ffi")]}
        if num_rois <= args.reference_max_rois:
            results["jnp reference"] = [timed(fn, max(3, args.repeats // 5))
                                        for fn in jax_fns(features, rois, "reference")]
        if have_torch:
            for name, fns in torch_fns(features, rois, torch_device).items():
                slow = "torchvision" not in name  # the seed's Python loop: seconds per call
                repeats = max(2, args.repeats // 10) if slow else args.repeats
                results[name] = [timed(fn, repeats, warmup=1 if slow else 2) for fn in fns]
        ffi_fwd, ffi_both = results["ffi (custom call)"]
        for name, (fwd, both) in results.items():
            lines.append(f"| {num_rois} | {name} | {fwd * 1e3:.3f} | {both * 1e3:.3f} | "
                         f"{fwd / ffi_fwd:.1f}x | {both / ffi_both:.1f}x |")
        moved = bytes_touched(features, rois)
        kernel_bw = moved / ffi_fwd
        text = f"- {num_rois} RoIs: forward moves {moved / 1e6:.1f} MB in {ffi_fwd * 1e3:.3f} ms = {kernel_bw / 1e9:.2f} GB/s"
        if copy_bw:
            text += f"; plain copy in the same run {copy_bw / 1e9:.2f} GB/s; ratio {kernel_bw / copy_bw:.2f}"
        bandwidth_lines.append(text)
    lines += ["", "Effective bandwidth (bytes of every bin read once, plus output and argmax written):"]
    lines += bandwidth_lines
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
