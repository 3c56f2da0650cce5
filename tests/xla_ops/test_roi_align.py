"""RoIAlign (xla_ops.roi_align): the native CPU custom call against torchvision's algorithm
transcribed in numpy (tests/references/roi_align_numpy.py) and against the jnp reference; bad
RoIs, dtypes, layouts, and the op under jit, grad, vmap, lax.scan and shard_map."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.test_util import check_grads

import xla_ops
from xla_ops import _native, align, roi_align, roi_align_reference
from references.roi_align_numpy import roi_align_backward, roi_align_forward

PLATFORM = _native.current_platform()
NATIVE_BUILT = align.is_built(PLATFORM)
needs_native = pytest.mark.skipif(
    not NATIVE_BUILT, reason=f"the native op is not built for {PLATFORM}: {align.why_not_built(PLATFORM)}")
IMPLS = ["reference"] + (["ffi"] if NATIVE_BUILT else [])
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_rois(rng, num, num_images, extent, *, spread=0.3):
    """[num, 5] RoIs in input pixels around a map of `extent` = (height, width) input pixels,
    some reaching past its borders."""
    height, width = extent
    x1 = rng.uniform(-spread * width, width, num)
    y1 = rng.uniform(-spread * height, height, num)
    x2 = x1 + rng.uniform(0, width * 0.9, num)
    y2 = y1 + rng.uniform(0, height * 0.9, num)
    return np.stack([rng.integers(0, num_images, num), x1, y1, x2, y2], 1).astype(np.float32)


# RoIs that are bad or extreme. Invalid ones (the first group) give zeros and no gradient.
INVALID_ROIS = np.array([
    [-1, 0, 0, 8, 8],            # batch index below 0
    [2, 0, 0, 8, 8],             # batch index == N
    [1e9, 0, 0, 8, 8],
    [np.nan, 0, 0, 8, 8],
    [np.inf, 0, 0, 8, 8],
    [-0.5, 0, 0, 8, 8],          # truncates to 0 (torchvision would read image 0), but below 0
    [0, np.nan, 0, 8, 8],        # a coordinate not finite
    [0, 0, np.inf, 8, 8],
    [1, 0, 0, -np.inf, 8],
    [0, -3e38, 0, 3e38, 8],      # finite corners whose difference overflows
    [1, 0, -3e38, 8, 3e38],
], np.float32)
EXTREME_ROIS = np.array([
    [0.7, 0, 0, 8, 8],           # valid: image 0 (truncated toward zero)
    [1, 5, 5, 2, 1],             # inverted: 1x1 when not aligned, no samples when aligned
    [0, 3, 3, 3, 3],             # zero size
    [1, 1e6, 1e6, 1e6 + 9, 1e6 + 9],   # far away: every sample outside
    [0, -1e6, -1e6, -1e6 + 9, -1e6 + 9],
    [1, -2e5, -1e5, 2e5, 1e5],   # huge: thousands of samples per bin, few inside the map
    [0, -40, -40, 200, 200],     # around the whole map
    [1, -0.75, -0.75, 63.25, 47.25],  # edges on pixel borders
    [0, 60, 44, 64, 48],         # the bottom-right corner
], np.float32)

SHAPE = (2, 12, 16, 5)  # [N, H, W, C]; rois at scale 1/4 span 64 x 48 input pixels


def features_of(rng, shape=SHAPE, dtype=np.float32):
    return rng.normal(size=shape).astype(np.float32).astype(dtype)


def case_rois(seed, num=14):
    rng = np.random.default_rng(seed)
    return np.concatenate([random_rois(rng, num, SHAPE[0], (48, 64)), INVALID_ROIS, EXTREME_ROIS])


def assert_same(a, b):
    """Same shape, dtype and bits."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    np.testing.assert_array_equal(a.astype(np.float64), b.astype(np.float64))
    bits = np.dtype(f"u{a.dtype.itemsize}")
    np.testing.assert_array_equal(a.view(bits), b.view(bits))


# ---------------------------------------------------------------------------------------------
# Hand-computed cases.


