"""The XLA options jaxdet compiles its programs with, chosen by measurement.

On CPUs, XLA (jaxlib 0.10) hands convolutions and dots to YNNPACK by default. For the
convolutions of detection models that is the slower path (YNNPACK computes a convolution's
weight gradient as a convolution whose window is the whole feature map), for their dots the
faster one. So jaxdet keeps YNNPACK for dots alone (docs/performance.md; the measurements in
experiments/results/peers.md).

`COMPILER_OPTIONS` are fields of XLA's DebugOptions that only the CPU compiler reads. jaxdet's
compiled entry points (`train_step`, `eval_step`, `predict`, `image_proposals`, the data-parallel
step) are made with `jit`, which compiles them with the options when they are called, or lowered,
at the top level. JAX accepts compiler options only there: called inside another jitted function,
they become part of it, compiled as the outer function is. To compile your own program around
jaxdet's models the same way, pass `compiler_options=jaxdet.compiler_options.COMPILER_OPTIONS` to
your `jax.jit`. A jaxlib whose XLA does not know an option or its value compiles without the
options, with a warning (checked once per process).
"""

import functools
import warnings

import jax
import jax.numpy as jnp

# YNNPACK for each dot on its own; convolutions and elementwise work stay with XLA's emitters.
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def options_accepted() -> bool:
    """Whether this jaxlib compiles with `COMPILER_OPTIONS` (an unknown option is an error); when
    it refuses them, a RuntimeWarning saying so, once per process (the answer is cached)."""
    try:
        jax.jit(jnp.negative, compiler_options=COMPILER_OPTIONS).lower(1.0).compile()
    except Exception as err:  # XLA's "No such compile option", whatever its Python type in this jaxlib
        warnings.warn(f"jaxdet.compiler_options: this jaxlib's XLA refuses {COMPILER_OPTIONS} "
                      f"({type(err).__name__}: {err}); jaxdet's programs compile without them, with "
                      "XLA's defaults", RuntimeWarning, stacklevel=2)
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
