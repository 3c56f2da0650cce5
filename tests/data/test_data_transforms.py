"""Transforms keep boxes on the same pixels; normalisation conventions and their inverses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.data import (
    boxes_to_original,
    denormalize,
    hflip,
    normalize,
    resize,
    resized_hw,
    scale_boxes,
    size_buckets,
)


@pytest.mark.parametrize("hw, limits, expected", [
    ((375, 500), (600, 1000), (600, 800, 1.6)),       # a VOC landscape image
    ((500, 333), (600, 1000), (901, 600, 600 / 333)),  # portrait, long side under the cap
    ((500, 2000), (600, 1000), (250, 1000, 0.5)),     # the cap on the long side wins
    ((128, 160), (None, None), (128, 160, 1.0)),      # no resize at all
    ((100, 50), (None, 150), (150, 75, 1.5)),         # only a cap
])
def test_resized_hw(hw, limits, expected):
    h, w, scale = resized_hw(*hw, min_size=limits[0], max_size=limits[1])
    assert (h, w) == expected[:2]
    assert scale == pytest.approx(expected[2])


def _picture_with_rectangle(h, w, box, colour=(250, 20, 30), background=(10, 200, 90)):
    image = np.empty((h, w, 3), np.uint8)
    image[:] = background
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = colour
    return image, np.array([box], np.float32)


def test_resize_keeps_the_box_on_its_pixels():
    image, boxes = _picture_with_rectangle(30, 40, (7, 5, 23, 17))
    # 30 -> 75 (x2.5) on both axes.
    out, out_boxes, scale = resize(image, boxes, min_size=75, max_size=1000)
    assert out.shape == (75, 100, 3) and scale == pytest.approx(2.5)
    np.testing.assert_allclose(out_boxes, [[17.5, 12.5, 57.5, 42.5]])
    x1, y1, x2, y2 = out_boxes[0]
    # Away from the blurred edge, inside is the rectangle's colour and outside the background.
    inner = out[int(y1) + 2:int(np.ceil(y2)) - 2, int(x1) + 2:int(np.ceil(x2)) - 2]
    assert np.all(inner == (250, 20, 30))
    outer = np.ones(out.shape[:2], bool)
    outer[int(y1) - 2:int(np.ceil(y2)) + 2, int(x1) - 2:int(np.ceil(x2)) + 2] = False
    assert np.all(out[outer] == (10, 200, 90))


def test_resize_round_trip_to_original_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    x1y1 = rng.uniform(0, 20, (6, 2))
    boxes = np.concatenate([x1y1, x1y1 + rng.uniform(1, 15, (6, 2))], 1).astype(np.float32)
    out, out_boxes, _ = resize(image, boxes, min_size=100, max_size=120)
    assert out.shape[:2] == resized_hw(37, 53, min_size=100, max_size=120)[:2]
    back = boxes_to_original(out_boxes[None], image_hw=np.array([out.shape[:2]]),
                             orig_hw=np.array([[37, 53]]))[0]
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-4)


def test_flip_moves_box_with_pixels_and_is_an_involution():
    image, boxes = _picture_with_rectangle(20, 31, (2, 3, 9, 15))
    flipped, flipped_boxes = hflip(image, boxes)
    np.testing.assert_array_equal(flipped_boxes, [[22, 3, 29, 15]])
    x1, y1, x2, y2 = flipped_boxes[0].astype(int)
    assert np.all(flipped[y1:y2, x1:x2] == (250, 20, 30))
    assert np.sum(np.all(flipped == (250, 20, 30), axis=2)) == (x2 - x1) * (y2 - y1)
    again, again_boxes = hflip(flipped, flipped_boxes)
    np.testing.assert_array_equal(again, image)
    np.testing.assert_array_equal(again_boxes, boxes)


def test_normalize_conventions_by_hand_and_round_trip():
    pixel = np.array([[[255, 128, 0]]], np.uint8)
    torch_style = normalize(pixel, "torchvision")[0, 0]
    np.testing.assert_allclose(
        torch_style,
        [(1.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0.0 - 0.406) / 0.225], rtol=1e-5)
    caffe = normalize(pixel, "caffe")[0, 0]
    np.testing.assert_allclose(caffe, [0 - 102.9801, 128 - 115.9465, 255 - 122.7717], rtol=1e-6)
    image = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    for convention in ("torchvision", "caffe"):
        x = normalize(image, convention)
        assert x.dtype == np.float32 and x.shape == image.shape
        np.testing.assert_array_equal(denormalize(x, convention), image)
    with pytest.raises(ValueError, match="normalization"):
        normalize(image, "bgr")


def test_boxes_to_original_under_jit_and_vmap():
    boxes = jnp.array([[[10.0, 20.0, 30.0, 40.0]], [[0.0, 0.0, 60.0, 30.0]]])  # [2, 1, 4]
    image_hw = jnp.array([[200, 100], [60, 120]])
    orig_hw = jnp.array([[100, 50], [30, 30]])
    expected = np.array([[[5, 10, 15, 20]], [[0, 0, 15, 15]]], np.float32)
    np.testing.assert_allclose(
        jax.jit(boxes_to_original)(boxes, image_hw=image_hw, orig_hw=orig_hw), expected)
    per_image = jax.vmap(lambda b, i, o: scale_boxes(b, from_hw=i, to_hw=o))(
        boxes, image_hw[:, None], orig_hw[:, None])
    np.testing.assert_allclose(per_image, expected)


def test_size_buckets():
    assert size_buckets(600, 1000) == ((608, 1024), (1024, 608))
    assert size_buckets(128, 128, stride=16) == ((128, 128),)


@pytest.mark.parametrize("convention", ["torchvision", "caffe"])
def test_normalize_into_a_batch_slot_from_a_flipped_view(convention):
    image = np.random.default_rng(2).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    view = image[:, ::-1]  # not contiguous
    if convention == "torchvision":
        expected = (view / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    else:
        expected = view[..., ::-1] - np.array([102.9801, 115.9465, 122.7717])
    batch = np.zeros((2, 8, 9, 3), np.float32)
    result = normalize(view, convention, out=batch[1, :5, :6])
    np.testing.assert_allclose(batch[1, :5, :6], expected, rtol=1e-5, atol=1e-5)
    assert np.shares_memory(result, batch)
    # Nothing outside the slot was touched.
    assert not batch[0].any() and not batch[1, 5:].any() and not batch[1, :, 6:].any()
