"""Losses against cross entropy and smooth L1 in numpy, and their gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references.detection_numpy as ref
from jaxdet.losses import roi_head_loss, rpn_loss, smooth_l1


def test_smooth_l1_by_hand():
    # sigma 3: quadratic below 1/9, linear above, continuous at the switch.
    x = jnp.array([0.05, -0.05, 1.0, -2.0, 1 / 9])
    np.testing.assert_allclose(smooth_l1(x, 3.0),
                               [0.5 * 9 * 0.0025, 0.5 * 9 * 0.0025, 1 - 0.5 / 9, 2 - 0.5 / 9,
                                0.5 / 9], rtol=1e-6)
    np.testing.assert_allclose(smooth_l1(jnp.array([0.5, 3.0]), 1.0), [0.125, 2.5], rtol=1e-6)


def rpn_batch(rng, num_images=2, num_anchors=40):
    logits = rng.normal(size=(num_images, num_anchors, 2)).astype(np.float32)
    deltas = rng.normal(size=(num_images, num_anchors, 4)).astype(np.float32)
    labels = rng.choice([-1, 0, 1], size=(num_images, num_anchors), p=[0.5, 0.35, 0.15])
    targets = rng.normal(size=(num_images, num_anchors, 4)).astype(np.float32)
    return logits, deltas, labels.astype(np.int32), targets


@pytest.mark.parametrize("normalize_by", ["positives", "samples"])
def test_rpn_loss_matches_reference(normalize_by):
    rng = np.random.default_rng(0)
    logits, deltas, labels, targets = rpn_batch(rng)
    cls_loss, box_loss = jax.jit(rpn_loss, static_argnames=("normalize_by",))(
        logits=logits, deltas=deltas, labels=labels, target_deltas=targets,
        normalize_by=normalize_by)
    flat = labels.reshape(-1)
    expected_cls = ref.cross_entropy(logits.reshape(-1, 2).astype(np.float64), flat)
    positive = flat == 1
    box_sum = ref.smooth_l1(deltas.reshape(-1, 4)[positive] - targets.reshape(-1, 4)[positive],
                            3.0).sum()
    count = positive.sum() if normalize_by == "positives" else (flat >= 0).sum()
    assert float(cls_loss) == pytest.approx(expected_cls, rel=1e-5)
    assert float(box_loss) == pytest.approx(box_sum / count, rel=1e-5)


@pytest.mark.parametrize("normalize_by", ["positives", "samples"])
def test_roi_head_loss_picks_the_labelled_class(normalize_by):
    rng = np.random.default_rng(1)
    num_images, num_rois, num_classes = 2, 16, 5
    logits = rng.normal(size=(num_images, num_rois, num_classes + 1)).astype(np.float32)
    deltas = rng.normal(size=(num_images, num_rois, num_classes + 1, 4)).astype(np.float32)
    labels = rng.integers(0, num_classes + 1, (num_images, num_rois)).astype(np.int32)
    targets = rng.normal(size=(num_images, num_rois, 4)).astype(np.float32)
    valid = rng.uniform(size=(num_images, num_rois)) < 0.8
    cls_loss, box_loss = roi_head_loss(logits=logits, deltas=deltas, labels=labels,
                                       target_deltas=targets, valid=valid,
                                       normalize_by=normalize_by)
    flat_labels = np.where(valid, labels, -1).reshape(-1)
    expected_cls = ref.cross_entropy(logits.reshape(-1, num_classes + 1).astype(np.float64),
                                     flat_labels)
    box_sum, positives = 0.0, 0
    for i in range(num_images):
        for j in range(num_rois):
            if valid[i, j] and labels[i, j] > 0:
                box_sum += ref.smooth_l1(deltas[i, j, labels[i, j]] - targets[i, j], 1.0).sum()
                positives += 1
    count = positives if normalize_by == "positives" else valid.sum()
    assert float(cls_loss) == pytest.approx(expected_cls, rel=1e-5)
    assert float(box_loss) == pytest.approx(box_sum / count, rel=1e-5)


def test_ignored_entries_do_not_touch_value_or_gradient():
    rng = np.random.default_rng(2)
    logits, deltas, labels, targets = rpn_batch(rng)
    # Non-finite targets where an anchor is not positive (e.g. log 0 of a degenerate box).
    poisoned = np.where((labels == 1)[..., None], targets, -np.inf).astype(np.float32)

    def total(logits, deltas, targets):
        cls_loss, box_loss = rpn_loss(logits=logits, deltas=deltas, labels=labels,
                                      target_deltas=targets)
        return cls_loss + box_loss

    value, (grad_logits, grad_deltas) = jax.value_and_grad(total, argnums=(0, 1))(
        logits, deltas, poisoned)
    assert float(value) == pytest.approx(float(total(logits, deltas, targets)), rel=1e-6)
    assert np.isfinite(np.asarray(grad_deltas)).all()
    np.testing.assert_array_equal(np.asarray(grad_deltas)[labels != 1], 0.0)
    np.testing.assert_array_equal(np.asarray(grad_logits)[labels == -1], 0.0)


def test_no_positives_and_nothing_sampled_give_zero_not_nan():
    labels = -np.ones((1, 10), np.int32)
    cls_loss, box_loss = rpn_loss(logits=np.zeros((1, 10, 2), np.float32),
                                  deltas=np.ones((1, 10, 4), np.float32), labels=labels,
                                  target_deltas=np.zeros((1, 10, 4), np.float32))
    assert float(cls_loss) == 0.0 and float(box_loss) == 0.0
    labels[0, :3] = 0  # background only: a classification loss, no box loss
    cls_loss, box_loss = rpn_loss(logits=np.zeros((1, 10, 2), np.float32),
                                  deltas=np.ones((1, 10, 4), np.float32), labels=labels,
                                  target_deltas=np.zeros((1, 10, 4), np.float32))
    assert float(cls_loss) == pytest.approx(np.log(2)) and float(box_loss) == 0.0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="normalize_by"):
        rpn_loss(logits=jnp.zeros((2, 2)), deltas=jnp.zeros((2, 4)), labels=jnp.zeros(2, int),
                 target_deltas=jnp.zeros((2, 4)), normalize_by="images")
    with pytest.raises(ValueError, match="sigma"):
        roi_head_loss(logits=jnp.zeros((2, 3)), deltas=jnp.zeros((2, 3, 4)),
                      labels=jnp.zeros(2, int), target_deltas=jnp.zeros((2, 4)),
                      valid=jnp.ones(2, bool), sigma=0.0)


def test_jitted_losses_do_not_retrace_on_new_values():
    traces = []

    @jax.jit
    def losses(logits, deltas, labels, targets):
        traces.append(1)
        return rpn_loss(logits=logits, deltas=deltas, labels=labels, target_deltas=targets)

    rng = np.random.default_rng(3)
    first = losses(*rpn_batch(rng))
    second = losses(*rpn_batch(rng))
    assert len(traces) == 1 and float(first[0]) != float(second[0])
