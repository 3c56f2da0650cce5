"""The RoI pooling op: native custom call against the jnp reference and independent numpy code."""

import functools
import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import xla_ops
from xla_ops import _native, roi_pool, roi_pool_reference, roi_pool_with_argmax
from xla_ops import reference as reference_module
from helpers import (ADVERSARIAL_ROIS, PRODUCT_DTYPES, PRODUCT_RANDOM_ROIS, PRODUCT_SCALES, PRODUCT_SHAPE,
                     PRODUCT_SIZES, assert_same, distinct_features, exact_sum_cotangent, product_features,
                     random_rois)
from references.roi_pool_numpy import scatter_through_argmax, seed_roi_pool

# The tests run on the default device: the CPU, or on a GPU machine the GPU (JAX_PLATFORMS=cpu
# for the CPU there). impl="ffi" needs the extension of that platform, the CUDA one on a GPU.
PLATFORM = _native.current_platform()
NATIVE_BUILT = _native.is_built(PLATFORM)
needs_native = pytest.mark.skipif(
    not NATIVE_BUILT, reason=f"the native op is not built for {PLATFORM}: {_native.why_not_built(PLATFORM)}")
IMPLS = ["reference"] + (["ffi"] if NATIVE_BUILT else [])


# ---------------------------------------------------------------------------------------------
# Hand-computed cases.


@pytest.mark.parametrize("impl", IMPLS)
def test_seed_2x2_pooling_of_a_5x7_region(impl):
    # The Fast R-CNN tutorials' worked example: region (x, y, w, h) = (0, 3, 5, 7), i.e. xyxy (0, 3, 4, 9) in inclusive pixels,
    # pooled 2x2. Seed semantics: x in [0, 5) split at 2.5 -> columns [0, 3) and [2, 5);
    # y in [3, 10) split at 6.5 -> rows [3, 7) and [6, 10). With value 10 * y + x the max of
    # each bin is its bottom-right pixel.
    y, x = np.mgrid[0:12, 0:8]
    features = jnp.asarray((10 * y + x).astype(np.float32))[None, :, :, None]
    rois = np.array([[0, 0, 3, 4, 9]], np.float32)
    out, argmax = roi_pool_with_argmax(features, rois, (2, 2), 1.0, impl=impl)
    np.testing.assert_array_equal(out[0, :, :, 0], [[62, 64], [92, 94]])
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[6 * 8 + 2, 6 * 8 + 4], [9 * 8 + 2, 9 * 8 + 4]])


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_case_round_mode_and_hot_pixels(impl):
    # 6x6 map, zeros except hot pixels; RoI (1.4, 1.6, 4.4, 4.5) at scale 1.
    # rounding="round": x in [1, 4] -> width 4, y in [2, 5] (4.5 rounds away to 5) -> height 4;
    # 2x2 bins: columns {1,2}, {3,4}; rows {2,3}, {4,5}.
    f = np.zeros((6, 6), np.float32)
    f[2, 2], f[3, 4], f[5, 1], f[4, 4] = 5.0, 7.0, 3.0, 9.0
    features = jnp.asarray(f)[None, :, :, None]
    rois = np.array([[0, 1.4, 1.6, 4.4, 4.5]], np.float32)
    out, argmax = roi_pool_with_argmax(features, rois, (2, 2), 1.0, rounding="round", impl=impl)
    np.testing.assert_array_equal(out[0, :, :, 0], [[5, 7], [3, 9]])
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[2 * 6 + 2, 3 * 6 + 4], [5 * 6 + 1, 4 * 6 + 4]])
    # rounding="none": x in [1.4, 5.4) -> columns [1, 4) and [3, 6); y in [1.6, 5.5) -> rows
    # [1, 4) and [3, 6).
    out, argmax = roi_pool_with_argmax(features, rois, (2, 2), 1.0, impl=impl)
    np.testing.assert_array_equal(out[0, :, :, 0], [[5, 7], [3, 9]])
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[2 * 6 + 2, 3 * 6 + 4], [5 * 6 + 1, 4 * 6 + 4]])


