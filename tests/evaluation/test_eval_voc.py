"""VOC AP: hand-computed cases and an independent transcription of the devkit's VOCevaldet.m."""

import numpy as np
import pytest

from jaxdet.evaluation import average_precision, eval_detection_voc
from references.voc_devkit import devkit_class_ap

GT_A = [0.0, 0.0, 10.0, 10.0]  # area 100: a box [0, 0, 10, 10 * t] has IoU t with it


def _iou_box(t, base=GT_A):
    x1, y1, x2, y2 = base
    return [x1, y1, x2, y1 + (y2 - y1) * t]


def _hand_case(b_difficult):
    """Image 0: gt A, detections at IoU .42 (score .9), .95 (.8), .38 (.7).
    Image 1: gt B (difficult or not) hit at IoU .9 (.85) and again at .8 (.6); gt C missed."""
    b, c = [20.0, 20.0, 40.0, 40.0], [50.0, 50.0, 60.0, 60.0]
    pred_boxes = [np.array([_iou_box(.42), _iou_box(.95), _iou_box(.38)]),
                  np.array([_iou_box(.9, b), _iou_box(.8, b)])]
    pred_scores = [np.array([.9, .8, .7]), np.array([.85, .6])]
    pred_labels = [np.zeros(3, int), np.zeros(2, int)]
    gt_boxes = [np.array([GT_A]), np.array([b, c])]
    gt_labels = [np.zeros(1, int), np.zeros(2, int)]
    gt_difficults = [np.array([False]), np.array([b_difficult, False])]
    return pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_difficults


@pytest.mark.parametrize("b_difficult, use_07, expected", [
    # Sorted: .9 FP(IoU .42), .85 TP(B), .8 TP(A), .7 FP(.38), .6 FP(duplicate of B); 3 gt.
    # recall 0,1/3,2/3,2/3,2/3; precision 0,1/2,2/3,1/2,2/5.
    # 11-point: thresholds 0..0.6 reach recall 2/3 at precision 2/3 -> 7 * (2/3) / 11.
    (False, True, 14 / 33),
    # area: 2/3 (recall) * 2/3 (envelope) = 4/9.
    (False, False, 4 / 9),
    # B difficult: its detections are neither TP nor FP, and B is not a positive (2 gt):
    # recall 0,0,1/2,1/2,1/2; precision 0,0,1/2,1/3,1/3.
    # 11-point: thresholds 0..0.5 at precision 1/2 -> 6 * (1/2) / 11; area 1/2 * 1/2.
    (True, True, 3 / 11),
    (True, False, 1 / 4),
])
def test_hand_computed_ap(b_difficult, use_07, expected):
    result = eval_detection_voc(*_hand_case(b_difficult), use_07_metric=use_07)
    assert result["ap"][0] == pytest.approx(expected, abs=1e-12)
    assert result["map"] == pytest.approx(expected, abs=1e-12)
    assert result["num_positives"][0] == (2 if b_difficult else 3)


