"""`xla_ops.amx.bf16_dot` (the AMX kernel) against XLA's dot, on the products of VGG16's bfloat16
training step at 600x1000, alternating in one process; and `xla_ops.amx.bf16_patch_dot`, which
reads a convolution's patches from the image, against `bf16_dot` of the patches written out.

For each product, XLA's side is the form jaxdet computes it in without the AMX kernel (the form
XLA's CPU dot ran fastest in): the same for the forward and the input gradient; for a
convolution's kernel gradient dY^T [O, M] . P(x)^T [k*k*C, M] (both read along their rows)
against the kernel's P(x)^T [k*k*C, M] @ dY [M, O]. Operands are random bfloat16 values; each
side runs once, then both take turns for --rounds rounds, in reversed order every other round.

Usage:
  python experiments/bench_bf16_dot.py --rounds 10
  add --out experiments/results/peers.md to append the table and the command there.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

import common
from jaxdet.compiler_options import jit
from xla_ops.amx import _native, bf16_dot
from xla_ops.amx.products import bf16_patch_dot, bf16_patch_dot_reference

# name: (M, K, N, the kernel's b is transposed, XLA's form: "same" or "dK" (dY^T . P^T))
PRODUCTS = {
    "conv1_2 forward (600000x576 @ 576x64)": (600000, 576, 64, False, "same"),
    "conv3_2 forward (37500x2304 @ 2304x256)": (37500, 2304, 256, False, "same"),
    "conv3_2 kernel gradient (2304x37500 @ 37500x256)": (2304, 37500, 256, False, "dK"),
    "conv4_2 forward (9375x4608 @ 4608x512)": (9375, 4608, 512, False, "same"),
    "conv4_2 kernel gradient (4608x9375 @ 9375x512)": (4608, 9375, 512, False, "dK"),
    "conv5_2 forward (2294x4608 @ 4608x512)": (2294, 4608, 512, False, "same"),
    "fc6 kernel gradient (25088x128 @ 128x4096)": (25088, 128, 4096, False, "same"),
    "fc6 forward (128x25088 @ 25088x4096)": (128, 25088, 4096, False, "same"),
    "fc6 input gradient (128x4096 @ (25088x4096)^T)": (128, 4096, 25088, True, "same"),
}


# name: the image [1, H, W, C] and the kernel's output channels O of a 3x3 convolution
PATCH_PRODUCTS = {
    "conv1_2 (600x1000x64 -> 64)": (600, 1000, 64, 64),
    "conv3_2 (150x250x256 -> 256)": (150, 250, 256, 256),
    "conv4_2 (75x125x512 -> 512)": (75, 125, 512, 512),
    "conv5_2 (37x62x512 -> 512)": (37, 62, 512, 512),
}


def patch_sides(h, w, c, o):
    keys = jax.random.split(jax.random.key(h + c), 2)
    x = jax.random.normal(keys[0], (1, h, w, c), jnp.bfloat16)
    kernel = jax.random.normal(keys[1], (3, 3, c, o), jnp.bfloat16)
    return jit(bf16_patch_dot), (x, kernel), jit(bf16_patch_dot_reference), (x, kernel)


def sides(m, k, n, transposed, xla_form):
    """(kernel, XLA, their operands) for one product."""
    keys = jax.random.split(jax.random.key(m + k + n), 2)
    a = jax.random.normal(keys[0], (m, k), jnp.bfloat16)
    b = jax.random.normal(keys[1], (n, k) if transposed else (k, n), jnp.bfloat16)
    kernel = jit(lambda a, b: bf16_dot(a, b, b_transposed=transposed))
    if xla_form == "dK":  # a = P^T [kkC, M], b = dY [M, O]: XLA takes dY^T and P^T
        b_t = jnp.asarray(b.T)
        xla = jit(lambda a, b_t: lax.dot_general(b_t, a, (((1,), (1,)), ((), ())),
                                                 preferred_element_type=jnp.float32))
        return kernel, (a, b), xla, (a, b_t)
    contracting = 1 if transposed else 0
    xla = jit(lambda a, b: lax.dot_general(a, b, (((1,), (contracting,)), ((), ())),
                                           preferred_element_type=jnp.float32))
    return kernel, (a, b), xla, (a, b)


def timed(fun, args):
    start = time.perf_counter()
    jax.block_until_ready(fun(*args))
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", help="append the table and the command to this markdown file")
    args = parser.parse_args(argv)
    if not _native.amx_usable():
        raise SystemExit(f"no AMX kernel to measure: {_native.why_amx_not_usable()}")

    def alternate(kernel, kernel_args, other, other_args):
        """Median ms of each side, and the per-round ratios other / kernel."""
        timed(kernel, kernel_args), timed(other, other_args)
        seconds = {"kernel": [], "other": []}
        for round_index in range(args.rounds):
            order = ("kernel", "other") if round_index % 2 == 0 else ("other", "kernel")
            for side in order:
                fun, fun_args = (kernel, kernel_args) if side == "kernel" else (other, other_args)
                seconds[side].append(timed(fun, fun_args))
        ratios = [o / k for o, k in zip(seconds["other"], seconds["kernel"])]
        return 1e3 * statistics.median(seconds["kernel"]), 1e3 * statistics.median(seconds["other"]), ratios

    def row(name, flops, kernel_ms, other_ms, ratios):
        return (f"| {name} | {kernel_ms:.1f} ({flops / kernel_ms / 1e6:.0f}) | {other_ms:.1f} "
                f"({flops / other_ms / 1e6:.0f}) | {statistics.median(ratios):.2f}x "
                f"({min(ratios):.2f}-{max(ratios):.2f}) |")

    rows = []
    for name, (m, k, n, transposed, xla_form) in PRODUCTS.items():
        rows.append(row(name, 2 * m * k * n, *alternate(*sides(m, k, n, transposed, xla_form))))
        print(rows[-1], flush=True)
    patch_rows = []
    for name, (h, w, c, o) in PATCH_PRODUCTS.items():
        patch_rows.append(row(name, 2 * h * w * 9 * c * o, *alternate(*patch_sides(h, w, c, o))))
        print(patch_rows[-1], flush=True)

    command = common.command_line("experiments/bench_bf16_dot.py", argv)
    lines = [f"### bfloat16 products: the AMX kernel against XLA's dot, {time.strftime('%Y-%m-%d %H:%M %Z')}",
             "", f"Command: `PYTHONPATH=. python {command}`", "",
             f"| product | kernel ms (GFLOP/s), median of {args.rounds} | XLA's dot ms (GFLOP/s) | "
             "XLA's time / kernel's, median (min-max of the rounds) |",
             "|---|---:|---:|---:|", *rows, "",
             f"| 3x3 convolution, forward | patches read from the image (`bf16_patch_dot`) ms (GFLOP/s) | "
             "patches written, then `bf16_dot` | written / read, median (min-max) |",
             "|---|---:|---:|---:|", *patch_rows]
    common.publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