@pytest.mark.parametrize("impl", IMPLS)
def test_ties_take_the_first_element_and_empty_bins_are_zero(impl):
    features = jnp.ones((1, 4, 4, 2), jnp.float32)
    # A RoI three pixels wide pooled into 1x6 bins: bins are 0.5 wide, some empty after clipping
    # at the right border (x in [2, 5), the map ends at 4).
    rois = np.array([[0, 2, 0, 4, 3]], np.float32)
    expected_out, expected_arg = seed_roi_pool(np.ones((1, 4, 4, 2), np.float32), rois, (1, 6), 1.0)
    out, argmax = roi_pool_with_argmax(features, rois, (1, 6), 1.0, impl=impl)
    assert_same(out, expected_out)
    assert_same(argmax, expected_arg)
    assert (expected_arg[0, 0, :, 0] == [2, 2, 3, 3, -1, -1]).all()


# ---------------------------------------------------------------------------------------------
# The jnp reference against the independent numpy seed implementation.


@pytest.mark.parametrize("rounding", ["none", "round"])
@pytest.mark.parametrize("scale", [1 / 16, 0.5, 1.0, 4.0])
def test_reference_matches_numpy_seed_kernel(rounding, scale):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(2, 7, 9, 3)).astype(np.float32)
    # The adversarial rows too: at scale 4, 3.4e38 scales to inf and the RoI's size to NaN.
    rois = np.concatenate([random_rois(rng, 12, 2, (7 / scale, 9 / scale)), ADVERSARIAL_ROIS])
    expected = seed_roi_pool(features, rois, (3, 2), scale, rounding)
    got = roi_pool_reference(jnp.asarray(features), jnp.asarray(rois), output_size=(3, 2),
                             spatial_scale=scale, rounding=rounding)
    assert_same(got[0], expected[0])
    assert_same(got[1], expected[1])


# ---------------------------------------------------------------------------------------------
# The reference's bin arithmetic is exact on any backend: its divisions are correctly rounded
# whatever quotient the backend's division gives (XLA's GPU division is within 2 ulp), and
# none of its products is contracted with the following sum into a fused multiply-add.

FLT_MIN = np.float32(1.17549435e-38)
DIVISORS = [1, 2, 3, 5, 7, 14, 49, 64, 100, 255, 1000, 4095, 4096]


def correctly_rounded_quotient(w, p):
    """numpy: w / p in float64 rounded to float32, the correctly rounded float32 quotient (53 >=
    2 * 24 + 2 bits, so rounding twice is innocuous for a division), flushed as Div flushes."""
    q = (w.astype(np.float64) / p).astype(np.float32)
    return np.where(np.abs(q) < FLT_MIN, np.copysign(np.float32(0), q), q)


def float_range(rng, lo, hi, num):
    """`num` float32s spread uniformly over the bit patterns of [lo, hi] (every binade alike)."""
    lo_bits, hi_bits = (int(np.float32(x).view(np.uint32)) for x in (lo, hi))
    return rng.integers(lo_bits, hi_bits + 1, num, dtype=np.uint32).view(np.float32)


def bin_sizes(rng):
    """What bins are made of: integer sizes (rounding="round", up to 2^24 and beyond) and any
    positive float, from the smallest normal float to the largest."""
    return np.concatenate([rng.integers(1, 2**24, 40000).astype(np.float32),
                           rng.integers(2**24, 2**40, 2000).astype(np.float32),
                           float_range(rng, FLT_MIN, np.finfo(np.float32).max, 60000),
                           np.float32([FLT_MIN, 2.0**-80, 2.0**100, np.finfo(np.float32).max, 1, 7, 49])])


@pytest.mark.parametrize("p", DIVISORS)
def test_reference_division_is_correctly_rounded(p):
    w = bin_sizes(np.random.default_rng(p))
    got = np.asarray(jax.jit(lambda a: reference_module._div(a, p))(w))
    assert_same(got, correctly_rounded_quotient(w, p))


