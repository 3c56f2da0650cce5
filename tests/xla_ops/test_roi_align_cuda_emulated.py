"""The CUDA kernels of xla_ops/csrc/roi_align_cuda.cu, run on the CPU, against the CPU extension.

`xla_ops._roi_align_cuda_emulated` is roi_align_cuda.cu compiled as host C++ against the CUDA
runtime emulation in xla_ops/csrc/testing/cuda_runtime.h (each block on as many real threads as
it has CUDA threads, atomicAdd a real atomic, blocks in a shuffled order), so that on every CI
run, without a GPU:
  - the forward equals the CPU extension's bit for bit (both take the sampling and bilinear
    arithmetic of roi_align_bins.h and sum a bin's samples in the same order);
  - the deterministic backward equals the CPU backward's float32 sums bit for bit, with
    cotangents whose sums depend on the order of summation, whatever the block order;
  - the atomicAdd backward equals the exact (float64) scatter up to float32 rounding.
What it cannot check is the GPU's own arithmetic (IEEE float32 without contraction there too:
--fmad=false and the _rn intrinsics) and its scheduling: `make gpu-check` runs the GPU.
"""

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xla_ops import align
from references.roi_align_numpy import roi_align_backward

emulated = pytest.importorskip(
    "xla_ops._roi_align_cuda_emulated",
    reason="the CUDA emulation is built by `make build` (JAXDET_CUDA_EMULATION=1 setup.py build_ext)")
pytestmark = pytest.mark.skipif(not align.is_built("cpu"), reason="CPU extension not built")

BLOCK_ORDER_SEEDS = (1, 2)
SHAPE = (2, 9, 11, 6)  # [N, H, W, C]; rois at scale 1/4 span 44 x 36 input pixels
ADVERSARIAL = np.array([
    [-1, 0, 0, 8, 8], [2, 0, 0, 8, 8], [np.nan, 0, 0, 8, 8], [-0.5, 0, 0, 8, 8], [0.7, 0, 0, 8, 8],
    [0, np.nan, 0, 8, 8], [1, 0, 0, np.inf, 8], [0, -3e38, 0, 3e38, 8],
    [1, 5, 5, 2, 1], [0, 3, 3, 3, 3], [1, 1e6, 1e6, 1e6 + 9, 1e6 + 9], [0, -1e5, -2e4, 1e5, 2e4],
    [1, -40, -40, 200, 200], [0, -0.75, -0.75, 43.25, 35.25], [1, 40, 32, 44, 36], [0, -1e9, -1e9, 1e9, 1e9],
], np.float32)


def _bits(array):
    """A numpy array as the emulation takes it: float32 as is, half types as their uint16 bits."""
    array = np.ascontiguousarray(array)
    return array if array.dtype == np.float32 else array.view(np.uint16)


def _from_bits(bits, dtype):
    return bits if dtype == np.float32 else bits.view(dtype)


def rois_of(rng, num=12):
    x1 = rng.uniform(-10, 44, num)
    y1 = rng.uniform(-8, 36, num)
    random = np.stack([rng.integers(0, SHAPE[0], num), x1, y1, x1 + rng.uniform(0, 40, num),
                       y1 + rng.uniform(0, 32, num)], 1).astype(np.float32)
    return np.concatenate([random, ADVERSARIAL])


@functools.partial(jax.jit, static_argnames=("output_size", "scale", "sampling_ratio", "aligned"))
def cpu_forward(features, rois, *, output_size, scale, sampling_ratio, aligned):
    return jax.ffi.ffi_call(
        align.FORWARD_TARGET, jax.ShapeDtypeStruct((rois.shape[0], *output_size, features.shape[3]), features.dtype),
    )(features, rois, pooled_h=np.int64(output_size[0]), pooled_w=np.int64(output_size[1]),
      spatial_scale=np.float32(scale), sampling_ratio=np.int64(sampling_ratio), aligned=aligned)


@functools.partial(jax.jit, static_argnames=("feature_shape", "scale", "sampling_ratio", "aligned"))
def cpu_backward(cot, rois, *, feature_shape, scale, sampling_ratio, aligned):
    """The CPU custom call's float32 sums (before xla_ops rounds them to the features' dtype)."""
    return jax.ffi.ffi_call(align.BACKWARD_TARGET, jax.ShapeDtypeStruct(feature_shape, jnp.float32))(
        cot, rois, spatial_scale=np.float32(scale), sampling_ratio=np.int64(sampling_ratio), aligned=aligned,
        deterministic=True)


def order_sensitive_cotangent(rng, shape, dtype):
    """Cotangents of many magnitudes: their float32 sums change with the order of summation."""
    values = rng.normal(size=shape) * 10.0 ** rng.integers(-4, 5, shape)
    return np.asarray(values, np.float32).astype(dtype)


