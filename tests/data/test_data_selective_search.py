"""`jaxdet.data.selective_search`: OpenCV's (x, y, w, h) rectangles as xyxy boxes in original pixels,
capped; a known object found exactly on a non-square image; the same boxes whichever worker
computes an image; and, without OpenCV, one line naming the extra to install."""

import sys
import types

import numpy as np
import pytest

from jaxdet.data import Record, make_dataset
from jaxdet.data import selective_search as ss
from helpers import assert_one_paragraph, run


def test_rectangles_become_xyxy_capped_clipped_and_distinct():
    rects = np.array([[2, 3, 4, 5],      # -> (2, 3, 6, 8)
                      [2, 3, 4, 5],      # a duplicate: dropped
                      [0, 0, 30, 30],    # clipped to the 20 x 10 image
                      [5, 5, 0, 3],      # empty: dropped
                      [1, 1, 1, 1]])
    boxes = ss.rects_to_boxes(rects, max_proposals=10, width=20, height=10)
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[2, 3, 6, 8], [0, 0, 20, 10], [1, 1, 2, 2]])  # OpenCV's order kept
    np.testing.assert_array_equal(ss.rects_to_boxes(rects, max_proposals=2, width=20, height=10),
                                  [[2, 3, 6, 8], [0, 0, 20, 10]])  # the first ones
    assert ss.rects_to_boxes(np.zeros((0, 4), np.int32), max_proposals=5, width=20, height=10).shape == (0, 4)


def _image(height=48, width=80):
    """[H, W, 3] uint8: a red block on rows 10..29 and columns 30..59 of a grey background."""
    image = np.full((height, width, 3), 128, np.uint8)
    image[10:30, 30:60] = (220, 30, 30)
    return image


def test_an_object_is_found_exactly_in_original_pixels():
    image = _image()
    boxes = ss.image_selective_search(image)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and 1 <= len(boxes) <= 2000
    assert any(np.array_equal(box, [30, 10, 60, 30]) for box in boxes), boxes  # x1 = column, x2 = last column + 1
    assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 48).all() and (boxes[:, :2] >= 0).all()
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    np.testing.assert_array_equal(ss.image_selective_search(image), boxes)  # C's rand() reseeded per image
    quality = ss.image_selective_search(image, mode="quality", max_proposals=3)
    assert len(quality) <= 3
    with pytest.raises(ValueError, match="mode must be one of"):
        ss.image_selective_search(image, mode="best")


def test_the_boxes_do_not_depend_on_the_worker():
    rng = np.random.default_rng(0)
    records = []
    for i in range(4):
        image = _image(48 + 8 * i, 80)
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        records.append(Record(image_id=i, height=image.shape[0], width=80, boxes=np.zeros((0, 4), np.float32),
                              labels=np.zeros((0,), np.int32), difficult=np.zeros((0,), bool),
                              iscrowd=np.zeros((0,), bool), image=image, source_id=f"img{i}"))
    records = make_dataset(records, ("block",)).records
    alone = ss.dataset_selective_search(records, workers=1, show_progress=False)
    pooled = ss.dataset_selective_search(records[::-1], workers=2, show_progress=False)
    assert list(alone) == [f"img{i}" for i in range(4)]
    for key, boxes in alone.items():
        np.testing.assert_array_equal(pooled[key], boxes)


@pytest.mark.parametrize("cv2, found", [(None, "OpenCV is not installed"),
                                        (types.ModuleType("cv2"), "this OpenCV has no contrib modules")])
def test_without_opencv_one_line_names_the_extra(cv2, found, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "cv2", cv2)  # None: `import cv2` raises ImportError
    with pytest.raises(ss.MissingOpenCV, match=found) as error:
        ss.require_opencv()
    assert "pip install 'jaxdet[proposals]'" in str(error.value) and "\n" not in str(error.value)
    out = tmp_path / "p.npz"
    status, _, err = run(capsys, "proposals", "--method", "selective-search", "--config", "tiny_shapes:smoke",
                         "--out", out, "--no-progress")
    assert status == 1 and not out.exists()
    assert_one_paragraph(err, found, "pip install 'jaxdet[proposals]'")
