"""`xla_ops.bf16_dot` (the AMX kernel) against XLA's dot, on the products of VGG16's bfloat16
training step at 600x1000, alternating in one process.

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

import reports
from jaxdet.compiler_options import jit
from xla_ops import _native, bf16_dot

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
    if not _native.bf16_dot_usable():
        raise SystemExit(f"no AMX kernel to measure: {_native.why_bf16_dot_not_usable()}")

    rows = []
    for name, (m, k, n, transposed, xla_form) in PRODUCTS.items():
        kernel, kernel_args, xla, xla_args = sides(m, k, n, transposed, xla_form)
        timed(kernel, kernel_args), timed(xla, xla_args)
        seconds = {"kernel": [], "xla": []}
        for round_index in range(args.rounds):
            order = ("kernel", "xla") if round_index % 2 == 0 else ("xla", "kernel")
            for side in order:
                fun, fun_args = (kernel, kernel_args) if side == "kernel" else (xla, xla_args)
                seconds[side].append(timed(fun, fun_args))
        ratios = [x / y for x, y in zip(seconds["xla"], seconds["kernel"])]
        kernel_ms, xla_ms = (1e3 * statistics.median(seconds[s]) for s in ("kernel", "xla"))
        flops = 2 * m * k * n
        rows.append(f"| {name} | {kernel_ms:.1f} ({flops / kernel_ms / 1e6:.0f}) | {xla_ms:.1f} "
                    f"({flops / xla_ms / 1e6:.0f}) | {statistics.median(ratios):.2f}x "
                    f"({min(ratios):.2f}-{max(ratios):.2f}) |")
        print(rows[-1], flush=True)

    command = reports.command_line("experiments/bench_bf16_dot.py", argv)
    lines = [f"### bfloat16 products: the AMX kernel against XLA's dot, {time.strftime('%Y-%m-%d %H:%M %Z')}",
             "", f"Command: `PYTHONPATH=. python {command}`", "",
             f"| product | kernel ms (GFLOP/s), median of {args.rounds} | XLA's dot ms (GFLOP/s) | "
             "XLA's time / kernel's, median (min-max of the rounds) |",
             "|---|---:|---:|---:|", *rows]
    reports.publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
