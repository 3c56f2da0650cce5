"""Detection with a trained Fast or Faster R-CNN: fixed-size, jit-compiled, then per-image lists.

`predict` runs the test-time pipeline of the paper on a padded batch: RPN proposals (6000
pre-NMS, 300 post-NMS at IoU 0.7; `jaxdet.proposals`), the RoI head, class-specific decoding
of each RoI with the model's `box_stds`, clipping to the image, softmax scores above 0.05, per-class NMS at IoU 0.3 and the
100 best detections per image. Its output has fixed shapes with a `valid` mask;
`detections_to_lists` turns it into per-image numpy arrays in original-image coordinates.
"""

import functools
from typing import Any, Dict, List, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet import compiler_options
from jaxdet.models.detector import FasterRCNN
from jaxdet.ops.boxes import clip_boxes, decode_boxes
from jaxdet.ops.nms import Detections, multiclass_nms
from jaxdet.ops.per_image import map_images
from jaxdet.proposals import Proposals, rpn_proposals
from jaxdet.settings import DetectorSettings, RPNSettings


@functools.partial(compiler_options.jit, static_argnames=("model", "settings"))
def predict(model, variables: Mapping[str, Any], images: jax.Array, image_hw: jax.Array, *,
            image_scale: Optional[jax.Array] = None, proposals: Optional[jax.Array] = None,
            proposal_valid: Optional[jax.Array] = None, settings: DetectorSettings) -> Detections:
    """Detections for a batch of padded images.

    Args:
      model: a `FasterRCNN`, or a `FastRCNN` with `proposals` given (static).
      variables: {"params": ..., ...} of the model.
      images: [N, H, W, 3] normalised, zero padded at the bottom/right.
      image_hw: [N, 2] int (height, width) of the content of each image.
      image_scale: [N] resize factor of each image (scales the proposals' `min_size`); 1 if None.
      proposals: [N, P, 4] xyxy RoIs for Fast R-CNN (ignored by Faster R-CNN).
      proposal_valid: [N, P] bool mask of `proposals`; all valid if None.
      settings: DetectorSettings (static; `DetectorSettings.from_config(config)`); detection reads its
        rpn (test sizes) and test sections.

    Returns:
      Detections with a leading batch axis: boxes [N, D, 4] xyxy in input pixels (clipped to
      image_hw), scores [N, D], labels [N, D] int32 in [0, K), valid [N, D] bool, with
      D = settings.test.max_detections, best first.
    """
    num_images = images.shape[0]
    image_hw = jnp.asarray(image_hw)
    if image_scale is None:
        image_scale = jnp.ones((num_images,), jnp.float32)
    features = model.apply(variables, images, method=model.extract)
    if isinstance(model, FasterRCNN):
        found = detection_proposals(model, variables, features, image_hw=image_hw, image_scale=image_scale,
                                    settings=settings.rpn)
        rois, roi_valid = found.boxes, found.valid
    elif proposals is None:
        raise ValueError("predict: a FastRCNN model needs `proposals` [N, P, 4]")
    else:
        rois = proposals
        roi_valid = jnp.ones(rois.shape[:2], bool) if proposal_valid is None else proposal_valid

    head = model.apply(variables, features, rois, method=model.classify)
    deltas = head.deltas[:, :, 1:]  # [N, R, K, 4], background dropped
    boxes = decode_boxes(deltas, jnp.broadcast_to(rois[:, :, None, :], deltas.shape), stds=model.box_stds)
    boxes = clip_boxes(boxes, image_hw[:, None, None, :])
    scores = jax.nn.softmax(head.logits, axis=-1)[:, :, 1:]  # [N, R, K]
    # Padding RoIs score below any threshold, so they are never detections.
    scores = jnp.where(roi_valid[:, :, None], scores, -1.0)
    return map_images(functools.partial(multiclass_nms, iou_threshold=settings.test.nms_iou,
                                      score_threshold=settings.test.score_threshold,
                                      max_output=settings.test.max_detections))(boxes, scores)


