"""Pascal VOC detection metric, as the official devkit (`VOCevaldet.m`) computes it.

Per class: detections of all images sorted by score (descending; ties keep image order, then
the order given); each is matched to the ground truth it overlaps most in its image; IoU at
least `iou_threshold` with an unmatched non-difficult object is a true positive, with an
already matched one a false positive (duplicate), with a difficult one neither; anything else
is a false positive. AP is the VOC2007 11-point interpolated precision or the VOC2010+ area
under the monotone precision envelope.

Boxes are the project's continuous xyxy (width = x2 - x1). The devkit adds 1 to widths
because it works on VOC's inclusive pixel indices; on boxes converted as `x1 = xmin - 1,
x2 = xmax` the IoU without the +1 is the same number, so the two agree exactly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxdet.ops.boxes import box_iou


def eval_detection_voc(
    pred_boxes: Sequence[np.ndarray],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    gt_difficults: Sequence[np.ndarray] | None = None,
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    num_classes: int | None = None,
) -> dict:
    """Per-class AP and mAP over a set of images, the devkit's way (see the module docstring).

    Each argument is a list over images (same length) of numpy arrays:
      pred_boxes: [D_i, 4] xyxy; pred_labels: [D_i] int in [0, C); pred_scores: [D_i].
      gt_boxes: [G_i, 4] xyxy; gt_labels: [G_i]; gt_difficults: [G_i] bool (None: none).
    Args:
      iou_threshold: the least IoU of a true positive (the devkit's `ovmax >= minoverlap`).
      use_07_metric: VOC2007's 11-point AP (recall thresholds 0, 0.1, ..., 1) if True, else the
        VOC2010+ area under the precision envelope.
      num_classes: C; default one more than the largest label seen.
    Returns:
      "ap": [C] float64, NaN for a class with no non-difficult ground truth;
      "map": float, mean of the non-NaN APs (NaN if all are);
      "precision", "recall": per class, [D_c] float64 arrays along the score-sorted
        detections of that class (empty when it has none), for PR curves;
      "num_positives": [C] int, non-difficult ground-truth objects per class.
    """
    images, num_classes = _checked_images(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels,
                                          gt_difficults, num_classes)
    # Matching is greedy by score, but only within an image, so each image is matched on its
    # own (in score order, ties in given order) and only the sort for the PR curve is global.
    scores = [[] for _ in range(num_classes)]
    is_tp = [[] for _ in range(num_classes)]
    is_fp = [[] for _ in range(num_classes)]
    num_positives = np.zeros(num_classes, np.int64)
    for boxes, labels, conf, g_boxes, g_labels, g_diff in images:
        for c in np.union1d(labels, g_labels).astype(np.int64):
            det = labels == c
            gt = g_labels == c
            num_positives[c] += int(np.sum(~g_diff[gt]))
            tp, fp = _match_image(boxes[det], conf[det], g_boxes[gt], g_diff[gt], iou_threshold)
            scores[c].append(conf[det])
            is_tp[c].append(tp)
            is_fp[c].append(fp)

    ap = np.full(num_classes, np.nan)
    precision, recall = [], []
    for c in range(num_classes):
        conf = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        order = np.argsort(-conf, kind="stable")
        tp = np.cumsum(np.concatenate(is_tp[c])[order]) if scores[c] else np.zeros(0)
        fp = np.cumsum(np.concatenate(is_fp[c])[order]) if scores[c] else np.zeros(0)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        rec = tp / num_positives[c] if num_positives[c] > 0 else np.full(len(tp), np.nan)
        precision.append(prec)
        recall.append(rec)
        if num_positives[c] > 0:
            ap[c] = average_precision(prec, rec, use_07_metric=use_07_metric)
    valid = ~np.isnan(ap)
    mean_ap = float(np.mean(ap[valid])) if valid.any() else float("nan")
    return {"ap": ap, "map": mean_ap, "precision": precision, "recall": recall,
            "num_positives": num_positives}


def _checked_images(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_difficults,
                    num_classes) -> tuple:
    """(per-image tuples of `_image_arrays`, C) for `eval_detection_voc`'s arguments, checked."""
    n = len(gt_boxes)
    lists = {"pred_boxes": pred_boxes, "pred_labels": pred_labels, "pred_scores": pred_scores,
             "gt_labels": gt_labels}
    if gt_difficults is not None:
        lists["gt_difficults"] = gt_difficults
    for name, values in lists.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} images but gt_boxes has {n}")
    if gt_difficults is None:
        gt_difficults = [np.zeros(len(l), bool) for l in gt_labels]
    images = [
        _image_arrays(i, pred_boxes[i], pred_labels[i], pred_scores[i], gt_boxes[i], gt_labels[i],
                      gt_difficults[i])
        for i in range(n)
    ]
    if num_classes is None:
        seen = [l.max() for im in images for l in (im[1], im[4]) if len(l)]
        num_classes = int(max(seen)) + 1 if seen else 0
    for im in images:
        for labels in (im[1], im[4]):
            if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"labels must be in [0, {num_classes}), got {labels.tolist()}")
    return images, num_classes