@pytest.mark.parametrize("impl", IMPLS)
def test_linear_features_give_the_mean_sample_position(impl):
    # Bilinear interpolation of 10 * y + x is exact: a bin is 10 * mean(y) + mean(x) of its
    # samples. RoI (1, 1, 5, 5) at scale 1 in 2x2 bins of 2 pixels, 2x2 samples each at
    # 1.5, 2.5 | 3.5, 4.5; aligned shifts them by -0.5.
    y, x = np.mgrid[0:8, 0:8]
    features = jnp.asarray((10 * y + x).astype(np.float32))[None, :, :, None]
    rois = np.array([[0, 1, 1, 5, 5]], np.float32)
    out = roi_align(features, rois, 2, 1.0, 2, impl=impl)
    np.testing.assert_array_equal(out[0, :, :, 0], [[22, 24], [42, 44]])
    out = roi_align(features, rois, 2, 1.0, 2, aligned=True, impl=impl)
    np.testing.assert_array_equal(out[0, :, :, 0], [[16.5, 18.5], [36.5, 38.5]])
    # Adaptive: ceil(bin) = 2 samples per axis, the same.
    np.testing.assert_array_equal(roi_align(features, rois, 2, 1.0, impl=impl)[0, :, :, 0], [[22, 24], [42, 44]])


