"""How jaxdet's bfloat16 training step on the CPU with the opt-in layers of `xla_ops.amx`
(`model.cpu_bf16_kernels`) is built, measured: variants of the step that differ in
`xla_ops.amx.layers`' choices, alternating in one process.

Variants (names for --variants):
  fc32_patch2304   fully connected layers in float32 (flax's Dense); patch path for 3x3
                   convolutions over 256 channels and more (the choice before 2026-12-02)
  patch2304        fc layers through `bfloat16_matmul`; patch path from 256 channels
  patch1152        the same, patch path from 128 channels (adds VGG16's conv2_2 and conv3_1)
  patch576         the same, patch path from 64 channels (adds conv1_2 and conv2_1), the
                   products through XLA's dot (the choice before the AMX products)
  amx576_written   the same, the products on the AMX tiles where the CPU has them, over the
                   patches written out (`xla_ops.amx.bf16_dot`)
  amx576           the same, the forward's and input gradient's patches read from the image by
                   the product (`xla_ops.amx.bf16_patch_dot`; as shipped)
  amx27            the same, every 3x3 convolution (adds conv1_1, over 3 channels)

Each variant's step is traced and compiled on its own (jax's caches cleared between them), run
once, then the variants take turns for --rounds rounds, in reversed order every other round.
The process keeps the host memory XLA frees, as the jaxdet command does (jaxdet.host_memory).

Usage:
  python experiments/bench_mixed_precision.py --batch-size 1 --rounds 10
  python experiments/bench_mixed_precision.py --variants amx576 amx27 --rounds 8
  add --out experiments/results/peers.md to append the table and the command there.
"""

import argparse
import statistics
import time

if __name__ == "__main__":  # before JAX starts its threads, as the jaxdet command does
    from jaxdet import host_memory

    host_memory.retain_freed_memory_without_gpu()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import common  # noqa: E402
from jaxdet.models import build  # noqa: E402
from jaxdet.training.step import step_key  # noqa: E402
from xla_ops.amx import _native, layers, products  # noqa: E402


def float32_dense(features, *, dtype, **kwargs):
    """The fully connected layers before `bfloat16_matmul`: flax's Dense, float32 on the CPU."""
    return nn.Dense(features, dtype=jnp.float32 if dtype == jnp.bfloat16 else dtype, **kwargs)


# name: (the fully connected layer, the patch path's PATCH_DEPTH_FROM, products on the AMX tiles,
# the patches of the forward and input gradient read from the image by the product)
VARIANTS = {
    "fc32_patch2304": (float32_dense, 3 * 3 * 256, False, False),
    "patch2304": (layers.Dense, 3 * 3 * 256, False, False),
    "patch1152": (layers.Dense, 3 * 3 * 128, False, False),
    "patch576": (layers.Dense, 3 * 3 * 64, False, False),
    "amx576_written": (layers.Dense, 3 * 3 * 64, True, False),
    "amx576": (layers.Dense, 3 * 3 * 64, True, True),
    "amx27": (layers.Dense, 3 * 3 * 3, True, True),
}


def compiled_variant(name, config, batch):
    """(compiled step, train state, batch) of one variant, its choices made while it is traced."""
    dense, depth, amx, patches_read = VARIANTS[name]
    if amx and not products.amx_usable():
        raise SystemExit(f"variant {name} needs the AMX products: {_native.why_amx_not_usable()}")
    jax.clear_caches()  # the model's modules compare equal across variants: trace each anew
    shipped = build.layers_for, layers.PATCH_DEPTH_FROM, _native.kernel, layers.bf16_patch_dot
    # The kit's layers whether or not this CPU has AMX (the variants without it run anywhere).
    build.layers_for = lambda dtype, cpu_bf16_kernels: (layers.Conv, dense)
    layers.PATCH_DEPTH_FROM = depth
    _native.kernel = _native.kernel if amx else (lambda: None)
    if not patches_read:
        layers.bf16_patch_dot = products.bf16_patch_dot_reference
    try:
        _, state, batch, lowered = common.prepared_variant(config, "bfloat16", batch)
    finally:
        build.layers_for, layers.PATCH_DEPTH_FROM, _native.kernel, layers.bf16_patch_dot = shipped
    return lowered.compile(), state, batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(common.PRESETS), default="vgg16")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=["patch576", "amx576_written", "amx576"])
    parser.add_argument("--out", help="append the table and the command to this markdown file")
    args = parser.parse_args(argv)

    config, batch = common.preset_inputs(args.preset, args.batch_size)
    runs, losses = {}, {}
    for variant in args.variants:
        step, state, device_batch = compiled_variant(variant, config, batch)
        state, metrics = step(state, device_batch, step_key(state))
        losses[variant] = float(metrics["loss"])
        runs[variant] = [step, state, device_batch]
        print(f"{variant}: compiled, first loss {losses[variant]:.4f}", flush=True)
    seconds = {variant: [] for variant in args.variants}
    for round_index in range(args.rounds):
        for variant in args.variants if round_index % 2 == 0 else args.variants[::-1]:
            step, state, device_batch = runs[variant]
            start = time.perf_counter()
            state, metrics = step(state, device_batch, step_key(state))
            jax.block_until_ready(metrics)
            seconds[variant].append(time.perf_counter() - start)
            runs[variant][1] = state
        print(f"round {round_index + 1}: " + ", ".join(f"{v} {seconds[v][-1]:.2f} s" for v in args.variants),
              flush=True)

    first = statistics.median(seconds[args.variants[0]])
    command = common.command_line("experiments/bench_mixed_precision.py", argv)
    lines = [f"### bfloat16 step variants, {args.preset} batch {args.batch_size}, {time.strftime('%Y-%m-%d %H:%M %Z')}",
             "", f"Command: `PYTHONPATH=. python {command}`", "",
             f"| variant | step s, median (min-max) of {args.rounds} | against {args.variants[0]} | first loss |",
             "|---|---:|---:|---:|"]
    for variant in args.variants:
        values = seconds[variant]
        lines.append(f"| {variant} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) | "
                     f"{first / statistics.median(values):.2f}x | {losses[variant]:.4f} |")
    common.publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
