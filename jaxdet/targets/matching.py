"""Matching boxes (anchors, RoIs) to padded ground truth by IoU, as detectron2's matcher.py.

Per image, on fixed shapes: the IoU of every box with every valid ground-truth box and each
box's best match. The thresholds that turn a match into a label are the caller's
(`jaxdet.targets.anchor_targets`, `jaxdet.targets.proposal_targets`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdet.ops.boxes import box_iou


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