@pytest.mark.parametrize("p", DIVISORS)
def test_reference_division_corrects_an_inexact_quotient(p):
    # What a GPU's division may give instead of the correctly rounded quotient: off by one or
    # two ulp (div.full.f32), by a hundred, by a relative 1e-5, or w times the rounded 1/p.
    rng = np.random.default_rng(100 + p)
    w = np.concatenate([float_range(rng, 2.0**-80, 2.0**100, 30000),
                        rng.integers(1, 2**24, 30000).astype(np.float32)])
    exact = correctly_rounded_quotient(w, p)
    approximations = {f"{k:+d} ulp": (exact.view(np.int32) + k).view(np.float32)
                      for k in (-100, -2, -1, 1, 2, 100)}
    approximations.update({f"relative {r:+g}": (exact * (1 + r)).astype(np.float32)
                           for r in (-1e-5, 1e-5)})
    if p & (p - 1):  # not a power of two (for which w * (1 / p) is exact)
        approximations["w * (1 / p)"] = w * np.float32(1 / p)
    # Jitted, XLA's CPU compiler contracts what it can into fused multiply-adds; run op by op
    # (each operation its own computation), every product is rounded apart. Exact both ways.
    jitted = jax.jit(reference_module._nearest_quotient, static_argnums=1)
    for name, q0 in approximations.items():
        assert (q0 != exact).any(), name
        assert_same(np.asarray(jitted(w, p, q0)), exact)
        with jax.disable_jit():
            assert_same(np.asarray(reference_module._nearest_quotient(w, p, q0)), exact)


def test_reference_keeps_products_apart_from_sums():
    # XLA's CPU compiler contracts a * b + c into a fused multiply-add (it sets LLVM's
    # FPOpFusion::Fast, as its GPU compiler does), rounding once; the kernels round the product
    # and the sum apart (-ffp-contract=off, --fmad=false), and so must the reference.
    rng = np.random.default_rng(31)
    a, b, c = (rng.normal(size=100000).astype(np.float32) for _ in range(3))
    apart = a * b + c  # numpy: two roundings
    fused = (a.astype(np.float64) * b + c).astype(np.float32)  # one rounding (exact product)
    with jax.default_device(jax.devices("cpu")[0]):
        plain = np.asarray(jax.jit(lambda a, b, c: a * b + c)(a, b, c))
        if not (plain == fused).all():
            pytest.skip("this CPU's XLA does not contract a * b + c: nothing to show")
        assert (plain != apart).any()
        mul, add = reference_module._mul, reference_module._add
        # The forms the reference has: i * bin + start, and x2 - x1 of two products.
        assert_same(np.asarray(jax.jit(lambda a, b, c: add(mul(a, b), c))(a, b, c)), apart)
        assert_same(np.asarray(jax.jit(lambda a, b, c: add(mul(c, b), -mul(a, b)))(a, b, c)), c * b - a * b)


def test_reference_refuses_output_sizes_its_division_cannot_do_exactly():
    features, rois = jnp.ones((1, 4, 4, 1)), np.array([[0, 0, 0, 3, 3]], np.float32)
    with pytest.raises(ValueError, match="4096"):
        roi_pool_reference(features, rois, output_size=(4097, 1), spatial_scale=1.0)


# ---------------------------------------------------------------------------------------------
# The native kernel against the reference: bit for bit.

CASES = [  # (features shape NHWC, output size, spatial scale)
    ((2, 25, 31, 8), (7, 7), 1 / 16),
    ((1, 13, 11, 16), (2, 3), 1 / 32),
    ((2, 20, 17, 5), (1, 1), 1 / 8),
    ((1, 9, 10, 4), (7, 7), 0.5),
    ((2, 64, 80, 3), (64, 64), 1.0),  # R-CNN style, pooling straight on images
]


