"""RPN training targets (Ren et al. 2015, sec. 3.1.2; py-faster-rcnn's anchor_target_layer.py).

Per image, on fixed shapes: every anchor gets a label 1 (object), 0 (background) or -1
(ignored) and regression deltas towards its best ground-truth box
(`jaxdet.targets.matching`); then 256 labelled anchors are sampled at up to 1:1
(`jaxdet.targets.sampling`).
"""

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdet.checks import check_count, check_fraction
from jaxdet.ops.boxes import encode_boxes
from jaxdet.targets.matching import match_boxes
from jaxdet.targets.sampling import sample_balanced


class AnchorTargets(NamedTuple):
    """labels: [A] int32, 1 object, 0 background, -1 ignored; deltas: [A, 4] (tx, ty, tw, th)."""
    labels: jax.Array
    deltas: jax.Array


def label_anchors(*, anchors, gt_boxes, gt_valid, image_hw, positive_iou=0.7, negative_iou=0.3,
                  allowed_border=0.0):
    """Anchor labels before sampling, and regression targets.

    The rules of Ren et al. 2015 (sec. 3.1.2) as py-faster-rcnn's anchor_target_layer applies
    them, on the anchors inside the image (``x1 >= -border``, ``y1 >= -border``,
    ``x2 <= width + border``, ``y2 <= height + border``; py-faster-rcnn's right and bottom bounds
    are strict); all others are -1 with zero deltas:
      * max IoU over valid ground truth ``< negative_iou``: 0;
      * max IoU ``>= positive_iou``: 1;
      * an anchor whose IoU with some ground-truth box equals that box's best IoU over the
        inside anchors (ties included): 1. Only when that best IoU is above 0: a box touching
        no inside anchor would otherwise make every anchor with IoU 0 positive.
    An image without valid ground truth labels every inside anchor 0.

    Deltas (means 0, stds 1) go from each anchor to its best ground-truth box wherever that IoU
    is above 0 (so on every positive), and are 0 elsewhere.

    Args:
      anchors: [A, 4] xyxy.
      gt_boxes: [G, 4] xyxy (padded; G may be 0).
      gt_valid: [G] bool.
      image_hw: [2] (height, width) of the image content, int or float.
      positive_iou: Python float in (0, 1].
      negative_iou: Python float in [0, positive_iou].
      allowed_border: Python float, pixels an anchor may cross the border by.

    Returns:
      AnchorTargets(labels [A] int32 in {1, 0, -1}, deltas [A, 4]).
    """
    check_fraction("positive_iou", positive_iou, include_low=False)
    check_fraction("negative_iou", negative_iou, high=positive_iou)
    if not isinstance(allowed_border, numbers.Real):
        raise ValueError(f"allowed_border must be a Python number, got {allowed_border!r}")
    if anchors.ndim != 2 or anchors.shape[1] != 4:
        raise ValueError(f"anchors must be [A, 4], got {anchors.shape}")
    if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4 or gt_valid.shape != gt_boxes.shape[:1]:
        raise ValueError(f"gt_boxes must be [G, 4] and gt_valid [G], got {gt_boxes.shape} and "
                         f"{gt_valid.shape}")
    image_hw = jnp.asarray(image_hw, anchors.dtype)
    inside = ((anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border)
              & (anchors[:, 2] <= image_hw[1] + allowed_border)
              & (anchors[:, 3] <= image_hw[0] + allowed_border))
    match = match_boxes(boxes=anchors, box_valid=inside, gt_boxes=gt_boxes, gt_valid=gt_valid)
    best_for_gt = jnp.max(match.iou, axis=0)  # [G]
    is_best_for_gt = jnp.any((match.iou == best_for_gt) & (best_for_gt > 0), axis=1)  # [A]
    labels = jnp.where(match.max_iou < negative_iou, 0, -1)
    labels = jnp.where((match.max_iou >= positive_iou) | is_best_for_gt, 1, labels)
    labels = jnp.where(inside, labels, -1).astype(jnp.int32)

    deltas = jnp.where((match.max_iou > 0)[:, None], encode_boxes(match.matched_boxes, anchors), 0.0)
    return AnchorTargets(labels=labels, deltas=deltas)


def anchor_targets(*, anchors, gt_boxes, gt_valid, image_hw, key, num_samples=256,
                   positive_fraction=0.5, positive_iou=0.7, negative_iou=0.3, allowed_border=0.0):
    """RPN targets of one image: :func:`label_anchors`, then sampling.

    ``min(#positive, round(num_samples * positive_fraction))`` positives and
    ``num_samples - #sampled positives`` negatives (or all there are) keep their labels, drawn
    uniformly with ``key``; every other anchor becomes -1. vmap over images with one key each.

    Args:
      anchors: [A, 4] xyxy.
      gt_boxes: [G, 4] xyxy (padded; G may be 0).
      gt_valid: [G] bool.
      image_hw: [2] (height, width) of the image content.
      key: a ``jax.random`` key.
      num_samples, positive_fraction: Python int and float, the sample size and its positive cap.
      positive_iou, negative_iou, allowed_border: see :func:`label_anchors`.

    Returns:
      AnchorTargets(labels [A] int32 in {1, 0, -1}, deltas [A, 4]).
    """
    check_count("num_samples", num_samples)
    check_fraction("positive_fraction", positive_fraction)
    labelled = label_anchors(anchors=anchors, gt_boxes=gt_boxes, gt_valid=gt_valid,
                             image_hw=image_hw, positive_iou=positive_iou,
                             negative_iou=negative_iou, allowed_border=allowed_border)
    take_positive, take_negative = sample_balanced(
        positive=labelled.labels == 1, negative=labelled.labels == 0, key=key,
        num_samples=num_samples, positive_fraction=positive_fraction)
    labels = jnp.where(take_positive, 1, jnp.where(take_negative, 0, -1)).astype(jnp.int32)
    return AnchorTargets(labels=labels, deltas=labelled.deltas)
