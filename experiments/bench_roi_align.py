"""Benchmark of RoIAlign: xla_ops.roi_align (the native custom call, jitted, NHWC) against
torchvision.ops.roi_align (NCHW), each library in its own layout, alternating in one process.

Cases (a ResNet-50-FPN head's shapes; 800 x 1344 images):
  - 512 RoIs of 2 images, 7x7, sampling_ratio 2, aligned, on the stride-8 map [2, 100, 168, 256]
    (spatial_scale 1/8) and the stride-16 map [2, 50, 84, 256] (1/16): forward, and forward +
    backward (the gradient of the features, a cotangent of ones);
  - a test-time forward of 1000 RoIs on each map.
RoIs: boxes of 16 to 600 pixels a side inside the image, each image's half of them (seeded).

Each round times one call of each side, jaxdet first in even rounds and torchvision first in odd
ones; the table gives each side's median and min-max over the rounds, the ratio of medians
(torchvision / jaxdet: higher is faster for jaxdet) and the min-max of the per-round ratios.
jax calls end in block_until_ready; torch runs on its own threads (torch.get_num_threads()),
jaxdet on XLA's CPU thread pool. Outputs of the two sides are compared once before timing.

--equality prints the largest differences from torchvision over the equality test's grid
(that of tests/xla_ops/test_roi_align_torchvision.py, built here): float32 forward and gradient.

--device gpu (the GPU check, experiments/gpu_check.sh) runs both sides on the GPU, jaxdet's
backward with atomicAdd and deterministic, and an XLA copy of the feature map on the same device
as the floor of memory traffic.

Usage (torch and torchvision: the `bench` extra, e.g. in a venv of their own with PYTHONPATH=.):
  python experiments/bench_roi_align.py [--rounds 10] [--out FILE.md] [--equality] [--device gpu]
"""

import argparse
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import common
from xla_ops import roi_align

# The equality grid: random RoIs on a small map plus valid extremes (degenerate, inverted, far
# away, around the borders), at four output sizes and scales.
EQUALITY_SHAPE = (2, 13, 17, 6)  # [N, H, W, C]
EXTREME_ROIS = np.array([
    [0.7, 0, 0, 8, 8], [1, 5, 5, 2, 1], [0, 3, 3, 3, 3], [1, 1e5, 1e5, 1e5 + 9, 1e5 + 9],
    [0, -1e5, -1e5, -1e5 + 9, -1e5 + 9], [1, -40, -40, 200, 200], [0, -0.75, -0.75, 67.25, 51.25],
    [1, 64, 48, 68, 52], [0, -1000, -600, 1000, 600], [1, 30, 20, 30.001, 20.001],
], np.float32)


