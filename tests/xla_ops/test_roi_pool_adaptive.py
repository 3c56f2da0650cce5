"""rounding="adaptive": the crop and adaptive max pooling of the PyTorch Fast R-CNN tutorials
(`SlowROIPool`), in the CPU kernel and the jnp reference (the CUDA kernels run it in
test_roi_pool_cuda_emulated.py), against a numpy transcription of that torch code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xla_ops import _native, roi_pool, roi_pool_with_argmax, rois_from_fractions
from helpers import ADVERSARIAL_ROIS, assert_same
from references.roi_pool_numpy import adaptive_max_pool, scatter_through_argmax, slow_roi_pool

IMPLS = ["reference"] + (["ffi"] if _native.is_built("cpu") else [])
needs_cpu_kernel = pytest.mark.skipif(not _native.is_built("cpu"), reason="CPU extension not built")


def tutorial_rois(rng, num, num_images, extent):
    """[num, 5] RoIs with non-negative coordinates (where the tutorials' slicing is defined),
    some reaching past the map's far edges, some a single pixel wide."""
    height, width = extent
    x1, y1 = rng.uniform(0, width, num), rng.uniform(0, height, num)
    x2 = x1 + rng.uniform(0, width * 0.9, num) * (rng.random(num) > 0.1)
    y2 = y1 + rng.uniform(0, height * 0.9, num) * (rng.random(num) > 0.1)
    return np.stack([rng.integers(0, num_images, num), x1, y1, x2, y2], 1).astype(np.float32)


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_case_adaptive_windows(impl):
    # A 1x8 map, values 10 * x; RoI x in [1, 5] at scale 1 -> crop columns 1..5 (length 5),
    # pooled into 3 bins: aten's windows [0, 2), [1, 4), [3, 5) of the crop, i.e. columns
    # {1, 2}, {2, 3, 4}, {4, 5}; their maxima are their last columns.
    features = jnp.asarray(10.0 * np.arange(8, dtype=np.float32))[None, None, :, None]
    rois = np.array([[0, 1.7, 0, 5.9, 0]], np.float32)  # floor: 1 and 5
    out, argmax = roi_pool_with_argmax(features, rois, (1, 3), 1.0, rounding="adaptive", impl=impl)
    np.testing.assert_array_equal(out[0, 0, :, 0], [20, 40, 50])
    np.testing.assert_array_equal(argmax[0, 0, :, 0], [2, 4, 5])
    # More bins than pixels: a crop of 2 columns into 3 bins repeats them (windows [0, 1),
    # [0, 2), [1, 2)), where rounding="none" would leave bins empty.
    out, argmax = roi_pool_with_argmax(features, np.array([[0, 6, 0, 7, 0]], np.float32), (1, 3),
                                       1.0, rounding="adaptive", impl=impl)
    np.testing.assert_array_equal(argmax[0, 0, :, 0], [6, 7, 7])


def test_numpy_adaptive_max_pool_windows():
    crop = np.arange(5, dtype=np.float32)[None, :, None]
    out, index = adaptive_max_pool(crop, (1, 3))
    np.testing.assert_array_equal(index[0, :, 0], [1, 3, 4])


@pytest.mark.parametrize("impl, dtype", [("reference", np.float32)] + [
    ("ffi", dtype) for dtype in (np.float32, jnp.bfloat16, jnp.float16) if "ffi" in IMPLS])
@pytest.mark.parametrize("output_size, scale", [((7, 7), 1 / 16), ((2, 3), 0.5), ((4, 4), 1 / 32),
                                                ((3, 1), 1.0)])
def test_adaptive_equals_the_tutorials_torch_code(impl, dtype, output_size, scale):
    rng = np.random.default_rng(int(1 / scale) * 31 + output_size[0])
    shape = (2, 11, 13, 6)
    features = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32) / 8
    features[..., 1] = rng.integers(-2, 3, shape[:3])  # ties: the first in row-major order wins
    features = np.asarray(jnp.asarray(features, dtype))
    rois = tutorial_rois(rng, 30, 2, (shape[1] / scale, shape[2] / scale))
    expected = slow_roi_pool(features, rois, output_size, scale)
    got = roi_pool_with_argmax(jnp.asarray(features), rois, output_size, scale,
                               rounding="adaptive", impl=impl)
    assert_same(got[0], expected[0])
    assert_same(got[1], expected[1])
    assert (expected[1] >= 0).mean() > 0.5


