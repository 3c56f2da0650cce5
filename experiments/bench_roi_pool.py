"""Benchmark of RoI max pooling: the native custom call against the jnp reference, the tutorials'
SlowROIPool (PyTorch AdaptiveMaxPool2d per RoI) and, on GPUs, torchvision.ops.roi_pool, all in
one run; on CPUs also the forward's bandwidth against a plain memory copy of the same bytes,
timed in the same loop.

Usage:  python experiments/bench_roi_pool.py [--rois 128 2000] [--repeats 20] [--out FILE.md]
        python experiments/bench_roi_pool.py --side-by-side [--torchvision] [--rois 128 2000]
        python experiments/bench_roi_pool.py --only-native [--channels 512 3] [--baseline-so SO]
Features are [1, 50, 50, 512] (an 800x800 image through VGG16, stride 16), output 7x7.

Bandwidth (CPU): the forward's *unique bytes* are the feature map read once plus the output and
the argmax written once; a bin's reads of features already in the caches are not counted (they
are given apart, as "bins read"). The copy is np.copyto of unique / 2 bytes into a preallocated
array (so it reads unique / 2 and writes unique / 2 bytes: the same total), timed alternately
with the kernel in one loop; the ratio is copy time / kernel time (1.0: the kernel moves its
bytes as fast as a copy). The kernel writes into buffers XLA allocates afresh on every call,
which the copy does not; "XLA fill" (the same output shapes written by a jitted broadcast)
shows what fresh buffers cost on their own.

--side-by-side (the GPU check's mode; also runs on a CPU) times, on the default device, the
custom call's forward, its forward+backward with the atomicAdd (deterministic=False) and with
the deterministic backward, and an XLA copy of the forward's unique bytes on the same device;
--torchvision adds torchvision.ops.roi_pool (and a torch copy_) on the same device. All of them
run in turn in every round (in reverse order every other round); the table gives each one's
median and spread, the ratios are of medians, with the spread of the per-round ratios. Both
sides pool with rounding="round", torchvision's bins, and their outputs are compared. torch's
features are NCHW, converted once before timing; jax calls end in block_until_ready, torch ones
in torch.cuda.synchronize().

--baseline-so PATH times another build of xla_ops/_roi_pool_cpu (e.g. of an older commit, built
with `python setup.py build_ext --inplace` in a copy of that commit) against this one, forward
and backward alternately in one loop, and checks that both give the same bits.
"""

import argparse
import functools
import importlib.machinery
import importlib.util
import itertools
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import OUTPUT, STRIDE, cotangent, in_rounds, jax_fns, make_inputs, torchvision_fns, unique_bytes
from xla_ops import _native, roi_pool, roi_pool_with_argmax
from xla_ops.reference import map_rois, bin_ranges

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


def timed_together(fns, repeats, warmup=2):
    """Median seconds of each fn of `fns` (name -> fn), all run in one loop, one after the other
    (in reverse order every other round), so that they share whatever load the machine has."""
    return {name: statistics.median(t) for name, t in in_rounds(fns, repeats, warmup).items()}


def bin_bytes(features, rois):
    """The feature bytes the bins read: every feature element once per bin it lies in (most of
    them from the caches: a [1, 50, 50, 512] float32 map is 5 MB)."""
    n, h, w, c = features.shape
    geo = map_rois(jnp.asarray(rois), spatial_scale=1 / STRIDE, num_images=n, pooled_hw=OUTPUT,
                   rounding="none")
    h_lo, h_hi = bin_ranges(geo.start_h, geo.bin_h, OUTPUT[0], h, rounding="none")
    w_lo, w_hi = bin_ranges(geo.start_w, geo.bin_w, OUTPUT[1], w, rounding="none")
    rows = np.maximum(np.asarray(h_hi - h_lo), 0)  # [K, PH]
    cols = np.maximum(np.asarray(w_hi - w_lo), 0)  # [K, PW]
    pixels = (rows[:, :, None] * cols[:, None, :]).sum()
    return int(pixels) * c * features.itemsize