def test_hand_case_curve():
    result = eval_detection_voc(*_hand_case(False))
    np.testing.assert_allclose(result["recall"][0], [0, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(result["precision"][0], [0, 1 / 2, 2 / 3, 1 / 2, 2 / 5])


def test_single_gt_three_detections():
    # The example: one object, detections at IoU .95, .42, .38 (best score first):
    # TP, FP, FP -> precision 1, 1/2, 1/3 at recall 1: AP 1 either way.
    gt = [np.array([GT_A])]
    preds = [np.array([_iou_box(.95), _iou_box(.42), _iou_box(.38)])]
    for use_07 in (True, False):
        result = eval_detection_voc(preds, [np.zeros(3, int)], [np.array([.9, .8, .7])], gt,
                                    [np.zeros(1, int)], use_07_metric=use_07)
        assert result["ap"][0] == pytest.approx(1.0)
    # As a difficult object: nothing counts and there is no positive: NaN.
    result = eval_detection_voc(preds, [np.zeros(3, int)], [np.array([.9, .8, .7])], gt,
                                [np.zeros(1, int)], [np.array([True])])
    assert np.isnan(result["ap"][0]) and np.isnan(result["map"])


def test_threshold_is_inclusive_and_classes_without_gt_are_nan():
    gt_boxes = [np.array([GT_A])]
    gt_labels = [np.array([1])]
    half = [np.array([_iou_box(0.5)])]  # IoU exactly 0.5: the devkit's ovmax >= 0.5 holds
    result = eval_detection_voc(half, [np.array([1])], [np.array([1.0])], gt_boxes, gt_labels,
                                num_classes=3)
    assert np.isnan(result["ap"][0]) and result["ap"][1] == 1.0 and np.isnan(result["ap"][2])
    assert result["map"] == 1.0
    below = [np.array([_iou_box(0.49)])]
    result = eval_detection_voc(below, [np.array([1])], [np.array([1.0])], gt_boxes, gt_labels)
    assert result["ap"][1] == 0.0
    # Detections of a class absent from the ground truth do not lower other classes' AP.
    result = eval_detection_voc([np.array([GT_A, GT_A])], [np.array([1, 2])],
                                [np.array([1.0, 1.0])], gt_boxes, gt_labels)
    assert result["ap"].shape == (3,) and result["ap"][1] == 1.0 and np.isnan(result["ap"][2])


def test_average_precision_11_point_thresholds_are_the_devkit_ports():
    # py-faster-rcnn's voc_ap: thresholds np.arange(0., 1.1, 0.1), whose third is
    # 0.30000000000000004, so a recall of exactly 3/10 (10 objects, 3 found, then 2 misses)
    # misses it: AP = (1 + 1 + 1) / 11, not 4 / 11.
    precision = np.array([1.0, 1.0, 1.0, 0.75, 0.6])
    recall = np.array([0.1, 0.2, 0.3, 0.3, 0.3])
    assert average_precision(precision, recall, use_07_metric=True) == pytest.approx(3 / 11)
    assert average_precision(precision, recall, use_07_metric=False) == pytest.approx(0.3)
    # A recall of 0.4 reaches 0, 0.1, 0.2, 0.3 and 0.4 (4 * 0.1 == 0.4 in floats).
    assert average_precision(np.array([1.0]), np.array([0.4]), use_07_metric=True) == pytest.approx(5 / 11)


def test_bad_arguments():
    with pytest.raises(ValueError, match="pred_scores has 1 images but gt_boxes has 2"):
        eval_detection_voc([np.zeros((0, 4))] * 2, [np.zeros(0)] * 2, [np.zeros(0)],
                           [np.zeros((0, 4))] * 2, [np.zeros(0)] * 2)
    with pytest.raises(ValueError, match="labels must be in"):
        eval_detection_voc([np.zeros((1, 4))], [np.array([5])], [np.ones(1)],
                           [np.zeros((0, 4))], [np.zeros(0)], num_classes=2)


def _random_set(rng, num_images, num_classes, integer):
    pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_diff = [], [], [], [], [], []
    for _ in range(num_images):
        g = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (g, 2))
        gb = np.concatenate([xy, xy + rng.uniform(8, 40, (g, 2))], 1)
        gl = rng.integers(0, num_classes - 1, g)  # the last class never has ground truth
        # Detections: jittered copies of the objects (IoU around the threshold), duplicates,
        # and random boxes; labels sometimes wrong; scores coarse so ties occur.
        jitter = np.repeat(gb, 3, axis=0) + rng.normal(0, 4, (3 * g, 4))
        noise_xy = rng.uniform(0, 80, (int(rng.integers(0, 4)), 2))
        noise = np.concatenate([noise_xy, noise_xy + rng.uniform(5, 30, noise_xy.shape)], 1)
        pb = np.concatenate([jitter, noise]).reshape(-1, 4)
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
        pl = np.concatenate([np.repeat(gl, 3), rng.integers(0, num_classes, len(noise))])
        flip = rng.random(len(pl)) < 0.1
        pl[flip] = rng.integers(0, num_classes, flip.sum())
        if integer:
            gb, pb = np.round(gb), np.round(pb)
        pred_boxes.append(pb)
        pred_labels.append(pl.astype(int))
        pred_scores.append(np.round(rng.random(len(pl)), 1))
        gt_boxes.append(gb)
        gt_labels.append(gl)
        gt_diff.append(rng.random(g) < 0.2)
    return pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_diff


@pytest.mark.parametrize("seed, integer", [(0, True), (1, True), (2, False), (3, False)])
def test_matches_devkit_reference_on_random_detections(seed, integer):
    rng = np.random.default_rng(seed)
    num_classes = 4
    data = _random_set(rng, 40, num_classes, integer)
    for use_07 in (True, False):
        result = eval_detection_voc(*data, use_07_metric=use_07, num_classes=num_classes)
        expected = np.array([devkit_class_ap(c, *data, use_07) for c in range(num_classes)])
        assert np.isnan(expected[-1])
        np.testing.assert_allclose(result["ap"], expected, rtol=1e-12, atol=1e-12)
        assert result["map"] == pytest.approx(np.nanmean(expected), abs=1e-12)
        assert 0.05 < result["map"] < 0.95  # a mix of hits and misses, not a trivial case
