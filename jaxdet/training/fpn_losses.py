"""The training objective of the ResNet-FPN Faster R-CNN (`jaxdet.models.fpn_detector.FPNFasterRCNN`),
torchvision's `GeneralizedRCNN` in training mode on fixed shapes.

Per batch of N images, everything per image `map_images`-mapped (so a device mesh splits it):
  * RPN targets over the anchors of all levels concatenated (P2..P6, [A = sum h_l w_l 3, 4]):
    `jaxdet.targets.anchor_targets` with torchvision's rules: IoU >= 0.7 positive, < 0.3
    negative, each box's best anchors positive, every anchor labelled whether it crosses the
    border or not (`rpn.allowed_border` 1e9), 256 sampled, at most half positive.
  * Proposals per level, as at test time but with the training sizes (`rpn.train_pre_nms` per
    level before NMS, `rpn.train_post_nms` over all levels after it), no gradient through them.
  * RoI targets: `jaxdet.targets.proposal_targets` (the ground truth appended, IoU >= 0.5
    foreground, [0, 0.5) background, 512 sampled at most a quarter foreground, box targets
    encoded with the weights (10, 10, 5, 5) = 1 / `roi.box_stds`).
  * Losses (`jaxdet.losses`, torchvision's definitions): RPN objectness binary cross entropy over
    the sampled anchors, written as the 2-class softmax cross entropy of logits (0, l), which is
    the same function; RPN box smooth-L1 with beta 1/9 (sigma 3) summed over the positive
    anchors and divided by the sampled ones (`normalize_by="samples"`); head cross entropy over
    the sampled RoIs and smooth-L1 (beta 1/9) of the true class's deltas summed over foreground
    and divided by the sampled RoIs; the four added with weight 1.

Where jaxdet differs from torchvision: the samples are drawn with jax's PRNG (other anchors and
RoIs, the same rule); an anchor is a box's "best" only when that IoU is above 0 (torchvision
would make every anchor positive for a box no anchor overlaps); batch norm is frozen in every
variant (torchvision's v2 trains with `nn.BatchNorm2d` in training mode); weight decay skips
biases and norm scales (`jaxdet.training.optimizer`; torchvision's reference decays all).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdet.losses import roi_head_loss, rpn_loss
from jaxdet.models.fpn_detector import FPNFasterRCNN, fpn_proposals
from jaxdet.ops.per_image import map_images
from jaxdet.settings import DetectorSettings
from jaxdet.targets import anchor_targets, proposal_targets

Metrics = dict


def _accuracy(logits: jax.Array, labels: jax.Array, weight: jax.Array) -> jax.Array:
    right = (jnp.argmax(logits, axis=-1) == labels) & weight
    return jnp.sum(right) / jnp.maximum(jnp.sum(weight), 1)


def fpn_detection_losses(model: FPNFasterRCNN, variables: Mapping[str, Any], batch: Mapping[str, jax.Array],
                         key: jax.Array, *, settings: DetectorSettings, train: bool = True) -> Tuple[jax.Array, Metrics]:
    """torchvision's four Faster R-CNN losses of a ResNet-FPN model on one batch.

    Args:
      model: an `FPNFasterRCNN` (static).
      variables: {"params": ..., "batch_stats": ...}.
      batch: "images" [N, H, W, 3] normalised and padded, "image_hw" [N, 2], "boxes" [N, G, 4] xyxy input
        pixels, "labels" [N, G] in [0, K), "valid" [N, G] (`jaxdet.data.batch.TRAIN_KEYS`).
      key: PRNG key of this step (the anchor and RoI samples).
      settings: DetectorSettings (static): its rpn, roi and loss sections.
      train: unused (no dropout); kept for `detection_losses`' signature.

    Returns:
      (loss float32 scalar, metrics): rpn_cls_loss, rpn_box_loss, roi_cls_loss, roi_box_loss, their weighted
      sum "loss", rpn_accuracy and roi_accuracy over the samples, rpn_positives and roi_positives per image.
    """
    del train
    rpn_s, roi_s, loss_s = settings.rpn, settings.roi, settings.loss
    images, image_hw = batch["images"], batch["image_hw"]
    num_images = images.shape[0]
    anchor_key, roi_key = jax.random.split(key)
    image_keys = lambda k: jax.random.split(k, num_images)  # noqa: E731

    features = model.apply(variables, images, method=model.extract)
    level_logits, level_deltas = model.apply(variables, features, method=model.rpn_outputs)
    level_anchors = model.anchors(images.shape[1:3], features)
    logits = jnp.concatenate(level_logits, axis=1)  # [N, A]
    deltas = jnp.concatenate(level_deltas, axis=1)  # [N, A, 4]
    targets = map_images(functools.partial(
        anchor_targets, anchors=jnp.asarray(np.concatenate(level_anchors)), num_samples=rpn_s.num_samples,
        positive_fraction=rpn_s.positive_fraction, positive_iou=rpn_s.positive_iou,
        negative_iou=rpn_s.negative_iou, allowed_border=rpn_s.allowed_border))(
        gt_boxes=batch["boxes"], gt_valid=batch["valid"], image_hw=image_hw, key=image_keys(anchor_key))
    two_class = jnp.stack([jnp.zeros_like(logits), logits], axis=-1)  # softmax of (0, l) = sigmoid(l)
    rpn_cls, rpn_box = rpn_loss(logits=two_class, deltas=deltas, labels=targets.labels,
                                target_deltas=targets.deltas, sigma=rpn_s.sigma,
                                normalize_by=loss_s.box_normalization)

    propose = functools.partial(
        fpn_proposals, anchors=level_anchors, pre_nms_top_n=rpn_s.train_pre_nms, post_nms_top_n=rpn_s.train_post_nms,
        nms_thresh=rpn_s.nms_iou, min_size=rpn_s.min_proposal_size)
    proposals = map_images(lambda lg, dl, hw: propose(lg, dl, image_hw=hw))(
        [lax.stop_gradient(x) for x in level_logits], [lax.stop_gradient(x) for x in level_deltas], image_hw)

    samples = map_images(functools.partial(
        proposal_targets, num_samples=roi_s.num_samples, foreground_fraction=roi_s.foreground_fraction,
        foreground_iou=roi_s.foreground_iou, background_iou=tuple(roi_s.background_iou),
        stds=tuple(1.0 / w for w in model.box_weights)))(
        proposals=proposals.boxes, proposal_valid=proposals.valid, gt_boxes=batch["boxes"],
        gt_labels=batch["labels"], gt_valid=batch["valid"], key=image_keys(roi_key))
    head = model.apply(variables, features, samples.rois, method=model.classify)
    roi_cls, roi_box = roi_head_loss(logits=head.logits, deltas=head.deltas, labels=samples.labels,
                                     target_deltas=samples.deltas, valid=samples.valid, sigma=roi_s.sigma,
                                     normalize_by=loss_s.box_normalization)
    loss = rpn_cls + loss_s.rpn_box_weight * rpn_box + roi_cls + loss_s.roi_box_weight * roi_box
    metrics = dict(
        rpn_cls_loss=rpn_cls, rpn_box_loss=rpn_box,
        rpn_accuracy=_accuracy(two_class, targets.labels, targets.labels >= 0),
        rpn_positives=jnp.mean(jnp.sum(targets.labels == 1, axis=-1).astype(jnp.float32)),
        roi_cls_loss=roi_cls, roi_box_loss=roi_box,
        roi_accuracy=_accuracy(head.logits, samples.labels, samples.valid),
        roi_positives=jnp.mean(jnp.sum((samples.labels > 0) & samples.valid, axis=-1).astype(jnp.float32)),
        loss=loss)
    return loss, metrics