@needs_native
@pytest.mark.parametrize("rounding", ["none", "round"])
@pytest.mark.parametrize("shape, output_size, scale", CASES)
def test_native_forward_equals_reference(shape, output_size, scale, rounding):
    # A stable seed per case (hash() of a str changes with every interpreter).
    rng = np.random.default_rng(zlib.crc32(repr((shape, rounding)).encode()))
    features = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    rois = random_rois(rng, 24 if output_size != (64, 64) else 4, shape[0],
                       (shape[1] / scale, shape[2] / scale))
    got = roi_pool_with_argmax(features, rois, output_size, scale, rounding=rounding, impl="ffi")
    ref = roi_pool_with_argmax(features, rois, output_size, scale, rounding=rounding,
                               impl="reference")
    assert_same(got[0], ref[0])
    assert_same(got[1], ref[1])
    assert (np.asarray(got[1]) >= 0).mean() > 0.3  # the case really pools something


# The full product of output sizes, scales, roundings, layouts and dtypes, forward and gradient,
# on a small map with the adversarial rows among the RoIs. Compiling costs about a second per
# program, so the results are computed once per (dtype, output size) group, with few programs
# (`_product_group`), and the test items only compare them.

def _vjp_of_pool(pool, features, cot):
    (out, argmax), vjp = jax.vjp(pool, features)
    (grad,) = vjp((cot, np.zeros(argmax.shape, jax.dtypes.float0)))
    return out, argmax, grad


@functools.partial(jax.jit, static_argnames=("output_size", "rounding"))
def _reference_with_grad(features, rois, cot, scale, *, output_size, rounding):
    """The reference with a traced scale: one compiled program serves every scale."""
    pool = functools.partial(roi_pool_reference, rois=rois, output_size=output_size,
                             spatial_scale=scale, rounding=rounding)
    return _vjp_of_pool(pool, features, cot)


@functools.cache
def _product_group(dtype, output_size):
    """(features, {(scale, rounding): (rois, cotangent)}, {(scale, rounding, impl,
    data_format): (out, argmax, feature gradient)}) as numpy arrays, NHWC features and
    cotangents. The native op runs in both layouts, in one program for the whole group. The
    reference runs in NHWC (its NCHW path is the same between transposes, ops._pool), called
    directly with the scale as a traced value (the same float32 arithmetic as a constant), so
    that it is compiled once per rounding rather than once per case: its compile time dominates."""
    rng = np.random.default_rng(zlib.crc32(repr((np.dtype(dtype).name, output_size)).encode()))
    features = product_features(rng, dtype)
    cases = list(itertools.product(PRODUCT_SCALES, ["none", "round"]))
    inputs = {}
    for scale, rounding in cases:
        rois = np.concatenate([random_rois(rng, PRODUCT_RANDOM_ROIS, 2, (8 / scale, 9 / scale)),
                               ADVERSARIAL_ROIS])
        cot = exact_sum_cotangent(rng, (len(rois), *output_size, PRODUCT_SHAPE[3]), dtype)
        inputs[scale, rounding] = rois, cot

    def native(features, inputs):
        results = {}
        for (scale, rounding), (rois, cot) in inputs.items():
            for data_format in ["NHWC", "NCHW"]:
                layout = (lambda x: x) if data_format == "NHWC" else (
                    lambda x: jnp.transpose(x, (0, 3, 1, 2)))
                pool = functools.partial(roi_pool_with_argmax, rois=rois, output_size=output_size,
                                         spatial_scale=scale, data_format=data_format,
                                         rounding=rounding, impl="ffi")
                results[scale, rounding, "ffi", data_format] = _vjp_of_pool(
                    pool, layout(features), layout(cot))
        return results

    results = jax.jit(native)(features, inputs)
    for (scale, rounding), (rois, cot) in inputs.items():
        results[scale, rounding, "reference", "NHWC"] = _reference_with_grad(
            features, rois, cot, np.float32(scale), output_size=output_size, rounding=rounding)
    as_numpy = lambda tree: jax.tree.map(np.asarray, tree)
    return np.asarray(features), as_numpy(inputs), as_numpy(results)


