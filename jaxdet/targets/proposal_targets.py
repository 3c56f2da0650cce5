"""RoI-head training targets (Girshick 2015, sec. 2.3; py-faster-rcnn's proposal_target_layer.py).

Per image, fixed shapes: the ground-truth boxes are appended to the proposals (so every object
has at least one perfect foreground RoI), each RoI is matched to its best ground-truth box,
RoIs with IoU >= 0.5 are foreground of that box's class, RoIs with IoU in [lo, 0.5) background,
and 128 are sampled with up to 25% foreground.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdet.checks import check_count, check_fraction
from jaxdet.ops.boxes import encode_boxes
from jaxdet.targets.matching import match_boxes
from jaxdet.targets.sampling import sample_balanced


class ProposalTargets(NamedTuple):
    """The sampled RoIs of one image, foreground first.

    rois: [S, 4] xyxy.
    labels: [S] int32 in [0, K], 0 background, l + 1 for ground-truth class l.
    deltas: [S, 4] regression targets to the matched box divided by the stds (0 unless
      foreground).
    valid: [S] bool; False for padding when fewer than S RoIs qualify (zeros there).
    """
    rois: jax.Array
    labels: jax.Array
    deltas: jax.Array
    valid: jax.Array


def proposal_targets(*, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, key,
                     num_samples=128, foreground_fraction=0.25, foreground_iou=0.5,
                     background_iou=(0.0, 0.5), stds=(0.1, 0.1, 0.2, 0.2)):
    """Samples the RoIs of one image and their class and box targets.

    Foreground: max IoU with valid ground truth ``>= foreground_iou``; background: max IoU in
    ``[lo, hi)`` (an image without ground truth makes every valid proposal background when
    ``lo`` is 0). The lower bound is inclusive as in py-faster-rcnn (``>= BG_THRESH_LO``): with
    ``> lo`` at ``lo = 0``, every proposal that touches no object would leave the background
    pool and an image without objects would have nothing to sample.
    ``min(#foreground, round(num_samples * foreground_fraction))`` foreground RoIs and the rest
    background (all there are when too few) are drawn uniformly with ``key``.

    Args:
      proposals: [P, 4] xyxy.
      proposal_valid: [P] bool.
      gt_boxes: [G, 4] xyxy (padded; G may be 0).
      gt_labels: [G] int in [0, K).
      gt_valid: [G] bool.
      key: a ``jax.random`` key.
      num_samples: Python int S.
      foreground_fraction: Python float in [0, 1].
      foreground_iou: Python float in (0, 1].
      background_iou: (lo, hi) Python floats, 0 <= lo <= hi <= foreground_iou.
      stds: 4 positive floats dividing the deltas (means 0).

    Returns:
      ProposalTargets with S rows.
    """
    check_count("num_samples", num_samples)
    check_fraction("foreground_fraction", foreground_fraction)
    check_fraction("foreground_iou", foreground_iou, include_low=False)
    if len(background_iou) != 2:
        raise ValueError(f"background_iou must be (lo, hi), got {background_iou!r}")
    low, high = background_iou
    check_fraction("background_iou[1]", high, high=foreground_iou)
    check_fraction("background_iou[0]", low, high=high)
    if proposals.ndim != 2 or proposals.shape[1] != 4 or proposal_valid.shape != proposals.shape[:1]:
        raise ValueError(f"proposals must be [P, 4] and proposal_valid [P], got "
                         f"{proposals.shape} and {proposal_valid.shape}")
    if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4 \
            or gt_valid.shape != gt_boxes.shape[:1] or gt_labels.shape != gt_boxes.shape[:1]:
        raise ValueError(f"gt_boxes must be [G, 4], gt_labels and gt_valid [G], got "
                         f"{gt_boxes.shape}, {gt_labels.shape} and {gt_valid.shape}")

    rois = jnp.concatenate([proposals, gt_boxes.astype(proposals.dtype)])  # [R = P + G, 4]
    roi_valid = jnp.concatenate([proposal_valid, gt_valid])
    match = match_boxes(boxes=rois, box_valid=roi_valid, gt_boxes=gt_boxes, gt_valid=gt_valid)
    foreground = roi_valid & (match.max_iou >= foreground_iou)
    background = roi_valid & (match.max_iou >= low) & (match.max_iou < high)
    take_foreground, take_background = sample_balanced(
        positive=foreground, negative=background, key=key, num_samples=num_samples,
        positive_fraction=foreground_fraction)

    # Sampled foreground first, then background, as py-faster-rcnn concatenates them.
    group = jnp.where(take_foreground, 0, jnp.where(take_background, 1, 2))  # [R]
    slots = jnp.argsort(group, stable=True)[:num_samples]
    num_rois = rois.shape[0]
    if num_rois < num_samples:
        slots = jnp.pad(slots, (0, num_samples - num_rois))
    valid = (group[slots] < 2) & (jnp.arange(num_samples) < num_rois)
    is_foreground = valid & take_foreground[slots]

    if gt_labels.shape[0] == 0:
        gt_labels = jnp.zeros((1,), jnp.int32)  # match_boxes pads empty ground truth likewise
    labels = jnp.where(is_foreground, gt_labels[match.gt_index[slots]].astype(jnp.int32) + 1, 0)
    sampled = rois[slots]
    deltas = encode_boxes(match.matched_boxes[slots], sampled, stds=stds)
    return ProposalTargets(rois=jnp.where(valid[:, None], sampled, 0.0), labels=labels,
                           deltas=jnp.where(is_foreground[:, None], deltas, 0.0), valid=valid)