def alternate(fns, rounds, warmup=2):
    """{name: [seconds per round]}: every fn once a round, in reverse order every other round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for i in range(rounds):
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: np.array(t) for name, t in times.items()}


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def run(rounds, device):
    import torch

    rows = []
    maps = common.ROI_ALIGN_MAPS
    cases = [(name, shape, scale, 512, backward) for name, shape, scale in maps for backward in (False, True)]
    cases += [(name, shape, scale, 1000, False) for name, shape, scale in maps]
    rng = np.random.default_rng(1)
    for name, shape, scale, k, backward in cases:
        features = rng.normal(size=shape).astype(np.float32)
        rois = common.roi_align_rois(k, shape[0])
        jax_fns, tv_fns, difference = common.roi_align_sides(features, rois, scale, backward=backward, device=device)
        t = alternate({**jax_fns, **tv_fns}, rounds)
        what = f"{k} RoIs, {name} {list(shape)}, {'forward+backward' if backward else 'forward'}"
        for jname in jax_fns:
            ratio = t["torchvision"] / t[jname]
            ms = lambda x: f"{np.median(x) * 1e3:.1f} ({x.min() * 1e3:.1f}-{x.max() * 1e3:.1f})"
            rows.append(f"| {what} | {jname} | {ms(t[jname])} | {ms(t['torchvision'])} | "
                        f"**{np.median(t['torchvision']) / np.median(t[jname]):.1f}x** "
                        f"({ratio.min():.1f}-{ratio.max():.1f}) | {difference:.1e} |")
            print(rows[-1], flush=True)
    return torch, rows


def equality():
    """Largest differences from torchvision over the torchvision test's grid (float32)."""
    import torch
    import torchvision

    def rois_for(seed, num=24):
        rng = np.random.default_rng(seed)
        x1, y1 = rng.uniform(-20, 68, num), rng.uniform(-16, 52, num)
        random = np.stack([rng.integers(0, EQUALITY_SHAPE[0], num), x1, y1, x1 + rng.uniform(0, 60, num),
                           y1 + rng.uniform(0, 45, num)], 1).astype(np.float32)
        return np.concatenate([random, EXTREME_ROIS])

    def torchvision_align(features, rois, output_size, scale, sampling_ratio, aligned, cot):
        x = torch.tensor(np.transpose(features, (0, 3, 1, 2)).copy(), requires_grad=True)
        out = torchvision.ops.roi_align(x, torch.tensor(rois), output_size, scale, sampling_ratio, aligned)
        out.backward(torch.tensor(np.transpose(cot, (0, 3, 1, 2)).copy()))
        return np.transpose(out.detach().numpy(), (0, 2, 3, 1)), np.transpose(x.grad.numpy(), (0, 2, 3, 1))

    SHAPE = EQUALITY_SHAPE
    worst_out = worst_grad = 0.0
    equal = cases = 0
    for output_size, scale in (((7, 7), 0.25), ((3, 5), 0.5), ((2, 2), 1.0), ((4, 3), 1 / 16)):
        for sampling_ratio in (-1, 0, 2):
            for aligned in (False, True):
                rng = np.random.default_rng(cases)
                features = rng.normal(size=SHAPE).astype(np.float32)
                rois = rois_for(int(scale * 100) + sampling_ratio)
                if scale < 0.1:
                    rois[:, 1:] *= 4
                cot = rng.normal(size=(len(rois), *output_size, SHAPE[3])).astype(np.float32)
                out_t, grad_t = torchvision_align(features, rois, output_size, scale, sampling_ratio, aligned, cot)
                out, vjp = jax.vjp(lambda f: roi_align(f, rois, output_size, scale, sampling_ratio, aligned),
                                   jnp.asarray(features))
                grad = np.asarray(vjp(jnp.asarray(cot))[0])
                worst_out = max(worst_out, float(np.abs(np.asarray(out) - out_t).max()))
                worst_grad = max(worst_grad, float(np.abs(grad - grad_t).max()))
                equal += int(np.array_equal(np.asarray(out), out_t))
                cases += 1
    line = (f"{cases} cases ({SHAPE} features, {len(rois_for(0))} RoIs each): forward max |difference| "
            f"{worst_out:.2e} (bit-identical in {equal} of {cases}), gradient max |difference| {worst_grad:.2e}")
    print(line)
    return torch, [line]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--equality", action="store_true")
    parser.add_argument("--out", help="append the markdown report to this file")
    args = parser.parse_args()
    if args.device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    load = os.getloadavg()
    torch, rows = equality() if args.equality else run(args.rounds, args.device)
    header = [
        f"`{' '.join(['python'] + sys.argv)}` ({time.strftime('%Y-%m-%d %H:%M')}); "
        + (f"GPU: {torch.cuda.get_device_name()}" if args.device == "gpu" else f"CPU: {cpu_name()}, "
           f"{os.cpu_count()} cores")
        + f"; load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}; jax {jax.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "",
    ]
    if not args.equality:
        header += [f"{args.rounds} rounds. Milliseconds: median (min-max).", "",
                   "| case | jaxdet side | jaxdet ms | torchvision ms | torchvision / jaxdet (per round) | "
                   "max abs diff |", "|---|---|---:|---:|---:|---:|"]
    report = "\n".join(header + rows) + "\n"
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