def detection_proposals(model: FasterRCNN, variables: Mapping[str, Any], features: jax.Array, *,
                        image_hw: jax.Array, image_scale: jax.Array, settings: RPNSettings) -> Proposals:
    """The RPN's proposals at test time (`jaxdet.proposals.rpn_proposals` with the test sizes), what
    `predict` classifies and `jaxdet.inference.proposals` saves for a Fast R-CNN.

    Args:
      model: a `FasterRCNN`.
      variables: {"params": ..., ...} of the model.
      features: [N, h, w, C] the backbone's features of a padded batch (`model.extract`).
      image_hw: [N, 2] (height, width) of each image's content, in input pixels.
      image_scale: [N] resize factor of each image (scales `settings.min_proposal_size`).
      settings: RPNSettings; reads test_pre_nms, test_post_nms, nms_iou and min_proposal_size.

    Returns:
      Proposals in input pixels: boxes [N, P, 4] xyxy, scores [N, P], valid [N, P], with
      P = settings.test_post_nms, valid rows first, best first.
    """
    rpn = model.apply(variables, features, method=model.rpn_outputs)
    return rpn_proposals(rpn, anchors=model.anchors(features.shape[1:3]), image_hw=image_hw,
                         image_scale=image_scale, pre_nms=settings.test_pre_nms, post_nms=settings.test_post_nms,
                         nms_iou=settings.nms_iou, min_size=settings.min_proposal_size)


def detections_to_lists(detections: Detections, *, orig_hw: np.ndarray, image_hw: Optional[np.ndarray] = None,
                        scale: Optional[np.ndarray] = None) -> List[Dict[str, np.ndarray]]:
    """Fixed-size detections -> one dict per image in original-image coordinates (host side).

    Give exactly one of `image_hw` (exact: each axis scaled by original / resized size, the
    inverse of the input pipeline's resize) or `scale` (one factor per image).

    Args:
      detections: output of `predict` (leading batch axis N).
      orig_hw: [N, 2] (height, width) of the original images.
      image_hw: [N, 2] (height, width) of the resized image content the network saw.
      scale: [N] resize factor from the original image to the network input.

    Returns:
      N dicts with "boxes" [n, 4] float32 xyxy original pixels (clipped to the image),
      "scores" [n] float32 (descending) and "labels" [n] int32 in [0, K).
    """
    if (image_hw is None) == (scale is None):
        raise ValueError("detections_to_lists: give exactly one of image_hw and scale")
    boxes, scores, labels, valid = (np.asarray(x) for x in jax.device_get(tuple(detections)))
    orig_hw = np.asarray(orig_hw, np.float32).reshape(-1, 2)
    if scale is not None:
        factor = np.repeat(1.0 / np.asarray(scale, np.float32).reshape(-1, 1), 2, axis=1)  # [N, 2] (y, x)
    else:
        factor = orig_hw / np.maximum(np.asarray(image_hw, np.float32).reshape(-1, 2), 1.0)
    if not boxes.shape[0] == factor.shape[0] == orig_hw.shape[0]:
        raise ValueError(f"detections_to_lists: batch sizes differ: detections {boxes.shape[0]}, "
                         f"{'scale' if scale is not None else 'image_hw'} {factor.shape[0]}, orig_hw {orig_hw.shape[0]}")
    out = []
    for i in range(boxes.shape[0]):
        keep = valid[i]
        height, width = orig_hw[i]
        (fy, fx) = factor[i]
        b = boxes[i][keep] * np.array([fx, fy, fx, fy], np.float32)
        b = np.clip(b, 0.0, np.array([width, height, width, height], np.float32)).astype(np.float32)
        out.append({"boxes": b, "scores": scores[i][keep].astype(np.float32),
                    "labels": labels[i][keep].astype(np.int32)})
    return out