def _image_arrays(i, boxes, labels, scores, g_boxes, g_labels, g_diff) -> tuple:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    scores = np.asarray(scores, np.float64).reshape(-1)
    g_boxes = np.asarray(g_boxes, np.float64).reshape(-1, 4)
    g_labels = np.asarray(g_labels).reshape(-1).astype(np.int64)
    g_diff = np.asarray(g_diff, bool).reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(
            f"image {i}: pred_boxes, pred_labels, pred_scores have {len(boxes)}, {len(labels)}, "
            f"{len(scores)} entries"
        )
    if not len(g_boxes) == len(g_labels) == len(g_diff):
        raise ValueError(
            f"image {i}: gt_boxes, gt_labels, gt_difficults have {len(g_boxes)}, {len(g_labels)}, "
            f"{len(g_diff)} entries"
        )
    return boxes, labels, scores, g_boxes, g_labels, g_diff


def _match_image(boxes, scores, g_boxes, g_diff, iou_threshold) -> tuple:
    """True/false positive flags of one image's detections of one class (in the given order).

    Args:
      boxes: [D, 4]; scores: [D]; g_boxes: [G, 4]; g_diff: [G] bool.
    Returns:
      (tp [D] float64, fp [D] float64); a detection matched to a difficult object is neither.
    """
    tp = np.zeros(len(boxes))
    fp = np.zeros(len(boxes))
    if len(g_boxes) == 0:
        fp[:] = 1.0
        return tp, fp
    iou = box_iou(boxes, g_boxes, xp=np)  # [D, G] float64
    best = np.argmax(iou, axis=1)  # first of equal maxima, as the devkit's strict `ov > ovmax`
    best_iou = iou[np.arange(len(boxes)), best]
    taken = np.zeros(len(g_boxes), bool)
    for d in np.argsort(-scores, kind="stable"):
        # The devkit only considers objects that intersect (ovmax starts at -inf).
        if best_iou[d] <= 0.0 or best_iou[d] < iou_threshold:
            fp[d] = 1.0
        elif not g_diff[best[d]]:
            if taken[best[d]]:
                fp[d] = 1.0
            else:
                tp[d] = 1.0
                taken[best[d]] = True
    return tp, fp


def average_precision(precision: np.ndarray, recall: np.ndarray, *, use_07_metric: bool) -> float:
    """AP from a PR curve along score-sorted detections.

    Args:
      precision, recall: [D] cumulative values.
      use_07_metric: mean over the 11 recall thresholds np.arange(0, 1.1, 0.1) (0, 0.1, ...,
        1 as the devkit port computes them) of the best precision at recall >= threshold (0 if
        none); else the area under the envelope
        `p(r) = max precision at recall >= r`.
    """
    precision = np.asarray(precision, np.float64)
    recall = np.asarray(recall, np.float64)
    if use_07_metric:
        # The thresholds as the Python devkit port (py-faster-rcnn's voc_eval) builds them,
        # np.arange(0, 1.1, 0.1), whose floats are not the exact tenths: its third threshold is
        # 0.30000000000000004, so a recall of exactly 3/10 does not reach it. Reported VOC07
        # figures come from this computation, so it is kept bit for bit.
        total = 0.0
        for threshold in np.arange(0.0, 1.1, 0.1):
            reached = recall >= threshold
            total += precision[reached].max() if reached.any() else 0.0
        return total / 11.0
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