@pytest.mark.parametrize("impl", IMPLS)
def test_samples_at_minus_one_and_at_the_size_count_clamped_beyond_give_zero(impl):
    # aligned, scale 1, one bin of 0.5 pixels, one sample at its centre: y1 = -0.75 puts it at
    # exactly -1 (inside: clamped to row 0), y1 = -0.76 just below (outside: 0); at the bottom,
    # exactly H (clamped to row H - 1) and just past it.
    features = jnp.asarray(np.arange(1, 13, dtype=np.float32).reshape(1, 4, 3, 1))  # rows 1-3, 4-6, ...
    rois = np.array([[0, 0.75, -0.75, 1.25, -0.25],   # y = -1, x = 0.5
                     [0, 0.75, -0.76, 1.25, -0.26],   # y = -1.01
                     [0, 0.75, 4.25, 1.25, 4.75],     # y = 4 = H
                     [0, 0.75, 4.26, 1.25, 4.76]], np.float32)
    out = roi_align(features, rois, 1, 1.0, 1, aligned=True, impl=impl)[:, 0, 0, 0]
    np.testing.assert_allclose(out, [1.5, 0.0, 10.5, 0.0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Against torchvision's algorithm (numpy) and the jnp reference.

CONFIGS = [  # (output_size, spatial_scale, sampling_ratio, aligned)
    ((7, 7), 0.25, 2, False), ((7, 7), 0.25, 2, True), ((3, 4), 0.25, -1, False),
    ((3, 4), 0.25, 0, True), ((2, 5), 1.0, 2, True), ((1, 1), 0.125, -1, True),
    ((5, 3), 0.5, 0, False), ((4, 4), 1 / 3, 3, False),
]


@needs_native
@pytest.mark.parametrize("output_size,scale,sampling_ratio,aligned", CONFIGS)
def test_native_forward_equals_torchvision_algorithm_bit_for_bit(output_size, scale, sampling_ratio, aligned):
    rng = np.random.default_rng(hash((output_size, sampling_ratio, aligned)) % 2**32)
    features = features_of(rng)
    rois = case_rois(int(scale * 1000) + sampling_ratio)
    expected = roi_align_forward(features, rois, output_size, scale, sampling_ratio, aligned)
    out = roi_align(features, rois, output_size, scale, sampling_ratio, aligned, impl="ffi")
    assert_same(out, expected)  # the same float32 operations in the same order
    assert not np.asarray(out)[len(rois) - len(EXTREME_ROIS) - len(INVALID_ROIS):][:len(INVALID_ROIS)].any()


@pytest.mark.parametrize("output_size,scale,sampling_ratio,aligned", CONFIGS[::2])
def test_reference_forward_within_float32_rounding(output_size, scale, sampling_ratio, aligned):
    rng = np.random.default_rng(7)
    features = features_of(rng)
    rois = case_rois(3)
    expected = roi_align_forward(features, rois, output_size, scale, sampling_ratio, aligned)
    out = roi_align_reference(features, rois, output_size=output_size, spatial_scale=scale,
                              sampling_ratio=sampling_ratio, aligned=aligned)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("output_size,scale,sampling_ratio,aligned", CONFIGS[:4])
def test_gradient_equals_the_scatter_of_torchvision_algorithm(impl, output_size, scale, sampling_ratio, aligned):
    rng = np.random.default_rng(11)
    features = features_of(rng)
    rois = case_rois(5, num=8)
    cot = rng.normal(size=(len(rois), *output_size, SHAPE[3])).astype(np.float32)
    _, vjp = jax.vjp(lambda f: roi_align(f, rois, output_size, scale, sampling_ratio, aligned, impl=impl),
                     jnp.asarray(features))
    grad = np.asarray(vjp(jnp.asarray(cot))[0])
    expected = roi_align_backward(cot, rois, SHAPE, scale, sampling_ratio, aligned)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


def test_reference_gradients_numerically():
    rng = np.random.default_rng(2)
    features = jnp.asarray(features_of(rng, (2, 6, 7, 3)))
    rois = np.array([[0, 1, 2, 20, 18], [1, -4, 3, 9, 30], [1, 2, 2, 3, 3]], np.float32)
    for sampling_ratio, aligned in ((2, False), (-1, True)):
        fn = functools.partial(roi_align_reference, rois=rois, output_size=(3, 2), spatial_scale=0.25,
                               sampling_ratio=sampling_ratio, aligned=aligned)
        check_grads(lambda f: fn(f), (features,), order=1, modes=("rev", "fwd"), atol=1e-2, rtol=1e-2)


@needs_native
def test_native_gradient_numerically_and_rois_get_none():
    rng = np.random.default_rng(4)
    features = jnp.asarray(features_of(rng, (2, 6, 7, 3)))
    rois = jnp.asarray([[0, 1, 2, 20, 18], [1, -4, 3, 9, 30]], jnp.float32)
    fn = lambda f: roi_align(f, rois, (3, 2), 0.25, 2, impl="ffi")
    check_grads(fn, (features,), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
    grad_rois = jax.grad(lambda r: jnp.sum(roi_align(features, r, (3, 2), 0.25, impl="ffi")))(rois)
    np.testing.assert_array_equal(grad_rois, 0)


@needs_native
def test_invalid_rois_give_zeros_and_no_gradient_and_never_read_out_of_bounds():
    rng = np.random.default_rng(6)
    features = features_of(rng)
    rois = np.concatenate([INVALID_ROIS, np.array([[0, -1e9, -1e9, 1e9, 1e9]], np.float32)])  # grid > 2^20
    for sampling_ratio, aligned in ((-1, False), (0, True), (2, False)):
        fn = lambda f: roi_align(f, rois, (4, 3), 0.25, sampling_ratio, aligned, impl="ffi")
        out, vjp = jax.vjp(fn, jnp.asarray(features))
        # (With a fixed grid the last RoI is valid, there being no size limit, but its 2x2
        # samples per bin all fall outside the map: zeros too.)
        assert not np.asarray(out).any()
        np.testing.assert_array_equal(vjp(jnp.ones_like(out))[0], 0)


@needs_native
def test_huge_adaptive_grid_is_bounded_and_equal():
    # 2^20 samples per axis is the largest adaptive grid; one just under it runs in milliseconds
    # (only the samples inside the map are visited) and equals the numpy algorithm.
    features = features_of(np.random.default_rng(1))
    rois = np.array([[0, -1_000_000, -20, 1_000_000, 60], [1, -20, -4_000_000, 70, 4_000_000]], np.float32)
    expected = roi_align_forward(features, rois, (2, 2), 1.0, 0, False)
    assert_same(roi_align(features, rois, 2, 1.0, 0, impl="ffi"), expected)
    assert np.abs(expected).sum() > 0


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_and_inf_features_propagate_as_torchvision(impl):
    # A sample reads its four neighbours and multiplies each, even by a weight of 0: a NaN there
    # makes the bin NaN; a NaN nowhere read changes nothing.
    features = np.zeros((1, 4, 4, 2), np.float32)
    features[0, 1, 1, 0] = np.nan
    features[0, 3, 3, 1] = np.inf
    rois = np.array([[0, 0, 0, 1, 1],     # one sample at (0.5, 0.5): reads rows/cols 0-1
                     [0, 2, 2, 3, 3]],    # at (2.5, 2.5): rows/cols 2-3
                    np.float32)
    out = np.asarray(roi_align(features, rois, 1, 1.0, 1, impl=impl))
    expected = roi_align_forward(features, rois, (1, 1), 1.0, 1, False)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    assert np.isnan(out[0, 0, 0, 0]) and out[0, 0, 0, 1] == 0 and out[1, 0, 0, 1] == np.inf


@pytest.mark.parametrize("impl", IMPLS)
def test_no_rois_and_empty_maps(impl):
    features = jnp.ones((2, 5, 6, 3))
    assert roi_align(features, np.zeros((0, 5), np.float32), 7, 0.5, impl=impl).shape == (0, 7, 7, 3)
    assert roi_align(jnp.ones((2, 0, 6, 3)), case_rois(1)[:4], 2, 0.5, impl=impl).shape == (4, 2, 2, 3)
    assert not np.asarray(roi_align(jnp.ones((2, 0, 6, 3)), case_rois(1)[:4], 2, 0.5, impl=impl)).any()


@needs_native
def test_the_kernel_guards_empty_maps_itself():
    # The custom call on a 0-row map (Python never sends one): zeros, no read.
    out = jax.ffi.ffi_call(align.FORWARD_TARGET, jax.ShapeDtypeStruct((2, 2, 2, 3), jnp.float32))(
        jnp.ones((1, 0, 4, 3)), jnp.asarray([[0, 0, 0, 5, 5], [0, -1, -1, 1, 1]], jnp.float32),
        pooled_h=np.int64(2), pooled_w=np.int64(2), spatial_scale=np.float32(1), sampling_ratio=np.int64(0),
        aligned=False)
    np.testing.assert_array_equal(out, 0)


# ---------------------------------------------------------------------------------------------
# Dtypes, layouts, RoI forms.


@needs_native
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_types_are_the_float32_result_rounded_once(dtype):
    rng = np.random.default_rng(9)
    features = features_of(rng, dtype=dtype)
    rois = case_rois(2)
    for sampling_ratio, aligned in ((2, False), (-1, True)):
        out = roi_align(features, rois, (3, 4), 0.25, sampling_ratio, aligned, impl="ffi")
        assert out.dtype == dtype
        expected = roi_align_forward(np.asarray(features, np.float32), rois, (3, 4), 0.25, sampling_ratio, aligned)
        assert_same(out, expected.astype(dtype))
        ref = roi_align(features, rois, (3, 4), 0.25, sampling_ratio, aligned, impl="reference")
        np.testing.assert_allclose(np.asarray(ref, np.float32), np.asarray(out, np.float32),
                                   rtol=float(jnp.finfo(dtype).eps), atol=1e-6)
        # The gradient: float32 sums rounded to the dtype once.
        cot = rng.normal(size=out.shape).astype(np.float32).astype(dtype)
        _, vjp = jax.vjp(lambda f: roi_align(f, rois, (3, 4), 0.25, sampling_ratio, aligned, impl="ffi"),
                         jnp.asarray(features))
        grad = vjp(jnp.asarray(cot))[0]
        assert grad.dtype == dtype
        exact = roi_align_backward(np.asarray(cot, np.float64), rois, SHAPE, 0.25, sampling_ratio, aligned)
        np.testing.assert_allclose(np.asarray(grad, np.float64), exact, rtol=float(jnp.finfo(dtype).eps),
                                   atol=1e-3 * float(jnp.finfo(dtype).eps))


@needs_native
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_rounding_to_half_types_across_their_range(dtype):
    # Features from subnormals to the largest finite values of the dtype: the kernel's float32
    # means rounded to nearest even (subnormal results, ties, overflow to infinity) as numpy does.
    rng = np.random.default_rng(15)
    info = jnp.finfo(dtype)
    magnitude = np.exp(rng.uniform(np.log(float(info.smallest_subnormal)), np.log(float(info.max)), SHAPE))
    features = (magnitude * rng.choice([-1.0, 1.0], SHAPE)).astype(np.float32).astype(dtype)
    rois = case_rois(8)
    out = roi_align(features, rois, (3, 4), 0.25, 2, impl="ffi")
    with np.errstate(over="ignore", invalid="ignore"):
        expected = roi_align_forward(np.asarray(features, np.float32), rois, (3, 4), 0.25, 2, False)
    assert_same(out, expected.astype(dtype))


@pytest.mark.parametrize("impl", IMPLS)
def test_nchw_and_batched_rois_forms(impl):
    rng = np.random.default_rng(12)
    features = features_of(rng)
    boxes = random_rois(rng, 2 * 5, 1, (48, 64))[:, 1:].reshape(2, 5, 4)
    flat = np.concatenate([np.repeat(np.arange(2.0), 5)[:, None], boxes.reshape(-1, 4)], 1).astype(np.float32)
    nhwc = roi_align(features, flat, (3, 2), 0.25, 2, True, impl=impl)
    nchw = roi_align(np.transpose(features, (0, 3, 1, 2)), flat, (3, 2), 0.25, 2, True, data_format="NCHW", impl=impl)
    assert_same(np.transpose(nchw, (0, 2, 3, 1)), nhwc)
    batched = roi_align(features, boxes, (3, 2), 0.25, 2, True, impl=impl)
    assert_same(batched, np.asarray(nhwc).reshape(2, 5, 3, 2, SHAPE[3]))


@pytest.mark.parametrize("bad,message", [
    (dict(features=np.ones((2, 3, 4))), "features must be"),
    (dict(features=np.ones((1, 3, 4, 2), np.int32)), "features must be float32"),
    (dict(rois=np.ones((3, 4), np.float32)), "rois must be"),
    (dict(rois=np.ones((3, 5), np.int32)), "rois must be a float"),
    (dict(output_size=0), "output_size must be positive"),
    (dict(output_size=(2, 2.5)), "output_size must be"),
    (dict(spatial_scale=-1.0), "spatial_scale must be positive"),
    (dict(sampling_ratio=2.5), "sampling_ratio must be a static int"),
    (dict(sampling_ratio=(1 << 20) + 1), "sampling_ratio must be at most"),
    (dict(aligned=1), "aligned must be a bool"),
    (dict(data_format="HWC"), "data_format must be"),
    (dict(impl="cuda"), "impl must be"),
    (dict(deterministic="yes"), "deterministic must be"),
])
def test_errors_name_the_argument(bad, message):
    args = dict(features=np.ones((1, 3, 4, 2), np.float32), rois=np.ones((3, 5), np.float32), output_size=2,
                spatial_scale=1.0, sampling_ratio=-1, aligned=False, data_format="NHWC", impl="reference",
                deterministic=None)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=message):
        roi_align(args.pop("features"), args.pop("rois"), args.pop("output_size"), args.pop("spatial_scale"),
                  args.pop("sampling_ratio"), args.pop("aligned"), **args)


def test_auto_falls_back_to_reference_with_a_warning(monkeypatch):
    monkeypatch.setattr(align, "is_built", lambda platform: False)
    monkeypatch.setattr(align, "why_not_built", lambda platform: "pretend")
    align._native._warn_fallback.cache_clear()
    features = features_of(np.random.default_rng(0))
    with pytest.warns(RuntimeWarning, match="roi_align: native op unavailable"):
        out = roi_align(features, case_rois(0)[:3], 2, 0.25)
    np.testing.assert_allclose(out, roi_align(features, case_rois(0)[:3], 2, 0.25, impl="reference"))
    with pytest.raises(RuntimeError, match="impl='ffi'"):
        roi_align(features, case_rois(0)[:3], 2, 0.25, impl="ffi")


def test_package_exports():
    assert xla_ops.roi_align is align.roi_align
    assert "roi_align" in xla_ops.__all__ and "roi_align_reference" in xla_ops.__all__


# ---------------------------------------------------------------------------------------------
# Transformations.


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_is_one_call_and_equals_a_loop(impl):
    rng = np.random.default_rng(13)
    features = jnp.asarray(features_of(rng, (3, 2, 6, 7, 4)))  # 3 problems of 2 images
    rois = jnp.asarray(np.stack([np.concatenate([random_rois(rng, 4, 2, (24, 28)), INVALID_ROIS[:3]])
                                 for _ in range(3)]))
    fn = lambda f, r: roi_align(f, r, (2, 3), 0.25, 2, impl=impl)
    batched = jax.vmap(fn)(features, rois)
    for b in range(3):
        np.testing.assert_allclose(batched[b], fn(features[b], rois[b]), rtol=1e-6, atol=1e-6)
    # Gradients: per problem, and summed where the features are shared.
    cot = jnp.asarray(rng.normal(size=batched.shape).astype(np.float32))
    loss = lambda f, r: jnp.sum(jax.vmap(fn)(f, r) * cot)
    grads = jax.grad(loss)(features, rois)
    for b in range(3):
        g = jax.grad(lambda f: jnp.sum(fn(f, rois[b]) * cot[b]))(features[b])
        np.testing.assert_allclose(grads[b], g, rtol=1e-5, atol=1e-6)
    shared = jax.grad(lambda f: jnp.sum(jax.vmap(fn, in_axes=(None, 0))(f, rois) * cot))(features[0])
    expected = sum(jax.grad(lambda f: jnp.sum(fn(f, rois[b]) * cot[b]))(features[0]) for b in range(3))
    np.testing.assert_allclose(shared, expected, rtol=1e-5, atol=1e-5)
    if impl == "ffi":
        hlo = jax.jit(jax.vmap(fn)).lower(features, rois).as_text()
        assert hlo.count(align.FORWARD_TARGET) == 1, hlo
        hlo = jax.jit(jax.grad(loss)).lower(features, rois).as_text()
        assert hlo.count(align.BACKWARD_TARGET) == 1


@needs_native
def test_scan_and_jit_match_reference():
    rng = np.random.default_rng(14)
    features = jnp.asarray(features_of(rng, (4, 2, 6, 7, 3)))
    rois = jnp.asarray(random_rois(rng, 6, 2, (24, 28)))

    def run(impl):
        def body(carry, f):
            out = roi_align(f, rois, 3, 0.25, 0, True, impl=impl)
            return carry + jnp.sum(out ** 2), out
        return jax.jit(lambda fs: jax.lax.scan(body, 0.0, fs))(features)

    def run_loss(fs, impl):
        return jax.lax.scan(lambda c, f: (c + jnp.sum(roi_align(f, rois, 3, 0.25, 0, True, impl=impl) ** 2), None),
                            0.0, fs)[0]

    (total, outs), (total_ref, outs_ref) = run("ffi"), run("reference")
    np.testing.assert_allclose(outs, outs_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(total, total_ref, rtol=1e-5)
    grad = jax.jit(jax.grad(lambda fs: run_loss(fs, "ffi")))(features)
    grad_ref = jax.jit(jax.grad(lambda fs: run_loss(fs, "reference")))(features)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-5)


# On a GPU (`make gpu-check`): the CUDA kernels against the CPU extension.


def _gpu_available():
    try:
        return bool(jax.devices("gpu")) and align.is_built("cuda")
    except RuntimeError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="needs an NVIDIA GPU and the CUDA extension")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("sampling_ratio,aligned", [(2, True), (-1, False)])
def test_cuda_equals_the_cpu_extension(dtype, sampling_ratio, aligned):
    # The same float32 operations in the same order (no contraction on either side): the
    # forward and the deterministic backward bit for bit; the atomicAdd backward to rounding.
    rng = np.random.default_rng(31)
    features_np = np.asarray(features_of(rng, (2, 30, 34, 40), dtype))
    rois = np.concatenate([random_rois(rng, 200, 2, (30 * 16, 34 * 16)), INVALID_ROIS,
                           EXTREME_ROIS * np.array([1, 8, 8, 8, 8], np.float32)])
    cot = rng.normal(size=(rois.shape[0], 7, 7, 40)).astype(np.float32)
    results = {}
    for name, device, det in [("cuda", jax.devices("gpu")[0], False), ("cuda_det", jax.devices("gpu")[0], True),
                              ("cpu", jax.devices("cpu")[0], None)]:
        with jax.default_device(device):
            f = jnp.asarray(features_np, dtype)
            fn = lambda x: roi_align(x, rois, 7, 1 / 16, sampling_ratio, aligned, impl="ffi", deterministic=det)
            grad = jax.grad(lambda x: jnp.vdot(fn(x).astype(jnp.float32), jnp.asarray(cot)))(f)
            results[name] = (np.asarray(fn(f)), np.asarray(grad))
    for name in ("cuda", "cuda_det"):
        assert_same(results[name][0], results["cpu"][0])
    assert_same(results["cuda_det"][1], results["cpu"][1])
    tolerance = 1e-5 if dtype == jnp.float32 else float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.asarray(results["cuda"][1], np.float32), np.asarray(results["cpu"][1], np.float32),
                               rtol=tolerance, atol=tolerance)