@needs_cpu_kernel
@pytest.mark.parametrize("scale", [1 / 16, 1.0, 4.0])
def test_adversarial_rois_adaptive(scale):
    rng = np.random.default_rng(12)
    features = jnp.asarray(rng.normal(size=(2, 6, 7, 3)).astype(np.float32))
    got = roi_pool_with_argmax(features, ADVERSARIAL_ROIS, (2, 3), scale, rounding="adaptive", impl="ffi")
    ref = roi_pool_with_argmax(features, ADVERSARIAL_ROIS, (2, 3), scale, rounding="adaptive",
                               impl="reference")
    assert_same(got[0], ref[0])
    assert_same(got[1], ref[1])
    out, argmax = np.asarray(got[0]), np.asarray(got[1])
    invalid = [0, 1, 2, 3, 4, 5, 7, 8, 9]  # bad batch index or coordinate
    assert (argmax[invalid] == -1).all() and (out[invalid] == 0).all()
    assert ((argmax >= -1) & (argmax < 6 * 7)).all()
    # The huge RoI (+-1e30) covers the whole map: clipped, never an invalid RoI.
    assert (argmax[14] >= 0).all()


@needs_cpu_kernel
def test_adaptive_gradient_is_the_scatter_through_argmax():
    rng = np.random.default_rng(13)
    features = jnp.asarray(rng.normal(size=(2, 9, 10, 4)).astype(np.float32))
    rois = tutorial_rois(rng, 20, 2, (9 * 8, 10 * 8))
    cot = rng.normal(size=(20, 3, 3, 4)).astype(np.float32)
    _, argmax = roi_pool_with_argmax(features, rois, (3, 3), 1 / 8, rounding="adaptive", impl="ffi")
    for impl in ("ffi", "reference"):
        grad = jax.grad(lambda f: jnp.vdot(roi_pool(f, rois, (3, 3), 1 / 8, rounding="adaptive",
                                                    impl=impl), cot))(features)
        np.testing.assert_allclose(grad, scatter_through_argmax(cot, rois, argmax, features.shape),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_rois_from_fractions_give_the_fraction_crops(impl):
    """Boxes in [0, 1] image fractions crop floor(x1 * W) to ceil(x2 * W), end excluded
    (numpy float64), then pool adaptively: the fraction form of the tutorials' SlowROIPool."""
    rng = np.random.default_rng(14)
    features = rng.normal(size=(2, 14, 14, 3)).astype(np.float32)
    a, b = rng.random((25, 2, 2)).transpose(1, 0, 2)
    boxes = np.concatenate([np.minimum(a, b), np.maximum(a, b)], 1)  # (x1, y1, x2, y2)
    boxes[0] = [0, 0, 1, 1]
    boxes[1] = [0.5, 0.25, 0.5 + 1e-9, 0.75]  # a sliver: one column
    image = rng.integers(0, 2, 25)
    rois = rois_from_fractions(boxes, image, (14, 14))
    out, argmax = roi_pool_with_argmax(jnp.asarray(features), rois, (7, 7), 1.0,
                                       rounding="adaptive", impl=impl)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        cx1, cx2 = int(np.floor(x1 * 14)), int(np.ceil(x2 * 14))
        cy1, cy2 = int(np.floor(y1 * 14)), int(np.ceil(y2 * 14))
        want, index = adaptive_max_pool(features[image[k], cy1:cy2, cx1:cx2], (7, 7))
        assert_same(out[k], want)
        np.testing.assert_array_equal(argmax[k], (cy1 + index // (cx2 - cx1)) * 14 + cx1
                                      + index % (cx2 - cx1))
    with pytest.raises(ValueError, match="boxes must be"):
        rois_from_fractions(boxes[:, :3], 0, (14, 14))


@needs_cpu_kernel
@pytest.mark.parametrize("rounding", ["none", "adaptive"])
def test_edges_past_two_to_the_24_stay_inside_the_map(rounding):
    """A map 2^25 - 1 pixels wide: float32(W) rounds up to 2^25, so a right edge clamped in float
    alone would be W + 1 and the last bin would read one element past the image."""
    width = 2**25 - 1
    features = jnp.full((1, 1, width, 1), -jnp.inf, jnp.float32)
    rois = np.array([[0, width - 100, 0, 4e7, 0]], np.float32)
    got = roi_pool_with_argmax(features, rois, (1, 1), 1.0, rounding=rounding, impl="ffi")
    ref = roi_pool_with_argmax(features, rois, (1, 1), 1.0, rounding=rounding, impl="reference")
    assert_same(got[1], ref[1])
    assert 0 <= int(got[1][0, 0, 0, 0]) < width
