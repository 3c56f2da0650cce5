"""RPN training targets (seed 001, "Assign labels and location of objects to each anchor").

Per image, on fixed shapes: every anchor gets a label 1 (object), 0 (background) or -1
(ignored) and regression deltas towards its best ground-truth box; then 256 labelled anchors
are sampled at up to 1:1. Also home of the two steps the RoI targets share: matching boxes to
padded ground truth (:func:`match_boxes`) and fixed-shape random sampling
(:func:`sample_balanced`).
"""

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.checks import check_count, check_fraction
from jaxdet.ops.boxes import box_iou, encode_boxes


class AnchorTargets(NamedTuple):
    """labels: [A] int32, 1 object, 0 background, -1 ignored; deltas: [A, 4] (tx, ty, tw, th)."""
    labels: jax.Array
    deltas: jax.Array


class BoxMatches(NamedTuple):
    """See :func:`match_boxes`."""
    iou: jax.Array
    max_iou: jax.Array
    gt_index: jax.Array
    matched_boxes: jax.Array


def match_boxes(*, boxes, box_valid, gt_boxes, gt_valid):
    """IoU of boxes with padded ground truth, and each box's best ground-truth box.

    Pairs involving an invalid box or an invalid ground-truth box get IoU 0, so a box without
    valid ground truth has ``max_iou`` 0 (background). ``max_iou > 0`` tells where ``gt_index``
    points at a real, overlapping box (of positive area); elsewhere ``matched_boxes`` holds the
    box itself, so encoding it against the box gives finite zero deltas, never ``log 0``.

    Args:
      boxes: [N, 4] xyxy.
      box_valid: [N] bool.
      gt_boxes: [G, 4] xyxy, G may be 0.
      gt_valid: [G] bool.

    Returns:
      BoxMatches: iou [N, max(G, 1)], max_iou [N], gt_index [N] int32 (0 when G = 0),
      matched_boxes [N, 4] xyxy.
    """
    if gt_boxes.shape[0] == 0:
        # One padding box keeps the reductions below well defined.
        gt_boxes = jnp.zeros((1, 4), boxes.dtype)
        gt_valid = jnp.zeros((1,), bool)
    iou = jnp.where(box_valid[:, None] & gt_valid[None, :], box_iou(boxes, gt_boxes), 0.0)
    max_iou = jnp.max(iou, axis=1)
    gt_index = jnp.argmax(iou, axis=1).astype(jnp.int32)
    matched_boxes = jnp.where((max_iou > 0)[:, None], gt_boxes[gt_index], boxes)
    return BoxMatches(iou=iou, max_iou=max_iou, gt_index=gt_index, matched_boxes=matched_boxes)


def sample_balanced(*, positive, negative, key, num_samples, positive_fraction):
    """Draws up to ``num_samples`` items, at most ``round(num_samples * positive_fraction)`` positive.

    As the seed: ``min(#positive, cap)`` positives uniformly at random, then negatives uniformly
    at random to fill the sample (all of them when there are too few). Fixed-shape: each item
    draws a uniform priority and the highest priorities of each kind win (``lax.top_k``).

    Args:
      positive: [N] bool.
      negative: [N] bool, disjoint from ``positive``.
      key: a ``jax.random`` key.
      num_samples: Python int.
      positive_fraction: Python float in [0, 1].

    Returns:
      (take_positive [N] bool, take_negative [N] bool).
    """
    check_count("num_samples", num_samples)
    check_fraction("positive_fraction", positive_fraction)
    size = positive.shape[0]
    # Disjoint sets, so one draw serves both.
    priority = jax.random.uniform(key, (size,))

    def take_best(candidates, limit, k):
        """[N] bool: the `limit` highest-priority candidates (limit may be traced, k >= limit)."""
        if k == 0:
            return jnp.zeros((size,), bool)
        _, best = lax.top_k(jnp.where(candidates, priority, -1.0), k)
        chosen = candidates[best] & (jnp.arange(k) < limit)
        return jnp.zeros((size,), bool).at[best].set(chosen)

    max_positive = min(int(round(num_samples * positive_fraction)), size)
    take_positive = take_best(positive, max_positive, max_positive)
    num_negative = num_samples - jnp.sum(take_positive, dtype=jnp.int32)
    take_negative = take_best(negative, num_negative, min(num_samples, size))
    return take_positive, take_negative


def label_anchors(*, anchors, gt_boxes, gt_valid, image_hw, positive_iou=0.7, negative_iou=0.3,
                  allowed_border=0.0):
    """Anchor labels before sampling, and regression targets.

    Seed 001's rules, on the anchors inside the image (``x1 >= -border``, ``y1 >= -border``,
    ``x2 <= width + border``, ``y2 <= height + border``); all others are -1 with zero deltas:
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
