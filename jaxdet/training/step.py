"""The training step: one XLA program from images to updated parameters, and its eval twin.

`detection_losses` is the whole forward pass of training as a pure function of the
parameters: backbone, RPN, anchor targets, proposals (no gradient flows through them, as in
the approximate joint training of Ren et al. 2015), proposal targets, RoI pooling (whose
custom VJP carries the head's gradient into the backbone), the RoI head, and the four losses.
Every per-image step of `jaxdet.targets` and `jaxdet.proposals` is `vmap`ped over the N images
of the batch, each image with its own key, so nothing leaves the device between the batch and
the update; on a device mesh (`jaxdet.training.parallel`) each device runs these steps, and RoI
pooling, for its own images only.

Batches are dicts of arrays as `jaxdet.data.batch` specifies; the step reads its `TRAIN_KEYS`.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from jaxdet import compiler_options
from jaxdet.losses import roi_head_loss, rpn_loss
from jaxdet.models.detector import FasterRCNN
from jaxdet.models.fpn_detector import FPNFasterRCNN
from jaxdet.ops.per_image import map_images
from jaxdet.proposals import rpn_proposals
from jaxdet.settings import DetectorSettings
from jaxdet.targets import anchor_targets, proposal_targets
from jaxdet.training.fpn_losses import fpn_detection_losses
from jaxdet.training.state import TrainState

Metrics = Dict[str, jax.Array]


def _accuracy(logits: jax.Array, labels: jax.Array, weight: jax.Array) -> jax.Array:
    """logits [..., C], labels [...] int, weight [...] bool -> fraction right among weighted."""
    right = (jnp.argmax(logits, axis=-1) == labels) & weight
    return jnp.sum(right) / jnp.maximum(jnp.sum(weight), 1)


def detection_losses(model, variables: Mapping[str, Any], batch: Mapping[str, jax.Array], key: jax.Array, *,
                     settings: DetectorSettings, train: bool = True) -> Tuple[jax.Array, Metrics]:
    """The training objective of Faster R-CNN (or Fast R-CNN) on one batch.

    Args:
      model: a `FasterRCNN` or `FastRCNN` module (static).
      variables: {"params": ..., and any other collection, e.g. "batch_stats"}.
      batch: the `jaxdet.data.batch.TRAIN_KEYS` of a batch of N images (the proposal keys
        only for Fast R-CNN).
      key: PRNG key of this step (sampling of anchors and RoIs, dropout).
      settings: DetectorSettings (static); training reads its rpn, roi and loss sections.
      train: dropout on (the target sampling is the same either way).

    Returns:
      (loss scalar float32, metrics): the four (unweighted) losses, their weighted sum "loss", "rpn_accuracy" and
      "roi_accuracy" over the sampled anchors / RoIs, and "rpn_positives" and "roi_positives",
      the mean number of positive (foreground) samples per image.
    """
    rpn_s, roi_s, loss_s = settings.rpn, settings.roi, settings.loss
    images = batch["images"]
    num_images = images.shape[0]
    image_hw = batch["image_hw"]
    anchor_key, roi_key, dropout_key = jax.random.split(key, 3)
    image_keys = lambda k: jax.random.split(k, num_images)  # noqa: E731

    features = model.apply(variables, images, train, method=model.extract)
    metrics = {}
    loss = jnp.zeros((), jnp.float32)
    if isinstance(model, FasterRCNN):
        rpn = model.apply(variables, features, method=model.rpn_outputs)
        anchors = model.anchors(features.shape[1:3])
        targets = map_images(functools.partial(
            anchor_targets, anchors=anchors, num_samples=rpn_s.num_samples,
            positive_fraction=rpn_s.positive_fraction, positive_iou=rpn_s.positive_iou,
            negative_iou=rpn_s.negative_iou, allowed_border=rpn_s.allowed_border))(
            gt_boxes=batch["boxes"], gt_valid=batch["valid"], image_hw=image_hw, key=image_keys(anchor_key))
        cls_loss, box_loss = rpn_loss(logits=rpn.logits, deltas=rpn.deltas, labels=targets.labels,
                                      target_deltas=targets.deltas, sigma=rpn_s.sigma,
                                      normalize_by=loss_s.box_normalization)
        loss = loss + cls_loss + loss_s.rpn_box_weight * box_loss
        metrics.update(rpn_cls_loss=cls_loss, rpn_box_loss=box_loss,
                       rpn_accuracy=_accuracy(rpn.logits, targets.labels, targets.labels >= 0),
                       rpn_positives=jnp.mean(jnp.sum(targets.labels == 1, axis=-1).astype(jnp.float32)))
        proposals = rpn_proposals(rpn, anchors=anchors, image_hw=image_hw, image_scale=batch["scale"],
                                  pre_nms=rpn_s.train_pre_nms, post_nms=rpn_s.train_post_nms, nms_iou=rpn_s.nms_iou,
                                  min_size=rpn_s.min_proposal_size)
        rois, roi_valid = proposals.boxes, proposals.valid
    else:
        rois, roi_valid = batch["proposals"], batch["proposal_valid"]

    samples = map_images(functools.partial(
        proposal_targets, num_samples=roi_s.num_samples, foreground_fraction=roi_s.foreground_fraction,
        foreground_iou=roi_s.foreground_iou, background_iou=tuple(roi_s.background_iou), stds=tuple(model.box_stds)))(
        proposals=rois, proposal_valid=roi_valid, gt_boxes=batch["boxes"], gt_labels=batch["labels"],
        gt_valid=batch["valid"], key=image_keys(roi_key))
    head = model.apply(variables, features, samples.rois, train, method=model.classify,
                       rngs={"dropout": dropout_key})
    cls_loss, box_loss = roi_head_loss(logits=head.logits, deltas=head.deltas, labels=samples.labels,
                                       target_deltas=samples.deltas, valid=samples.valid, sigma=roi_s.sigma,
                                       normalize_by=loss_s.box_normalization)
    loss = loss + cls_loss + loss_s.roi_box_weight * box_loss
    metrics.update(roi_cls_loss=cls_loss, roi_box_loss=box_loss,
                   roi_accuracy=_accuracy(head.logits, samples.labels, samples.valid),
                   roi_positives=jnp.mean(jnp.sum((samples.labels > 0) & samples.valid, axis=-1).astype(jnp.float32)),
                   loss=loss)
    return loss, metrics


def losses_of(model):
    """The training objective of `model`: `detection_losses`, or torchvision's for a ResNet-FPN model
    (`jaxdet.training.fpn_losses.fpn_detection_losses`); both (model, variables, batch, key, *, settings, train)."""
    return fpn_detection_losses if isinstance(model, FPNFasterRCNN) else detection_losses


def _train_step(state: TrainState, batch: Mapping[str, jax.Array], key: jax.Array) -> Tuple[TrainState, Metrics]:
    """One optimizer step: (state, batch, key) -> (new state, metrics).

    Args:
      state: TrainState (donated: do not use it after the call).
      batch: see `detection_losses`.
      key: PRNG key of this step, e.g. `step_key(state)`.

    Returns:
      (state with step + 1, metrics): the losses and accuracies of `detection_losses` (before the
      update), "learning_rate" used for this step and "grad_norm" (global L2 norm of the gradient).
    """
    def loss_fn(params):
        return losses_of(state.model)(state.model, {"params": params, **state.model_state}, batch, key,
                                settings=state.settings, train=True)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(learning_rate=state.learning_rate_fn(state.step), grad_norm=optax.tree.norm(grads))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


# One compiled program per (batch shapes, static state fields); the old state's buffers are
# reused for the new one.
train_step = compiler_options.jit(_train_step, donate_argnums=(0,))


@compiler_options.jit
def eval_step(state: TrainState, batch: Mapping[str, jax.Array], key: jax.Array) -> Metrics:
    """The losses and accuracies of `detection_losses` without dropout or update: (state, batch, key) -> metrics."""
    _, metrics = losses_of(state.model)(state.model, state.variables, batch, key, settings=state.settings, train=False)
    return metrics


def step_key(state: TrainState) -> jax.Array:
    """The key of the next step: a function of the run's key and the step, so a resumed run draws the same samples."""
    return jax.random.fold_in(state.rng, state.step)
