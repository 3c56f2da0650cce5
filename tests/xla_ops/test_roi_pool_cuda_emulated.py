"""The CUDA kernels of xla_ops/csrc/roi_pool_cuda.cu, run on the CPU, against the CPU extension.

`xla_ops._roi_pool_cuda_emulated` is roi_pool_cuda.cu compiled as host C++ against the CUDA
runtime emulation in xla_ops/csrc/testing/cuda_runtime.h: every launch validated as CUDA
validates it, each block run on as many real threads as it has CUDA threads (so __syncthreads
and the warp ballot of the deterministic backward are real barriers), atomicAdd a real atomic,
and the blocks run in a shuffled order. So the kernels' indexing, bin arithmetic, compaction and
summation order are checked on every CI run, without a GPU:
  - forward output and argmax bit for bit equal to the CPU extension's;
  - the deterministic (gather) backward bit for bit equal to the CPU backward's float32 sums,
    with cotangents whose sums depend on the order of summation, whatever the block order;
  - the atomicAdd backward equal where every order gives the same sums, close otherwise.
What it cannot check is the GPU's own arithmetic (the bins use the same correctly rounded
float32 operations there, --fmad=false) and its scheduling beyond the emulated barriers: the GPU
tests in test_roi_pool.py do that on a GPU (`make gpu-check`).
"""

import functools
import zlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from xla_ops import _native
from helpers import (ADVERSARIAL_ROIS, PRODUCT_DTYPES, PRODUCT_RANDOM_ROIS, PRODUCT_SCALES, PRODUCT_SHAPE,
                     PRODUCT_SIZES, assert_same, exact_sum_cotangent, product_features, random_rois)
from references.roi_pool_numpy import scatter_through_argmax

emulated = pytest.importorskip(
    "xla_ops._roi_pool_cuda_emulated",
    reason="the CUDA emulation is built by `make build` (JAXDET_CUDA_EMULATION=1 setup.py build_ext)")
pytestmark = pytest.mark.skipif(not _native.is_built("cpu"), reason="CPU extension not built")

ROUNDING = {"none": 0, "round": 1, "adaptive": 2}
BLOCK_ORDER_SEEDS = (1, 2)


def _bits(array):
    """A numpy array as the emulation takes it: float32 as is, half types as their uint16 bits."""
    array = np.ascontiguousarray(array)
    return array if array.dtype == np.float32 else array.view(np.uint16)


def _from_bits(bits, dtype):
    return bits if dtype == np.float32 else bits.view(dtype)


def emulated_forward(features, rois, output_size, scale, rounding):
    out, argmax = emulated.forward(_bits(features), features.dtype.name, rois, *output_size,
                                   np.float32(scale), ROUNDING[rounding])
    return _from_bits(out, features.dtype), argmax


def emulated_backward(cot, rois, argmax, feature_shape, scale, rounding, *, deterministic):
    """The kernel's float32 gradient sums [N, H, W, C]."""
    n, h, w, _ = feature_shape
    return emulated.backward(_bits(cot), cot.dtype.name, rois, argmax, n, h, w, deterministic,
                             np.float32(scale), ROUNDING[rounding])


@functools.partial(jax.jit, static_argnames=("output_size", "scale", "rounding"))
def cpu_forward(features, rois, *, output_size, scale, rounding):
    shape = (rois.shape[0], *output_size, features.shape[3])
    return jax.ffi.ffi_call(
        _native.FORWARD_TARGET,
        (jax.ShapeDtypeStruct(shape, features.dtype), jax.ShapeDtypeStruct(shape, jnp.int32)),
    )(features, rois, pooled_h=np.int64(output_size[0]), pooled_w=np.int64(output_size[1]),
      spatial_scale=np.float32(scale), rounding=np.int32(ROUNDING[rounding]))


@functools.partial(jax.jit, static_argnames=("feature_shape", "scale", "rounding"))
def cpu_backward(cot, rois, argmax, *, feature_shape, scale, rounding):
    """The CPU custom call's float32 sums (before xla_ops rounds them to the features' dtype)."""
    return jax.ffi.ffi_call(
        _native.BACKWARD_TARGET, jax.ShapeDtypeStruct(feature_shape, jnp.float32),
    )(cot, rois, argmax, deterministic=True, spatial_scale=np.float32(scale),
      rounding=np.int32(ROUNDING[rounding]))