@needs_native
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("rounding", ["none", "round"])
@pytest.mark.parametrize("scale", PRODUCT_SCALES)
@pytest.mark.parametrize("output_size", PRODUCT_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", PRODUCT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_native_equals_reference_over_the_product(dtype, output_size, scale, rounding,
                                                  data_format):
    features, inputs, results = _product_group(dtype, output_size)
    rois, cot = inputs[scale, rounding]
    out, argmax, grad = results[scale, rounding, "ffi", data_format]
    k, c = len(rois), PRODUCT_SHAPE[3]
    if data_format == "NCHW":
        assert out.shape == argmax.shape == (k, c, *output_size)
        assert grad.shape == (2, c, 8, 9)
        out, argmax = (np.transpose(x, (0, 2, 3, 1)) for x in (out, argmax))
        grad = np.transpose(grad, (0, 2, 3, 1))
    ref_out, ref_argmax, ref_grad = results[scale, rounding, "reference", "NHWC"]
    assert out.shape == (k, *output_size, c) and out.dtype == grad.dtype == dtype
    # Forward: output and argmax bit for bit.
    assert_same(out, ref_out)
    assert_same(argmax, ref_argmax)
    # Backward: bit for bit too. Both sum in float32 and round once to the dtype, and with these
    # cotangents every float32 sum is exact, so both equal the exact sum (numpy, float64)
    # rounded once. (Arbitrary float32 cotangents can differ in the last bit: the kernel sums
    # in RoI order, autodiff's scatter in its own.) Accumulating in a half dtype fails this.
    assert_same(grad, ref_grad)
    exact = scatter_through_argmax(cot.astype(np.float64), rois, argmax, features.shape)
    assert_same(grad, np.asarray(jnp.asarray(exact.astype(np.float32), dtype)))
    # The case really pools something, and the invalid adversarial rows pool nothing.
    assert (argmax[:PRODUCT_RANDOM_ROIS] >= 0).mean() > 0.3
    invalid = PRODUCT_RANDOM_ROIS + np.array([0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13])
    assert (argmax[invalid] == -1).all() and (out[invalid] == 0).all()


@needs_native
def test_batched_rois_form():
    rng = np.random.default_rng(7)
    features = jnp.asarray(rng.normal(size=(3, 10, 12, 4)).astype(np.float32))
    boxes = random_rois(rng, 15, 1, (40, 48))[:, 1:].reshape(3, 5, 4)
    out = roi_pool(features, boxes, (2, 2), 0.25, impl="ffi")
    assert out.shape == (3, 5, 2, 2, 4)
    flat = np.concatenate([np.repeat(np.arange(3.0), 5)[:, None], boxes.reshape(15, 4)], 1)
    assert_same(out.reshape(15, 2, 2, 4), roi_pool(features, flat, (2, 2), 0.25, impl="reference"))


# ---------------------------------------------------------------------------------------------
# Bad input: data-dependent cases give zeros with argmax -1 (never an out-of-bounds access);
# shape and dtype errors name the argument. (ADVERSARIAL_ROIS is in helpers.py.)


