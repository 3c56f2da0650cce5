"""Pictures: boxes drawn where they belong, PR curves written as PNG."""

import numpy as np
import pytest
from PIL import Image

from jaxdet.evaluation import class_colour, draw_detections, eval_detection_voc, plot_pr_curves


def test_draw_detections_saves_png_with_boxes_in_class_colours(tmp_path):
    image = np.full((64, 80, 3), 30, np.uint8)
    path = tmp_path / "out" / "det.png"
    picture = draw_detections(
        image, np.array([[10, 20, 40, 50], [0, 0, 8, 8]]), np.array([1, 0]), np.array([.9, .1]),
        ("cat", "dog"), gt_boxes=np.array([[50, 5, 75, 30]]), gt_labels=np.array([0]),
        score_threshold=0.5, min_side=128, path=str(path))
    saved = np.asarray(Image.open(path).convert("RGB"))
    assert saved.shape == (128, 160, 3)  # enlarged x2 to reach min_side
    np.testing.assert_array_equal(saved, np.asarray(picture))
    # The kept prediction's right edge (x = 40 * 2) is drawn in its class colour, below the
    # caption; the one under the score threshold is not drawn at all.
    assert tuple(saved[85, 80]) == class_colour(1)
    assert not np.any(np.all(saved[:20, :20] == class_colour(0), axis=2))
    # The ground-truth box (dashed white) shows along its left edge, x = 50 * 2.
    column = saved[20:60, 100]
    assert np.any(np.all(column == 255, axis=1)) and np.any(np.all(column == 30, axis=1))


def test_draw_detections_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(np.zeros((8, 8, 3), np.float32), np.zeros((0, 4)), [], [], ("a",))
    with pytest.raises(ValueError, match="entries"):
        draw_detections(np.zeros((8, 8, 3), np.uint8), np.zeros((2, 4)), [0], [1.0], ("a",))


def test_plot_pr_curves_writes_a_png(tmp_path):
    gt_boxes = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]])]
    result = eval_detection_voc([np.array([[0, 0, 10, 10], [50, 50, 60, 60]])], [np.array([0, 1])],
                                [np.array([.9, .8])], gt_boxes, [np.array([0, 1])],
                                num_classes=3)
    path = tmp_path / "pr.png"
    plot_pr_curves(result, ("a", "b", "c"), str(path))
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (700, 500)
        pixels = np.asarray(im.convert("RGB"))
    # Class a's curve (precision 1 at recall 1) is drawn in its colour somewhere.
    distance = np.abs(pixels.astype(int) - np.array(class_colour(0))).sum(axis=2)
    assert np.sum(distance < 30) > 100
    with pytest.raises(ValueError, match="precision"):
        plot_pr_curves({"ap": np.zeros(1)}, ("a",), str(path))