def order_sensitive_cotangent(rng, shape, dtype):
    """Cotangents of many magnitudes: their float32 sums change with the order of summation."""
    values = rng.normal(size=shape) * 10.0 ** rng.integers(-4, 5, shape)
    return np.asarray(values, np.float32).astype(dtype)


def compare_with_cpu(features, rois, output_size, scale, rounding, rng):
    """Runs both sides on one case and asserts everything the module docstring promises."""
    dtype = features.dtype
    shape = features.shape
    out, argmax = emulated_forward(features, rois, output_size, scale, rounding)
    cpu_out, cpu_argmax = map(np.asarray, cpu_forward(jnp.asarray(features), jnp.asarray(rois),
                                                      output_size=output_size, scale=scale,
                                                      rounding=rounding))
    assert_same(out, cpu_out)
    assert_same(argmax, cpu_argmax)

    # Deterministic backward: the CPU's bits, with order-sensitive sums, in any block order.
    cot = order_sensitive_cotangent(rng, out.shape, dtype)
    cpu_grad = np.asarray(cpu_backward(jnp.asarray(cot), jnp.asarray(rois), jnp.asarray(argmax),
                                       feature_shape=shape, scale=scale, rounding=rounding))
    for seed in BLOCK_ORDER_SEEDS:
        emulated.set_block_order_seed(seed)
        grad = emulated_backward(cot, rois, argmax, shape, scale, rounding, deterministic=True)
        assert_same(grad, cpu_grad)
    # The atomic backward's order is the threads' race: the same sums up to rounding...
    grad = emulated_backward(cot, rois, argmax, shape, scale, rounding, deterministic=False)
    exact = scatter_through_argmax(cot.astype(np.float64), rois, argmax, shape)
    np.testing.assert_allclose(grad, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max(initial=1.0))
    # ...and exactly the CPU's where every order gives the same float32 sums.
    cot = np.asarray(exact_sum_cotangent(rng, out.shape, dtype))
    exact = scatter_through_argmax(cot.astype(np.float64), rois, argmax, shape).astype(np.float32)
    grad = emulated_backward(cot, rois, argmax, shape, scale, rounding, deterministic=False)
    assert_same(grad, exact)
    assert_same(np.asarray(cpu_backward(jnp.asarray(cot), jnp.asarray(rois), jnp.asarray(argmax),
                                        feature_shape=shape, scale=scale, rounding=rounding)), exact)
    return out, argmax


# ---------------------------------------------------------------------------------------------
# The emulator itself.


@pytest.mark.parametrize("grid, block", [((1, 1, 1), (1, 1, 1)), ((5, 1, 1), (256, 1, 1)),
                                         ((3, 2, 2), (48, 2, 1)), ((2, 1, 1), (8, 4, 32))])
def test_every_thread_of_every_block_runs_once(grid, block):
    error, counts = emulated.count_threads(list(grid), list(block))
    assert error == 0
    assert counts.size == np.prod(grid) * np.prod(block) and (counts == 1).all()


@pytest.mark.parametrize("grid, block", [((1, 1, 1), (1025, 1, 1)), ((1, 1, 1), (32, 32, 2)),
                                         ((1, 1, 1), (1, 1, 65)), ((0, 1, 1), (32, 1, 1)),
                                         ((1, 65536, 1), (32, 1, 1)), ((1, 1, 1), (0, 1, 1))])
def test_invalid_launch_configurations_are_refused_as_cuda_does(grid, block):
    error, counts = emulated.count_threads(list(grid), list(block))
    assert error == emulated.INVALID_CONFIGURATION and counts.size == 0
    # cudaGetLastError() reset the error: the next valid launch reports success.
    assert emulated.count_threads([1, 1, 1], [32, 1, 1])[0] == 0


# ---------------------------------------------------------------------------------------------
# The kernels against the CPU extension.


