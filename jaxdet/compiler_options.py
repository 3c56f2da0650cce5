"""The XLA options jaxdet compiles its programs with, chosen by measurement.

On CPUs, XLA (jaxlib 0.10) hands convolutions and dots to YNNPACK by default. For the
convolutions of detection models that is the slower path, for their dots the faster one. On a
2-core x86 CPU: a VGG16 3x3 convolution's forward and backward at 150x250x256 take 1728 ms
through YNNPACK (its weight gradient is computed as a convolution whose window is the whole
feature map) and 615 ms through XLA's own convolutions; the forward and backward of VGG16's fc6
for 128 RoIs take 545 ms through YNNPACK and 2011 ms through XLA's own dots. So jaxdet keeps
YNNPACK for dots alone: the VGG16 600x1000 training step goes from 7.9 s (no YNNPACK) and
worse (the default) to 6.6 s (experiments/results/peers.md has the figures and commands).

`COMPILER_OPTIONS` are fields of XLA's DebugOptions that only the CPU compiler reads. jaxdet's
compiled entry points (`train_step`, `eval_step`, `predict`, `image_proposals`, the data-parallel
step) are made with `jit`, which compiles them with the options when they are called, or lowered,
at the top level. JAX accepts compiler options only there: called inside another jitted function,
they become part of it, compiled as the outer function is. To compile your own program around
jaxdet's models the same way, pass `compiler_options=jaxdet.compiler_options.COMPILER_OPTIONS` to
your `jax.jit`. A jaxlib whose XLA does not know an option or its value compiles without the
options (checked once).
"""

import functools

import jax
import jax.numpy as jnp

# YNNPACK for each dot on its own; convolutions and elementwise work stay with XLA's emitters.
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def options_accepted() -> bool:
    """Whether this jaxlib compiles with `COMPILER_OPTIONS` (an unknown option is an error)."""
    try:
        jax.jit(jnp.negative, compiler_options=COMPILER_OPTIONS).lower(1.0).compile()
    except Exception:  # XLA's "No such compile option", whatever its Python type in this jaxlib
        return False
    return True


class jit:  # noqa: N801 (used as jax.jit is)
    """`jax.jit(fun, **jit_kwargs)`, compiled with `COMPILER_OPTIONS` when called or lowered at the
    top level, and as part of the caller's program when called inside another trace."""

    def __init__(self, fun, **jit_kwargs):
        self._nested = jax.jit(fun, **jit_kwargs)
        self._top_level = jax.jit(fun, compiler_options=COMPILER_OPTIONS, **jit_kwargs)
        functools.update_wrapper(self, fun)

    def _choose(self, args, kwargs):
        traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs)))
        return self._nested if traced or not options_accepted() else self._top_level

    def __call__(self, *args, **kwargs):
        return self._choose(args, kwargs)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._choose(args, kwargs).lower(*args, **kwargs)

    def trace(self, *args, **kwargs):
        return self._choose(args, kwargs).trace(*args, **kwargs)

    def eval_shape(self, *args, **kwargs):
        return self._nested.eval_shape(*args, **kwargs)
