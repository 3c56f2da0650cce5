"""The proposal layer: RPN outputs -> region proposals, the same for training and detection.

Per image, on fixed shapes (Ren et al. 2015, sec. 3.1; py-faster-rcnn's
``lib/rpn/proposal_layer.py``): decode the RPN deltas at every anchor, clip to the image, drop
boxes not larger than ``min_size`` (in pixels of the original image, so scaled with the resize
factor), keep the ``pre_nms`` best by objectness, NMS, keep the ``post_nms`` best. The paper
uses 12000 / 2000 in training and 6000 / 300 at test time; the caller passes them.
:func:`rpn_proposals` runs it over a batch from the RPN's outputs: `jaxdet.training.step`
(training) and `jaxdet.inference` (detection) both call it.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.checks import check_count, check_fraction
from jaxdet.ops.boxes import clip_boxes, decode_boxes
from jaxdet.ops.nms import nms
from jaxdet.ops.per_image import map_images


class Proposals(NamedTuple):
    """boxes: [P, 4] xyxy; scores: [P] objectness; valid: [P] bool (invalid rows are zeros).

    Valid rows come first, in descending score order. :func:`rpn_proposals` adds a leading
    batch axis N to each.
    """
    boxes: jax.Array
    scores: jax.Array
    valid: jax.Array


def propose(*, anchors, objectness, deltas, image_hw, pre_nms, post_nms, nms_iou=0.7,
            min_size=16.0, image_scale=1.0):
    """Region proposals of one image.

    Args:
      anchors: [A, 4] xyxy.
      objectness: [A] foreground probability (any score monotone in it ranks the same).
      deltas: [A, 4] RPN box deltas (tx, ty, tw, th), means 0 and stds 1.
      image_hw: [2] (height, width) of the image content; boxes are clipped to it.
      pre_nms: Python int, boxes entering NMS (fewer if A is smaller).
      post_nms: Python int, the number of proposals returned (padded when fewer survive).
      nms_iou: Python float, NMS IoU threshold.
      min_size: Python float; boxes whose clipped width or height is not strictly greater
        than ``min_size * image_scale`` are dropped (py-faster-rcnn keeps sizes equal to it).
      image_scale: scalar resize factor of the image (may be traced, e.g. vmapped per image).

    Returns:
      Proposals with ``post_nms`` rows.
    """
    check_count("pre_nms", pre_nms)
    check_count("post_nms", post_nms)
    check_fraction("nms_iou", nms_iou)
    if anchors.ndim != 2 or anchors.shape[1] != 4 or deltas.shape != anchors.shape \
            or objectness.shape != anchors.shape[:1]:
        raise ValueError(f"anchors and deltas must be [A, 4] and objectness [A], got "
                         f"{anchors.shape}, {deltas.shape} and {objectness.shape}")
    boxes = clip_boxes(decode_boxes(deltas, anchors), image_hw)
    smallest = min_size * jnp.asarray(image_scale, boxes.dtype)
    big_enough = ((boxes[:, 2] - boxes[:, 0] > smallest)
                  & (boxes[:, 3] - boxes[:, 1] > smallest))
    ranked = jnp.where(big_enough, objectness, -jnp.inf)
    # top_k ranks equal scores by lower index, as a stable descending sort does.
    top_scores, top = lax.top_k(ranked, min(pre_nms, anchors.shape[0]))
    top_boxes = boxes[top]
    keep, _ = nms(top_boxes, top_scores, iou_threshold=nms_iou, max_output=post_nms,
                  valid=big_enough[top])
    valid = keep >= 0
    rows = jnp.maximum(keep, 0)
    return Proposals(boxes=jnp.where(valid[:, None], top_boxes[rows], 0.0),
                     scores=jnp.where(valid, top_scores[rows], 0.0), valid=valid)


def rpn_proposals(rpn, *, anchors, image_hw, image_scale, pre_nms, post_nms, nms_iou, min_size):
    """The proposals of a batch of images from the RPN's outputs (:func:`propose` per image).

    The objectness is the softmax probability of the object class. No gradient flows back into
    the RPN through the proposals: they are constants for the RoI head, the approximate joint
    training of Ren et al. 2015 (sec. 3.2), and at test time this changes nothing.

    Args:
      rpn: `jaxdet.models.RPNOutputs`, logits [N, A, 2] (background, object) and deltas [N, A, 4].
      anchors: [A, 4] xyxy, in the RPN's output order (`FasterRCNN.anchors`).
      image_hw: [N, 2] (height, width) of each image's content.
      image_scale: [N] resize factor of each image (scales ``min_size``).
      pre_nms, post_nms, nms_iou, min_size: see :func:`propose`.

    Returns:
      Proposals with a leading batch axis: boxes [N, post_nms, 4], scores [N, post_nms], valid
      [N, post_nms].
    """
    rpn = lax.stop_gradient(rpn)
    return map_images(functools.partial(
        propose, anchors=anchors, pre_nms=pre_nms, post_nms=post_nms, nms_iou=nms_iou,
        min_size=min_size))(
        objectness=jax.nn.softmax(rpn.logits)[..., 1], deltas=rpn.deltas, image_hw=image_hw,
        image_scale=image_scale)