@pytest.mark.parametrize("rounding", ROUNDING)
@pytest.mark.parametrize("scale", PRODUCT_SCALES)
@pytest.mark.parametrize("output_size", PRODUCT_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", PRODUCT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_emulated_cuda_equals_cpu_over_the_product(dtype, output_size, scale, rounding):
    """The product of test_roi_pool.py: dtypes, output sizes, scales, roundings, with ties, a
    NaN and -inf among the features and the adversarial RoIs among random ones."""
    rng = np.random.default_rng(zlib.crc32(repr((np.dtype(dtype).name, output_size, scale,
                                                 rounding)).encode()))
    features = np.asarray(product_features(rng, dtype))
    rois = np.concatenate([random_rois(rng, PRODUCT_RANDOM_ROIS, 2, (8 / scale, 9 / scale)),
                           ADVERSARIAL_ROIS])
    out, argmax = compare_with_cpu(features, rois, output_size, scale, rounding, rng)
    assert (argmax[:PRODUCT_RANDOM_ROIS] >= 0).mean() > 0.3  # the case pools something
    invalid = PRODUCT_RANDOM_ROIS + np.array([0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13])
    assert (argmax[invalid] == -1).all() and (out[invalid] == 0).all()


SPECIAL_VALUES = np.array([np.nan, np.inf, -np.inf, 1e-40, -1e-40, 1e-45, -0.0, 0.0, 3e38],
                          np.float32)


@pytest.mark.parametrize("dtype", PRODUCT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_nan_inf_and_subnormal_features(dtype):
    rng = np.random.default_rng(5)
    shape = (2, 6, 7, 5)
    features = rng.normal(size=shape).astype(np.float32)
    mask = rng.random(shape) < 0.3
    features[mask] = rng.choice(SPECIAL_VALUES, mask.sum())
    with np.errstate(over="ignore"):  # 3e38 is infinity in float16
        features = features.astype(dtype)
    if dtype != np.float32:  # the half types' own subnormals
        tiny = np.finfo(dtype).smallest_subnormal
        features[0, 1:3, 1:3, :] = np.asarray([tiny, -tiny], dtype)[rng.integers(0, 2, (2, 2, 5))]
    rois = np.concatenate([random_rois(rng, 20, 2, (6 * 4, 7 * 4)), ADVERSARIAL_ROIS])
    for rounding in ROUNDING:
        compare_with_cpu(features, rois, (3, 2), 0.25, rounding, rng)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 9, 3), (2, 7, 1, 3), (1, 6, 5, 1)])
def test_maps_of_height_width_or_channels_one(shape):
    rng = np.random.default_rng(zlib.crc32(repr(shape).encode()))
    features = rng.normal(size=shape).astype(np.float32)
    rois = np.concatenate([random_rois(rng, 12, shape[0], (shape[1] * 2, shape[2] * 2)),
                           ADVERSARIAL_ROIS])
    for rounding in ROUNDING:
        compare_with_cpu(features, rois, (2, 2), 0.5, rounding, rng)


def test_no_rois_and_no_images():
    rng = np.random.default_rng(6)
    features = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    out, argmax = compare_with_cpu(features, np.zeros((0, 5), np.float32), (2, 2), 1.0, "none", rng)
    assert out.shape == argmax.shape == (0, 2, 2, 3)
    # No image: every RoI is invalid (its batch index is never below N = 0).
    empty = np.zeros((0, 5, 6, 3), np.float32)
    out, argmax = compare_with_cpu(empty, ADVERSARIAL_ROIS, (2, 2), 1.0, "round", rng)
    assert (argmax == -1).all() and (out == 0).all()
    for deterministic in (True, False):
        grad = emulated_backward(np.ones_like(out), ADVERSARIAL_ROIS, argmax, empty.shape, 1.0,
                                 "round", deterministic=deterministic)
        assert grad.shape == empty.shape


def test_many_rois_run_several_compaction_rounds():
    """K = 700 RoIs: the gather backward compacts them in rounds of 256 per block, with the
    kept list and the warp counts rewritten between rounds; a pooled size of 7x7 at stride 16 on
    a map 40 channels wide (two channel tiles, one partial)."""
    rng = np.random.default_rng(9)
    shape = (2, 12, 14, 40)
    features = rng.normal(size=shape).astype(ml_dtypes.bfloat16)
    rois = np.concatenate([random_rois(rng, 700, 2, (12 * 16, 14 * 16), spread=0.1),
                           ADVERSARIAL_ROIS])
    out, argmax = compare_with_cpu(features, rois, (7, 7), 1 / 16, "round", rng)
    assert (argmax >= 0).mean() > 0.5
