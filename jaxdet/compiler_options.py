"""The XLA options jaxdet compiles its programs with, chosen by measurement.

On CPUs, XLA (jaxlib 0.10 and 0.11) hands convolutions, dots and the elementwise work around
them to YNNPACK fusions by default. For detection models that is the slower path: on a 2-core
x86 CPU, a VGG16 3x3 convolution's weight gradient at 150x250x256 runs at 17 GFLOP/s through
YNNPACK (it is computed as a convolution whose window is the whole feature map) and at
117 GFLOP/s through XLA's own convolutions, and the whole VGG16 and tiny training steps are
faster without YNNPACK (experiments/results/peers.md has the figures and their commands).

`COMPILER_OPTIONS` are fields of XLA's DebugOptions: only the CPU compiler reads them, so the
same programs compile unchanged for GPUs. jaxdet's own compiled entry points (`train_step`,
`eval_step`, `predict`, `image_proposals`, the data-parallel step) use `jit`, which passes
them; pass `compiler_options=COMPILER_OPTIONS` to `jax.jit` to compile your own program around
jaxdet's models the same way. An option given here wins over the same flag in `XLA_FLAGS`.
"""

import jax

# "" enables no YNNPACK fusion type: XLA's own emitters and Eigen convolutions do the work.
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def jit(fun, **jit_kwargs):
    """`jax.jit(fun, **jit_kwargs)` compiled with `COMPILER_OPTIONS`."""
    return jax.jit(fun, compiler_options=COMPILER_OPTIONS, **jit_kwargs)