@needs_native
@pytest.mark.parametrize("rounding", ["none", "round"])
@pytest.mark.parametrize("scale", [1 / 16, 1.0, 4.0])
def test_adversarial_rois(rounding, scale):
    rng = np.random.default_rng(11)
    features = jnp.asarray(rng.normal(size=(2, 6, 7, 3)).astype(np.float32))
    got = roi_pool_with_argmax(features, ADVERSARIAL_ROIS, (2, 3), scale, rounding=rounding,
                               impl="ffi")
    ref = roi_pool_with_argmax(features, ADVERSARIAL_ROIS, (2, 3), scale, rounding=rounding,
                               impl="reference")
    assert_same(got[0], ref[0])
    assert_same(got[1], ref[1])
    out, argmax = np.asarray(got[0]), np.asarray(got[1])
    invalid = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13]
    assert (argmax[invalid] == -1).all() and (out[invalid] == 0).all()
    if scale <= 1:  # at scale 4 the ordinary RoIs lie beyond the 6x7 map
        assert (argmax[6] >= 0).any() and (argmax[-1] >= 0).any()
    assert ((argmax >= -1) & (argmax < 6 * 7)).all()
    # Backward through the same RoIs stays in bounds and matches the numpy scatter.
    cot = rng.normal(size=out.shape).astype(np.float32)
    grad = jax.grad(lambda f: jnp.vdot(roi_pool(f, ADVERSARIAL_ROIS, (2, 3), scale,
                                                rounding=rounding, impl="ffi"), cot))(features)
    rois_for_scatter = np.nan_to_num(ADVERSARIAL_ROIS).clip(0, 1)
    np.testing.assert_allclose(grad, scatter_through_argmax(cot, rois_for_scatter, argmax,
                                                            features.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_rois_and_empty_maps(impl):
    features = jnp.ones((2, 5, 5, 3))
    out, argmax = roi_pool_with_argmax(features, np.zeros((0, 5), np.float32), (7, 7), impl=impl)
    assert out.shape == (0, 7, 7, 3) and argmax.shape == (0, 7, 7, 3)
    grad = jax.grad(lambda f: roi_pool(f, np.zeros((0, 5), np.float32), impl=impl).sum())(features)
    assert grad.shape == features.shape and not np.asarray(grad).any()
    out, argmax = roi_pool_with_argmax(jnp.ones((1, 0, 5, 3)), np.array([[0, 0, 0, 4, 4]], np.float32),
                                       (2, 2), 1.0, impl=impl)
    assert (np.asarray(argmax) == -1).all() and not np.asarray(out).any()


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_features_propagate_and_extreme_values(impl):
    # The same plane in 33 channels.
    f = np.arange(36, dtype=np.float32).reshape(1, 6, 6, 1).repeat(33, axis=3)
    f[0, 1, 2] = np.nan
    f[0, 4, 0] = np.nan  # second NaN in the same bin: argmax stays on the first
    f[0, :3, 3:] = -np.inf  # a bin of only -inf: output -inf, argmax its first element
    f[0, 3:, 3:] = 1e9  # all equal and >= 2^24: a "first - 1" running-max start would fail
    rois = np.array([[0, 0, 0, 5, 5]], np.float32)
    out, argmax = roi_pool_with_argmax(jnp.asarray(f), rois, (2, 2), 1.0, impl=impl)
    out, argmax = np.asarray(out), np.asarray(argmax)
    assert np.isnan(out[0, 0, 0]).all() and (argmax[0, 0, 0] == 1 * 6 + 2).all()
    assert (out[0, 0, 1] == -np.inf).all() and (argmax[0, 0, 1] == 0 * 6 + 3).all()
    assert np.isnan(out[0, 1, 0]).all() and (argmax[0, 1, 0] == 4 * 6 + 0).all()
    assert (out[0, 1, 1] == 1e9).all() and (argmax[0, 1, 1] == 3 * 6 + 3).all()
    # At 7x7 bins XLA's CPU max reduction over these 33 channels drops NaNs (it keeps them for
    # 2x2 bins): the reference must not rely on it.
    out, argmax = roi_pool_with_argmax(jnp.asarray(f), rois, (7, 7), 1.0, impl=impl)
    expected_out, expected_argmax = seed_roi_pool(f, rois, (7, 7), 1.0)
    assert np.isnan(expected_out).any()
    assert_same(out, expected_out)
    assert_same(argmax, expected_argmax)


@pytest.mark.parametrize("bad, message", [
    (dict(features=np.ones((5, 5, 3), np.float32)), "features"),
    (dict(features=np.ones((1, 5, 5, 3), np.int32)), "features"),
    (dict(rois=np.zeros((3, 4), np.float32)), "rois"),
    (dict(rois=np.zeros((3, 5), np.int32)), "rois"),
    (dict(rois=np.zeros((2, 3, 4), np.float32)), "rois"),
    (dict(output_size=(0, 7)), "output_size"),
    (dict(output_size=(7,)), "output_size"),
    (dict(output_size=2.5), "output_size"),
    (dict(spatial_scale=0.0), "spatial_scale"),
    (dict(spatial_scale=float("nan")), "spatial_scale"),
    (dict(rounding="floor"), "rounding"),
    (dict(impl="cuda"), "impl"),
    (dict(data_format="HWC"), "data_format"),
])
def test_shape_and_dtype_errors_name_the_argument(bad, message):
    args = dict(features=np.ones((1, 5, 5, 3), np.float32), rois=np.zeros((3, 5), np.float32),
                output_size=(2, 2), spatial_scale=1.0)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=message):
        roi_pool(args.pop("features"), args.pop("rois"), **args)


def test_auto_falls_back_to_reference_with_a_warning(monkeypatch):
    import xla_ops.ops as module

    monkeypatch.setattr(module._native, "is_built", lambda platform: False)
    monkeypatch.setattr(module._native, "why_not_built", lambda platform: "not built in this test")
    module._native._warn_fallback.cache_clear()
    features = jnp.ones((1, 4, 4, 1))
    rois = np.array([[0, 0, 0, 3, 3]], np.float32)
    with pytest.warns(RuntimeWarning, match="reference"):
        roi_pool(features, rois, (2, 2), 1.0)
    with pytest.raises(RuntimeError, match="impl='ffi'"):
        roi_pool(features, rois, (2, 2), 1.0, impl="ffi")
    module._native._warn_fallback.cache_clear()


# ---------------------------------------------------------------------------------------------
# Gradients.


def test_reference_gradients_numerically():
    rng = np.random.default_rng(13)
    features = distinct_features(rng, (2, 8, 9, 2))
    rois = random_rois(rng, 6, 2, (8, 9))
    fn = lambda f: roi_pool_reference(f, rois, output_size=(2, 3), spatial_scale=1.0)[0]
    check_grads(fn, (features,), order=1, modes=("rev",), eps=1e-3)


@needs_native
@pytest.mark.parametrize("deterministic", [True, None])
def test_native_gradient_equals_numpy_scatter(deterministic):
    # deterministic=True: the same bits run after run on every platform (on a GPU the gather
    # backward); None: the CPU backward (deterministic too) or a GPU's atomicAdd one.
    rng = np.random.default_rng(17)
    features = jnp.asarray(rng.normal(size=(2, 16, 16, 70)).astype(np.float32))
    # Many overlapping RoIs so several cotangents land on the same feature.
    rois = random_rois(rng, 60, 2, (64, 64))
    cot = jnp.asarray(rng.normal(size=(60, 4, 4, 70)).astype(np.float32))
    loss = lambda f: jnp.vdot(roi_pool(f, rois, (4, 4), 0.25, impl="ffi", deterministic=deterministic), cot)
    grad_fn = jax.jit(jax.grad(loss))
    first, second = np.asarray(grad_fn(features)), np.asarray(grad_fn(features))
    if deterministic or PLATFORM == "cpu":
        np.testing.assert_array_equal(first.view(np.uint32), second.view(np.uint32))
    _, argmax = roi_pool_with_argmax(features, rois, (4, 4), 0.25, impl="ffi")
    expected = scatter_through_argmax(cot, rois, argmax, features.shape)
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5)
    assert np.count_nonzero(expected) > 100
    # The RoIs get a zero cotangent.
    rois_grad = jax.grad(lambda r: jnp.vdot(roi_pool(features, r, (4, 4), 0.25, impl="ffi"), cot))(
        jnp.asarray(rois))
    assert not np.asarray(rois_grad).any()


