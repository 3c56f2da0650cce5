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
(tests/xla_ops/test_roi_align_torchvision.py): float32 forward and gradient.

--device gpu (the GPU check, experiments/gpu_check.sh) runs both sides on the GPU, jaxdet's
backward with atomicAdd and deterministic, and an XLA copy of the feature map on the same device
as the floor of memory traffic.

Usage (torch and torchvision: the `bench` extra, e.g. in a venv of their own with PYTHONPATH=.):
  python experiments/bench_roi_align.py [--rounds 10] [--out FILE.md] [--equality] [--device gpu]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from xla_ops import roi_align

IMAGE_HW = (800, 1344)
MAPS = (("stride 8", (2, 100, 168, 256), 1 / 8), ("stride 16", (2, 50, 84, 256), 1 / 16))


def make_rois(num, num_images, seed=0):
    """[num, 5] boxes of 16 to 600 pixels a side inside the image, half of them per image."""
    rng = np.random.default_rng(seed)
    h, w = IMAGE_HW
    size = rng.uniform(16, 600, (num, 2))
    corner = rng.uniform(0, 1, (num, 2)) * (np.array([w, h]) - size)
    batch = np.repeat(np.arange(num_images), -(-num // num_images))[:num]
    return np.concatenate([batch[:, None], corner, corner + size], 1).astype(np.float32)


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


def sides(features, rois, scale, backward, device, torch, torchvision):
    """(jaxdet fns, torchvision fns, check) for one case."""
    k, c = rois.shape[0], features.shape[3]
    dev = jax.devices("gpu" if device == "gpu" else "cpu")[0]
    f = jax.device_put(jnp.asarray(features), dev)
    r = jax.device_put(jnp.asarray(rois), dev)
    cot = jax.device_put(jnp.ones((k, 7, 7, c), jnp.float32), dev)
    tdev = "cuda" if device == "gpu" else "cpu"
    ft = torch.tensor(np.transpose(features, (0, 3, 1, 2)).copy(), device=tdev)
    rt = torch.tensor(rois, device=tdev)
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
    tv_fwd = lambda x: torchvision.ops.roi_align(x, rt, 7, scale, 2, True)
    fwd = jax.jit(lambda f, r: roi_align(f, r, 7, scale, 2, True))
    jax_fns, tv_fns = {}, {}
    if not backward:
        jax_fns["jaxdet"] = lambda: fwd(f, r).block_until_ready()

        def tv():
            tv_fwd(ft)
            sync()
        tv_fns["torchvision"] = tv
    else:
        for det in ((None, True) if device == "gpu" else (None,)):
            grad = jax.jit(lambda f, r, det=det: jax.vjp(
                lambda x: roi_align(x, r, 7, scale, 2, True, deterministic=det), f)[1](cot)[0])
            name = "jaxdet" if det is None else "jaxdet deterministic"
            jax_fns[name] = lambda grad=grad: grad(f, r).block_until_ready()
        ftg = ft.clone().requires_grad_(True)
        cot_t = torch.ones((k, c, 7, 7), device=tdev)

        def tv():
            tv_fwd(ftg).backward(cot_t)
            ftg.grad = None
            sync()
        tv_fns["torchvision"] = tv
    if device == "gpu":
        copy = jax.jit(lambda x: x + 1)
        jax_fns["XLA copy of the features"] = lambda: copy(f).block_until_ready()
    expected = np.transpose(tv_fwd(ft).cpu().numpy(), (0, 2, 3, 1))
    difference = float(np.abs(np.asarray(fwd(f, r)) - expected).max())
    return jax_fns, tv_fns, difference


def run(rounds, device):
    import torch
    import torchvision

    rows = []
    cases = [(name, shape, scale, 512, backward) for name, shape, scale in MAPS for backward in (False, True)]
    cases += [(name, shape, scale, 1000, False) for name, shape, scale in MAPS]
    rng = np.random.default_rng(1)
    for name, shape, scale, k, backward in cases:
        features = rng.normal(size=shape).astype(np.float32)
        rois = make_rois(k, shape[0])
        jax_fns, tv_fns, difference = sides(features, rois, scale, backward, device, torch, torchvision)
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

    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    sys.path[:0] = [tests, os.path.join(tests, "xla_ops")]
    from test_roi_align_torchvision import SHAPE, rois_for, torchvision_align  # noqa: E402

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