def assert_same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    bits = np.dtype(f"u{a.dtype.itemsize}")
    np.testing.assert_array_equal(a.view(bits), b.view(bits))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("output_size,scale,sampling_ratio,aligned", [
    ((3, 4), 0.25, 2, False), ((2, 3), 0.25, -1, True), ((4, 2), 0.5, 0, False), ((1, 1), 1.0, 3, True),
])
def test_emulated_kernels_equal_the_cpu_extension(dtype, output_size, scale, sampling_ratio, aligned):
    rng = np.random.default_rng(zlib.crc32(repr((dtype, output_size, sampling_ratio, aligned)).encode()))
    dtype = jnp.dtype(dtype)
    features = rng.normal(size=SHAPE).astype(np.float32).astype(dtype)
    features[0, 2, 3, 1] = np.nan  # propagates through every sample that reads it
    rois = rois_of(rng)
    args = dict(output_size=output_size, scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)

    out = _from_bits(emulated.forward(_bits(features), dtype.name, rois, *output_size, np.float32(scale),
                                      sampling_ratio, aligned), dtype)
    assert_same(out, np.asarray(cpu_forward(jnp.asarray(features), jnp.asarray(rois), **args)))

    cot = order_sensitive_cotangent(rng, out.shape, dtype)
    cpu_grad = np.asarray(cpu_backward(jnp.asarray(cot), jnp.asarray(rois), feature_shape=SHAPE, scale=scale,
                                       sampling_ratio=sampling_ratio, aligned=aligned))
    for seed in BLOCK_ORDER_SEEDS:
        emulated.set_block_order_seed(seed)
        grad = emulated.backward(_bits(cot), dtype.name, rois, *SHAPE[:3], np.float32(scale), sampling_ratio,
                                 aligned, True)
        assert_same(grad, cpu_grad)
    grad = emulated.backward(_bits(cot), dtype.name, rois, *SHAPE[:3], np.float32(scale), sampling_ratio,
                             aligned, False)
    exact = roi_align_backward(np.asarray(cot, np.float64), rois, SHAPE, scale, sampling_ratio, aligned)
    np.testing.assert_allclose(grad, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max(initial=1.0))
    np.testing.assert_allclose(cpu_grad, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max(initial=1.0))


def test_emulated_subnormal_features_are_ieee_as_on_the_cpu():
    # Subnormal inputs and products: both sides run with FTZ/DAZ cleared.
    rng = np.random.default_rng(3)
    features = (rng.normal(size=SHAPE) * 1e-39).astype(np.float32)
    rois = rois_of(rng)
    out = emulated.forward(features, "float32", rois, 2, 2, np.float32(0.25), 2, False)
    assert np.any((out != 0) & (np.abs(out) < 1.17549435e-38))
    assert_same(out, np.asarray(cpu_forward(jnp.asarray(features), jnp.asarray(rois), output_size=(2, 2),
                                            scale=0.25, sampling_ratio=2, aligned=False)))


def test_emulated_empty_shapes():
    rois = rois_of(np.random.default_rng(0))
    assert emulated.forward(np.ones((2, 0, 5, 3), np.float32), "float32", rois, 2, 2, 1.0, 0, False).shape == \
        (len(rois), 2, 2, 3)
    assert not emulated.forward(np.ones((2, 0, 5, 3), np.float32), "float32", rois, 2, 2, 1.0, 0, False).any()
    assert emulated.forward(np.ones((2, 4, 5, 3), np.float32), "float32", rois[:0], 2, 2, 1.0, 0, False).shape == \
        (0, 2, 2, 3)
    for deterministic in (True, False):
        grad = emulated.backward(np.ones((0, 2, 2, 3), np.float32), "float32", rois[:0], 2, 4, 5, 1.0, 0, False,
                                 deterministic)
        assert grad.shape == (2, 4, 5, 3) and not grad.any()


def test_cpu_backward_split_into_bands_equals_the_gather_bit_for_bit():
    # Enough cotangents that the CPU backward splits the image into bands of rows (one work item
    # each, adding only into its band): the sums must not depend on the split, so they equal the
    # deterministic gather's, which owns one row per thread.
    rng = np.random.default_rng(17)
    shape = (1, 20, 24, 64)
    rois = np.stack([np.zeros(200), rng.uniform(-10, 90, 200), rng.uniform(-10, 75, 200),
                     rng.uniform(0, 100, 200), rng.uniform(0, 85, 200)], 1).astype(np.float32)
    rois[:, 3:] += rois[:, 1:3]
    assert 200 * 7 * 7 * 64 * 4 >= 2 << 20  # roi_align_cpu.cc: two items of 2^20 adds at least
    cot = order_sensitive_cotangent(rng, (200, 7, 7, 64), np.float32)
    cpu_grad = np.asarray(cpu_backward(jnp.asarray(cot), jnp.asarray(rois), feature_shape=shape, scale=0.25,
                                       sampling_ratio=2, aligned=True))
    grad = emulated.backward(cot, "float32", rois, *shape[:3], np.float32(0.25), 2, True, True)
    assert_same(grad, cpu_grad)
    assert np.count_nonzero(cpu_grad) > cpu_grad.size // 2
