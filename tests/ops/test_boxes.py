"""Box geometry against hand-computed cases and the numpy reference (the paper's formulas)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references.detection_numpy as ref
from jaxdet.ops import box_area, box_iou, clip_boxes, decode_boxes, encode_boxes
from jaxdet.ops.boxes import DECODE_CLAMP


def random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_area_and_iou_by_hand():
    boxes = jnp.array([[0, 0, 10, 10], [5, 5, 15, 15], [10, 0, 20, 10], [3, 3, 3, 8],
                       [6, 6, 2, 2]], jnp.float32)
    np.testing.assert_array_equal(box_area(boxes), [100, 100, 100, 0, 0])
    iou = np.asarray(box_iou(boxes, boxes))
    assert iou[0, 1] == pytest.approx(25 / 175)  # overlap 5x5, union 100 + 100 - 25
    assert iou[0, 0] == 1.0 and iou[1, 1] == 1.0
    assert iou[0, 2] == 0.0  # touching edges share no area
    # Degenerate boxes (zero width; inverted) overlap nothing, themselves included.
    np.testing.assert_array_equal(iou[3], 0.0)
    np.testing.assert_array_equal(iou[:, 4], 0.0)
    np.testing.assert_array_equal(iou, iou.T)


def test_iou_in_numpy_is_float64_and_the_same_formula():
    rng = np.random.default_rng(5)
    a = random_boxes(rng, 9).astype(np.float64)
    b = np.concatenate([random_boxes(rng, 6), [[3, 3, 3, 8], [6, 6, 2, 2]]]).astype(np.float64)
    got = box_iou(a, b, xp=np)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (9, 8)
    np.testing.assert_allclose(got, ref.bbox_iou(a, b), rtol=1e-12)
    np.testing.assert_array_equal(got[:, 6:], 0.0)  # degenerate boxes overlap nothing
    np.testing.assert_allclose(got, np.asarray(box_iou(a.astype(np.float32), b.astype(np.float32))),
                               rtol=1e-5, atol=1e-7)


def test_iou_matches_reference_with_leading_axes():
    rng = np.random.default_rng(0)
    a = np.stack([random_boxes(rng, 7), random_boxes(rng, 7)])  # [2, 7, 4]
    b = np.stack([random_boxes(rng, 5), random_boxes(rng, 5)])  # [2, 5, 4]
    got = np.asarray(jax.jit(box_iou)(a, b))
    assert got.shape == (2, 7, 5)
    for i in range(2):
        np.testing.assert_allclose(got[i], ref.bbox_iou(a[i], b[i]), rtol=1e-6)
    np.testing.assert_array_equal(jax.vmap(box_iou)(a, b), got)


def test_iou_gradient_is_finite_for_degenerate_pairs():
    boxes = jnp.array([[3, 3, 3, 8], [4, 4, 4, 4]], jnp.float32)
    grad = jax.grad(lambda b: box_iou(b, b).sum())(boxes)
    assert np.isfinite(np.asarray(grad)).all()


def test_clip_to_image_broadcasts_per_image():
    boxes = jnp.array([[[-5, -5, 250, 150], [10, 20, 30, 40]],
                       [[-5, -5, 250, 150], [10, 20, 30, 40]]], jnp.float32)  # [2, 2, 4]
    image_hw = jnp.array([[100, 200], [30, 25]], jnp.int32)[:, None, :]  # (height, width)
    np.testing.assert_array_equal(
        clip_boxes(boxes, image_hw),
        [[[0, 0, 200, 100], [10, 20, 30, 40]], [[0, 0, 25, 30], [10, 20, 25, 30]]])


def test_encode_matches_seed_format_loc_and_decode_inverts_it():
    rng = np.random.default_rng(1)
    anchors, boxes = random_boxes(rng, 50), random_boxes(rng, 50)
    deltas = encode_boxes(boxes, anchors)
    np.testing.assert_allclose(deltas, ref.format_loc(anchors, boxes), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(decode_boxes(deltas, anchors), boxes, rtol=1e-5, atol=1e-3)
    # With means and stds: the paper's normalisation of the RoI head's targets.
    means, stds = (0.1, -0.2, 0.0, 0.3), (0.1, 0.1, 0.2, 0.2)
    normalised = encode_boxes(boxes, anchors, means=means, stds=stds)
    np.testing.assert_allclose(normalised, (np.asarray(deltas) - means) / stds, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(decode_boxes(normalised, anchors, means=means, stds=stds), boxes,
                               rtol=1e-5, atol=1e-3)


def test_decode_matches_seed_deformat_loc_and_clamps_before_exp():
    rng = np.random.default_rng(2)
    anchors = random_boxes(rng, 20)
    deltas = rng.normal(0, 0.5, (20, 4)).astype(np.float32)
    np.testing.assert_allclose(decode_boxes(deltas, anchors), ref.deformat_loc(anchors, deltas),
                               rtol=1e-5, atol=1e-3)
    wild = np.array([[0, 0, 100, 1000]], np.float32)
    decoded = np.asarray(jax.jit(decode_boxes)(wild, anchors[:1]))
    assert np.isfinite(decoded).all()
    width = anchors[0, 2] - anchors[0, 0]
    assert decoded[0, 2] - decoded[0, 0] == pytest.approx(width * np.exp(DECODE_CLAMP), rel=1e-5)


def test_coding_rejects_bad_constants():
    boxes = jnp.zeros((1, 4))
    with pytest.raises(ValueError, match="stds"):
        encode_boxes(boxes, boxes, stds=(0.1, 0.1, 0.0, 0.2))
    with pytest.raises(ValueError, match="means"):
        decode_boxes(boxes, boxes, means=(0.0, 0.0))