# shard_map: 4 simulated CPU devices, in a subprocess (this file run as a script).

NUM_DEVICES = 4


def _run_simulated(out_dir):
    assert jax.device_count() == NUM_DEVICES, jax.devices()
    rng = np.random.default_rng(21)
    features = jnp.asarray(features_of(rng, (NUM_DEVICES * 2, 6, 7, 3)))
    boxes = jnp.asarray(random_rois(rng, NUM_DEVICES * 2 * 3, 1, (24, 28))[:, 1:].reshape(NUM_DEVICES * 2, 3, 4))
    cot = jnp.asarray(rng.normal(size=(NUM_DEVICES * 2, 3, 2, 2, 3)).astype(np.float32))
    fn = lambda f, b: roi_align(f, b, 2, 0.25, 2, True, impl="ffi", deterministic=True)
    loss = lambda f, b: jnp.sum(fn(f, b) * cot)
    plain_out, plain_grad = jax.jit(fn)(features, boxes), jax.jit(jax.grad(loss))(features, boxes)
    mesh = jax.make_mesh((NUM_DEVICES,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    f_sharded, b_sharded = jax.device_put(features, sharding), jax.device_put(boxes, sharding)
    with jax.set_mesh(mesh):
        out = jax.jit(fn)(f_sharded, b_sharded)
        grad = jax.jit(jax.grad(loss))(f_sharded, b_sharded)
        hlo = jax.jit(jax.grad(loss)).lower(f_sharded, b_sharded).compile().as_text()
        # Inside a shard_map: outputs vary over the manual axis (a psum counts each device once).
        inner = jax.shard_map(lambda f, b: jax.lax.psum(jnp.sum(fn(f, b)), "data"), mesh=mesh,
                              in_specs=(jax.sharding.PartitionSpec("data"),) * 2, out_specs=jax.sharding.PartitionSpec())
        total = jax.jit(inner)(f_sharded, b_sharded)
    np.savez(os.path.join(out_dir, "arrays.npz"), plain_out=plain_out, plain_grad=plain_grad, out=out, grad=grad,
             total=total, expected_total=jnp.sum(plain_out))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"out_sharding": str(out.sharding.spec), "hlo": hlo}, f)


@needs_native
def test_shard_map_aligns_per_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the 4-device run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    arrays = np.load(tmp_path / "arrays.npz")
    results = json.loads((tmp_path / "results.json").read_text())
    assert_same(arrays["out"], arrays["plain_out"])
    assert_same(arrays["grad"], arrays["plain_grad"])  # deterministic per image, whatever the split
    np.testing.assert_allclose(arrays["total"], arrays["expected_total"], rtol=1e-5)
    assert "data" in results["out_sharding"]
    # Each device aligns its own 2 images: the custom calls see [2, 6, 7, 3] maps, and no
    # feature map crosses devices.
    hlo = results["hlo"]
    assert "all-gather" not in hlo
    calls = [line for line in hlo.splitlines() if align.BACKWARD_TARGET in line or align.FORWARD_TARGET in line]
    assert calls and all("f32[2,6,7,3]" in line for line in calls), calls


if __name__ == "__main__":
    _run_simulated(sys.argv[1])