# ---------------------------------------------------------------------------------------------
# Transformations: jit, vmap, grad, scan.


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_of_a_per_example_function(impl):
    rng = np.random.default_rng(19)
    features = distinct_features(rng, (3, 1, 10, 10, 4))  # 3 examples, one image each
    rois = random_rois(rng, 3 * 5, 1, (40, 40)).reshape(3, 5, 5)
    rois[1, 2, 0] = 1.0  # out of range for its own example (N = 1): must stay invalid
    per_example = lambda f, r: roi_pool(f, r, (2, 2), 0.25, impl=impl)
    got = jax.jit(jax.vmap(per_example))(features, rois)
    want = jnp.stack([per_example(features[i], rois[i]) for i in range(3)])
    assert_same(got, want)
    assert not np.asarray(got[1, 2]).any()
    # Shared features, a batch of RoI sets, and gradients through both vmaps.
    shared = features[0]
    loss = lambda f, r: (per_example(f, r) ** 2).sum()
    got_grad = jax.grad(lambda f: jax.vmap(loss, in_axes=(None, 0))(f, rois).sum())(shared)
    want_grad = sum(jax.grad(loss)(shared, rois[i]) for i in range(3))
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6)
    got_grad = jax.vmap(jax.grad(loss))(features, rois)
    want_grad = jnp.stack([jax.grad(loss)(features[i], rois[i]) for i in range(3)])
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6)