def bandwidth_lines(features, rois, repeats):
    """The forward against a copy of as many bytes, and XLA writing the same outputs afresh."""
    num_rois, channels = rois.shape[0], features.shape[3]
    moved = unique_bytes(features, num_rois)
    src = np.ones(moved // 2 // 4, np.float32)
    dst = np.zeros_like(src)  # touched: the copy pays no page faults
    f, r = jnp.asarray(features), jnp.asarray(rois)
    fwd = jax.jit(lambda f, r: roi_pool_with_argmax(f, r, OUTPUT, 1 / STRIDE, impl="ffi"))
    shape = (num_rois, *OUTPUT, channels)
    fill = jax.jit(lambda f: (jnp.broadcast_to(f[0, 0, 0], shape),
                              jnp.broadcast_to(f[0, 0, 0].astype(jnp.int32), shape)))
    t = timed_together({"kernel": lambda: jax.block_until_ready(fwd(f, r)),
                        "copy": lambda: np.copyto(dst, src),
                        "fill": lambda: jax.block_until_ready(fill(f))}, repeats)
    gbs = lambda seconds: moved / seconds / 1e9
    return [f"- {num_rois} RoIs: unique bytes {moved / 1e6:.1f} MB (features {features.nbytes / 1e6:.1f} MB "
            f"once, output + argmax {(moved - features.nbytes) / 1e6:.1f} MB); the bins read "
            f"{bin_bytes(features, rois) / 1e6:.1f} MB of features",
            f"  - forward {t['kernel'] * 1e3:.2f} ms = {gbs(t['kernel']):.2f} GB/s; copy of the same "
            f"bytes {t['copy'] * 1e3:.2f} ms = {gbs(t['copy']):.2f} GB/s; **ratio {t['copy'] / t['kernel']:.2f}**",
            f"  - XLA fill of the same output and argmax (fresh buffers, no reads): "
            f"{t['fill'] * 1e3:.2f} ms = {t['copy'] / t['fill']:.2f} of the copy"]


def side_by_side_lines(num_rois, repeats, torchvision):
    """The custom call against torchvision and a copy on the default device, in one loop."""
    features, rois = make_inputs(num_rois)
    f, r = jnp.asarray(features), jnp.asarray(rois)
    cot = cotangent(num_rois, features.shape[3])
    pool = functools.partial(roi_pool, output_size=OUTPUT, spatial_scale=1 / STRIDE, rounding="round",
                             impl="ffi")
    fwd = jax.jit(pool)
    grads = {det: jax.jit(jax.grad(lambda f, r, det=det: jnp.vdot(pool(f, r, deterministic=det), cot)))
             for det in (False, True)}
    moved = unique_bytes(features, num_rois)
    src = jnp.ones(moved // 2 // 4, jnp.float32)
    copy = jax.jit(jnp.copy)
    fns = {"ffi forward": lambda: fwd(f, r).block_until_ready(),
           "ffi forward+backward, deterministic=False (GPU: atomicAdd)": lambda: grads[False](f, r).block_until_ready(),
           "ffi forward+backward, deterministic=True": lambda: grads[True](f, r).block_until_ready(),
           "XLA copy of the same bytes": lambda: copy(src).block_until_ready()}
    check = ""
    if torchvision:
        tv_fns, tv_out = torchvision_fns(features, rois, cot)
        fns.update(tv_fns)
        diff = np.abs(np.asarray(fwd(f, r)) - tv_out)
        check = (f"; output against torchvision's: {int((diff != 0).sum())} of {diff.size} values differ "
                 f"(max abs difference {float(diff.max()):.3g})")
    t = in_rounds(fns, repeats)
    device = jax.devices()[0]
    lines = [f"#### {num_rois} RoIs, features [1, 50, 50, 512] float32, 7x7, rounding=\"round\", "
             f"{device.device_kind} ({device.platform}), {repeats} rounds{check}", "",
             "| side | median ms | min ms | max ms |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {np.median(v) * 1e3:.3f} | {v.min() * 1e3:.3f} | {v.max() * 1e3:.3f} |"
              for name, v in t.items()]

    def ratio(slow, fast, what):
        per_round = t[slow] / t[fast]
        return (f"- {what}: **{np.median(t[slow]) / np.median(t[fast]):.2f}x** "
                f"(per round {per_round.min():.2f}-{per_round.max():.2f})")

    lines.append("")
    if torchvision:
        lines += [ratio("torchvision forward", "ffi forward", "forward, torchvision time / ffi time"),
                  ratio("torchvision forward+backward", "ffi forward+backward, deterministic=False (GPU: atomicAdd)",
                        "forward+backward, torchvision / ffi atomicAdd"),
                  ratio("torchvision forward+backward", "ffi forward+backward, deterministic=True",
                        "forward+backward, torchvision / ffi deterministic")]
    gbs = lambda name: moved / np.median(t[name]) / 1e9
    lines.append(f"- bandwidth: the forward moves {moved / 1e6:.1f} MB of unique bytes (features once, output "
                 f"and argmax written) at {gbs('ffi forward'):.1f} GB/s; the XLA copy of as many bytes "
                 f"{gbs('XLA copy of the same bytes'):.1f} GB/s"
                 + (f", torch's copy_ {gbs('torch copy_ of the same bytes'):.1f} GB/s" if torchvision else ""))
    lines.append(ratio("XLA copy of the same bytes", "ffi forward", "copy time / forward time (1.0: as fast as a copy)"))
    return lines


def native_calls(suffix=""):
    """The forward and backward custom calls by target name (+ suffix), jitted."""
    def fwd(f, r):
        shape = (r.shape[0], *OUTPUT, f.shape[3])
        return jax.ffi.ffi_call(_native.FORWARD_TARGET + suffix,
                                (jax.ShapeDtypeStruct(shape, f.dtype), jax.ShapeDtypeStruct(shape, jnp.int32)))(
            f, r, pooled_h=np.int64(OUTPUT[0]), pooled_w=np.int64(OUTPUT[1]),
            spatial_scale=np.float32(1 / STRIDE), rounding=np.int32(0))

    def bwd(g, r, a, feature_shape):
        return jax.ffi.ffi_call(_native.BACKWARD_TARGET + suffix,
                                jax.ShapeDtypeStruct(feature_shape, jnp.float32))(
            g, r, a, deterministic=True, spatial_scale=np.float32(1 / STRIDE), rounding=np.int32(0))

    return jax.jit(fwd), jax.jit(bwd, static_argnums=3)


def load_baseline(path):
    """Registers the handlers of another build of the CPU extension under "<target>_baseline"."""
    loader = importlib.machinery.ExtensionFileLoader("_roi_pool_cpu", path)
    spec = importlib.util.spec_from_file_location("_roi_pool_cpu", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    for name, capsule in module.registrations().items():
        jax.ffi.register_ffi_target(name + "_baseline", capsule, platform="cpu")
    return native_calls("_baseline")


def baseline_lines(features, rois, baseline, repeats):
    """This build against the baseline build: forward and backward, the same bits."""
    assert _native.is_built("cpu"), _native.why_not_built("cpu")
    current = native_calls()
    f, r = jnp.asarray(features), jnp.asarray(rois)
    results = {}
    for name, (fwd, bwd) in (("this build", current), ("baseline", baseline)):
        out, arg = fwd(f, r)
        cot = jnp.asarray(np.random.default_rng(1).normal(size=out.shape), out.dtype)
        results[name] = (out, arg, bwd(cot, r, arg, features.shape))
    for x, y in zip(results["this build"], results["baseline"]):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), "the builds disagree"
    out, arg, _ = results["this build"]
    fns = {}
    for name, (fwd, bwd) in (("this build", current), ("baseline", baseline)):
        fns[f"{name} forward"] = lambda fwd=fwd: jax.block_until_ready(fwd(f, r))
        fns[f"{name} backward"] = lambda bwd=bwd: bwd(cot, r, arg, features.shape).block_until_ready()
    t = timed_together(fns, repeats)
    lines = []
    for part in ("forward", "backward"):
        new, old = t[f"this build {part}"], t[f"baseline {part}"]
        lines.append(f"| {rois.shape[0]} | {list(features.shape)} {features.dtype} | {part} | {old * 1e3:.2f} | "
                     f"{new * 1e3:.2f} | **{old / new:.2f}x** |")
    return lines


def torch_fns(features, rois, device):
    """The tutorials' SlowROIPool (AdaptiveMaxPool2d per RoI) and, on CUDA, torchvision's kernel."""
    import torch

    f = torch.tensor(features.transpose(0, 3, 1, 2), device=device, requires_grad=True)
    # SlowROIPool's crop: floor of the scaled x1/y1, ceil of the scaled x2 + 1, y2 + 1.
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
    parser.add_argument("--only-native", action="store_true",
                        help="only the custom call: bandwidth and --baseline-so (no reference, no torch)")
    parser.add_argument("--channels", type=int, nargs="+", default=[512],
                        help="feature channels of the --baseline-so shapes")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="feature dtype of the bandwidth and --baseline-so runs")
    parser.add_argument("--baseline-so", help="another build of xla_ops/_roi_pool_cpu to compare with")
    parser.add_argument("--side-by-side", action="store_true",
                        help="only the custom call's forward and both backwards against a copy on the default device")
    parser.add_argument("--torchvision", action="store_true",
                        help="with --side-by-side: also torchvision.ops.roi_pool on the same device (needs torch)")
    parser.add_argument("--out", help="append the markdown table to this file")
    args = parser.parse_args()

    if args.torchvision and not args.side_by_side:
        parser.error("--torchvision goes with --side-by-side")
    if args.side_by_side:  # each table printed and appended as soon as it is measured
        lines = [f"### {platform.node()} · JAX {jax.__version__} on {jax.default_backend()} "
                 f"({jax.devices()[0].device_kind})", "",
                 f"Command: `{' '.join([sys.executable.split('/')[-1]] + sys.argv)}`", ""]
        parts = itertools.chain([lines], (side_by_side_lines(n, args.repeats, args.torchvision) + [""]
                                          for n in args.rois))
        for part in parts:
            report = "\n".join(part) + "\n"
            print(report, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(report)
        return

    backend = jax.default_backend()
    torch_device = "cuda" if backend == "gpu" else "cpu"
    try:
        import torch  # noqa: F401  (its default thread count matches XLA's: all cores)

        have_torch = not args.only_native
    except ImportError:
        have_torch = False

    lines = [f"### {platform.node()} · JAX {jax.__version__} on {backend} "
             f"({jax.devices()[0].device_kind}) · features [1, 50, 50, 512], 7x7 "
             f"(float32; bandwidth and baseline runs {args.dtype})",
             "", f"Command: `{' '.join([sys.executable.split('/')[-1]] + sys.argv)}`", ""]
    if not args.only_native:
        lines += ["| RoIs | implementation | forward ms | fwd+bwd ms | fwd speed-up of ffi | fwd+bwd speed-up of ffi |",
                  "|---:|---|---:|---:|---:|---:|"]
    bandwidth = []
    for num_rois in args.rois:
        if backend == "cpu":
            bandwidth += bandwidth_lines(*make_inputs(num_rois, dtype=args.dtype), args.repeats)
        if args.only_native:
            continue
        features, rois = make_inputs(num_rois)
        results = {"ffi (custom call)": [timed(fn, args.repeats) for fn in jax_fns(features, rois, "ffi")]}
        if num_rois <= args.reference_max_rois:
            results["jnp reference"] = [timed(fn, max(3, args.repeats // 5))
                                        for fn in jax_fns(features, rois, "reference")]
        if have_torch:
            for name, fns in torch_fns(features, rois, torch_device).items():
                slow = "torchvision" not in name  # SlowROIPool's Python loop: seconds per call
                repeats = max(2, args.repeats // 10) if slow else args.repeats
                results[name] = [timed(fn, repeats, warmup=1 if slow else 2) for fn in fns]
        ffi_fwd, ffi_both = results["ffi (custom call)"]
        for name, (fwd, both) in results.items():
            lines.append(f"| {num_rois} | {name} | {fwd * 1e3:.3f} | {both * 1e3:.3f} | "
                         f"{fwd / ffi_fwd:.1f}x | {both / ffi_both:.1f}x |")
    if bandwidth:
        lines += ["", "Forward bandwidth against a copy of the same bytes in the same loop (medians; "
                  "unique bytes = features once + output + argmax; ratio = copy time / forward time):"]
        lines += bandwidth
    if args.baseline_so:
        baseline = load_baseline(args.baseline_so)
        lines += ["", f"This build against `{args.baseline_so}` (alternating in one loop, medians; "
                  "the same output, argmax and gradient bits):", "",
                  "| RoIs | features | pass | baseline ms | this build ms | speed-up |",
                  "|---:|---|---|---:|---:|---:|"]
        for channels in args.channels:
            for num_rois in args.rois:
                features, rois = make_inputs(num_rois, channels=channels, dtype=args.dtype)
                lines += baseline_lines(features, rois, baseline, args.repeats)
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