@needs_native
def test_inside_scan_and_jit_matches_reference():
    rng = np.random.default_rng(23)
    features = distinct_features(rng, (2, 12, 12, 3))
    rois = jnp.asarray(random_rois(rng, 4 * 6, 2, (48, 48)).reshape(4, 6, 5))

    def run(impl):
        def body(carry, r):
            pooled = roi_pool(carry, r, (3, 3), 0.25, impl=impl)
            return carry * 0.5 + 0.1 * pooled.mean(), pooled.sum()

        def total(f):
            _, sums = jax.lax.scan(body, f, rois)
            return sums.sum()

        return jax.jit(jax.value_and_grad(total))(features)

    (v1, g1), (v2, g2) = run("ffi"), run("reference")
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


def test_package_exports():
    import jaxdet.ops

    assert jaxdet.ops.roi_pool is xla_ops.roi_pool
    assert set(xla_ops.__all__) >= {"roi_pool", "roi_pool_with_argmax", "roi_pool_reference"}


# ---------------------------------------------------------------------------------------------
# GPU: the CUDA kernels against the reference, where a GPU and the CUDA extension exist.


def _gpu_available():
    try:
        return bool(jax.devices("gpu")) and _native.is_built("cuda")
    except RuntimeError:
        return False


gpu = pytest.mark.skipif(not _gpu_available(), reason="needs an NVIDIA GPU and the CUDA extension")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("rounding", ["none", "round"])
def test_cuda_forward_backward_equal_reference_and_cpu(dtype, rounding):
    rng = np.random.default_rng(29)
    features_np = np.asarray(distinct_features(rng, (2, 30, 34, 40), dtype))
    rois = np.concatenate([random_rois(rng, 200, 2, (30 * 16, 34 * 16)), ADVERSARIAL_ROIS])
    cot = rng.normal(size=(rois.shape[0], 7, 7, 40)).astype(np.float32)
    gpu_device, cpu_device = jax.devices("gpu")[0], jax.devices("cpu")[0]
    results = {}
    for name, device, impl, det in [("cuda", gpu_device, "ffi", False),
                                    ("cuda_det", gpu_device, "ffi", True),
                                    ("ref", gpu_device, "reference", None),
                                    ("cpu", cpu_device, "ffi", None)]:
        with jax.default_device(device):
            f = jnp.asarray(features_np, dtype)
            kwargs = dict(output_size=(7, 7), spatial_scale=1 / 16, rounding=rounding, impl=impl,
                          deterministic=det)
            out = roi_pool_with_argmax(f, rois, **kwargs)
            grad = jax.grad(lambda x: jnp.vdot(roi_pool(x, rois, **kwargs).astype(jnp.float32),
                                               jnp.asarray(cot)))(f)
            results[name] = [np.asarray(x) for x in (*out, grad)]
    for name in ("cuda", "cuda_det", "cpu"):
        assert_same(results[name][0], results["ref"][0])
        assert_same(results[name][1], results["ref"][1])
    # The deterministic gather sums in the CPU kernel's order: the same bits.
    assert_same(results["cuda_det"][2], results["cpu"][2])
    np.testing.assert_allclose(np.asarray(results["cuda"][2], np.float32),
                               np.asarray(results["cpu"][2], np.float32), rtol=2e-2, atol=2e-2)
