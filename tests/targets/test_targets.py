"""Anchor targets and proposal targets against the numpy reference (references/detection_numpy.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references.detection_numpy as ref
from jaxdet.ops import anchor_grid
from jaxdet.proposals import propose
from jaxdet.targets import (AnchorTargets, ProposalTargets, anchor_targets, label_anchors,
                            proposal_targets)

# A small image: 12 x 16 cells at stride 16 (192 x 256 pixels), anchors of 32, 64 and 128 px.
FEATURE_HW, IMAGE_HW = (12, 16), (192, 256)
SMALL_ANCHORS = np.asarray(anchor_grid(FEATURE_HW, scales=(2, 4, 8)))

label_anchors_jit = jax.jit(label_anchors, static_argnames=("positive_iou", "negative_iou"))
anchor_targets_jit = jax.jit(anchor_targets, static_argnames=("num_samples", "positive_fraction"))
proposal_targets_jit = jax.jit(proposal_targets,
                               static_argnames=("num_samples", "foreground_fraction"))


def random_gt(rng, n, image_hw=IMAGE_HW, max_side=120):
    xy = rng.uniform(0, [image_hw[1] - 20, image_hw[0] - 20], (n, 2))
    wh = rng.uniform(16, max_side, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def padded(gt, pad):
    """gt [G, 4] -> (boxes [G + pad, 4], valid [G + pad]) with garbage in the padding rows."""
    boxes = np.concatenate([gt, np.full((pad, 4), 7.0, np.float32)])
    return boxes, np.arange(len(boxes)) < len(gt)


# --- anchor labels -----------------------------------------------------------------------

def test_800x800_worked_example_positives():
    """The tutorials' worked example: VGG16 at stride 16 on an 800x800 image, bbox (y1, x1, y2, x2)
    [20, 30, 400, 500] and [300, 400, 500, 600]."""
    anchors = np.asarray(anchor_grid((50, 50)))
    gt = np.array([[30, 20, 500, 400], [400, 300, 600, 500]], np.float32)
    got = label_anchors_jit(anchors=anchors, gt_boxes=gt, gt_valid=np.ones(2, bool),
                            image_hw=np.array([800, 800]))
    labels, locs = ref.anchor_labels(anchors, gt, (800, 800))
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_allclose(got.deltas, locs, rtol=1e-4, atol=1e-5)
    # The worked example's gt-best anchors (indices among the 8940 inside anchors), 18 in all.
    inside = np.where((anchors[:, :2] >= 0).all(axis=1) & (anchors[:, 2:] <= 800).all(axis=1))[0]
    positive_inside = np.where(np.asarray(got.labels)[inside] == 1)[0]
    np.testing.assert_array_equal(positive_inside, [
        2264, 2271, 4097, 4105, 4113, 4121, 4371, 4379, 4387, 4395, 4645, 4653, 4661, 4669,
        4919, 4927, 4935, 4943])


def test_labels_match_reference_with_padding_degenerate_and_outside_boxes():
    rng = np.random.default_rng(0)
    for _ in range(3):
        gt = random_gt(rng, 5)
        gt[3] = [50, 60, 50, 90]        # zero width
        gt[4] = [300, 10, 400, 100]     # right of the 256-pixel-wide image
        boxes, valid = padded(gt, 3)
        got = label_anchors_jit(anchors=SMALL_ANCHORS, gt_boxes=boxes, gt_valid=valid,
                                image_hw=np.array(IMAGE_HW))
        labels, locs = ref.anchor_labels(SMALL_ANCHORS, gt, IMAGE_HW)
        assert (labels == 1).sum() > 0 and (labels == 0).sum() > 0 and (labels == -1).sum() > 0
        np.testing.assert_array_equal(got.labels, labels)
        np.testing.assert_allclose(got.deltas, locs, rtol=1e-4, atol=1e-5)
    # Thresholds are configurable.
    got = label_anchors_jit(anchors=SMALL_ANCHORS, gt_boxes=boxes, gt_valid=valid,
                            image_hw=np.array(IMAGE_HW), positive_iou=0.5, negative_iou=0.1)
    labels, _ = ref.anchor_labels(SMALL_ANCHORS, gt, IMAGE_HW, 0.5, 0.1)
    np.testing.assert_array_equal(got.labels, labels)


@pytest.mark.parametrize("gt_boxes, gt_valid", [
    (np.zeros((0, 4), np.float32), np.zeros((0,), bool)),     # no ground truth at all
    (np.full((4, 4), 30.0, np.float32), np.zeros((4,), bool)),  # only padding
])
def test_images_without_ground_truth_sample_only_negatives(gt_boxes, gt_valid):
    targets = anchor_targets_jit(anchors=SMALL_ANCHORS, gt_boxes=gt_boxes, gt_valid=gt_valid,
                                 image_hw=np.array(IMAGE_HW), key=jax.random.key(0))
    labels, _ = ref.anchor_labels(SMALL_ANCHORS, np.zeros((0, 4), np.float32), IMAGE_HW)
    got = np.asarray(targets.labels)
    assert (got == 1).sum() == 0 and (got == 0).sum() == 256
    assert set(np.where(got == 0)[0]) <= set(np.where(labels == 0)[0])
    np.testing.assert_array_equal(targets.deltas, 0.0)


# --- anchor sampling ---------------------------------------------------------------------

def test_sampling_counts_subset_determinism_and_uniformity():
    rng = np.random.default_rng(1)
    gt = random_gt(rng, 30, max_side=60)
    image_hw = np.array(IMAGE_HW)
    before = np.asarray(label_anchors_jit(anchors=SMALL_ANCHORS, gt_boxes=gt,
                                          gt_valid=np.ones(30, bool), image_hw=image_hw).labels)
    num_positive, num_negative = (before == 1).sum(), (before == 0).sum()
    num_samples, cap = 32, 16
    assert num_positive > cap  # more positives than the sample takes

    sample = functools.partial(anchor_targets_jit, anchors=SMALL_ANCHORS, gt_boxes=gt,
                               gt_valid=np.ones(30, bool), image_hw=image_hw,
                               num_samples=num_samples, positive_fraction=0.5)
    first = np.asarray(sample(key=jax.random.key(3)).labels)
    assert (first == 1).sum() == cap and (first == 0).sum() == num_samples - cap
    sampled = first != -1
    np.testing.assert_array_equal(first[sampled], before[sampled])
    np.testing.assert_array_equal(sample(key=jax.random.key(3)).labels, first)
    assert not np.array_equal(sample(key=jax.random.key(4)).labels, first)

    # Every candidate is equally likely: selection frequencies over many keys.
    draws = 400
    keys = jax.random.split(jax.random.key(5), draws)
    labels = np.asarray(jax.vmap(lambda k: sample(key=k).labels)(keys))  # [draws, A]
    for kind, count in ((1, num_positive), (0, num_negative)):
        chosen = (labels == kind).sum(axis=0)[before == kind]
        p = cap / count
        assert np.abs(chosen - draws * p).max() < 5 * np.sqrt(draws * p * (1 - p)), kind
        assert chosen.sum() == draws * cap


def test_sampling_when_positives_fill_the_sample_and_negatives_run_short():
    anchors = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10],
                        [80, 0, 90, 10], [100, 0, 110, 10],  # 0-5: equal to a ground-truth box
                        [0, 50, 10, 60], [20, 50, 30, 60],   # 6-7: far away, negative
                        [2, 0, 12, 10], [22, 0, 32, 10]],    # 8-9: IoU 8/12, ignored
                       np.float32)
    gt = anchors[:6]
    common = dict(anchors=anchors, gt_boxes=gt, gt_valid=np.ones(6, bool),
                  image_hw=np.array([100, 200]), key=jax.random.key(0))
    labels = np.asarray(anchor_targets_jit(num_samples=8, **common).labels)
    assert (labels[:6] == 1).sum() == 4 and (labels[6:8] == 0).all() and (labels[8:] == -1).all()
    labels = np.asarray(anchor_targets_jit(num_samples=5, positive_fraction=1.0, **common).labels)
    assert (labels == 1).sum() == 5 and (labels == 0).sum() == 0


# --- proposal targets --------------------------------------------------------------------

def jittered_proposals(rng, gt, n):
    """Proposals around the ground truth (foreground), plus random ones (mostly background)."""
    near = gt[rng.integers(0, len(gt), n // 2)] + rng.normal(0, 6, (n // 2, 4))
    return np.concatenate([near, random_gt(rng, n - n // 2)]).astype(np.float32)


def check_proposal_targets(got, proposals, proposal_valid, gt, gt_labels, num_samples,
                           foreground_cap):
    rois, foreground, background, labels, locs = ref.proposal_candidates(
        proposals[proposal_valid], gt, gt_labels)
    num_foreground = min(foreground.sum(), foreground_cap)
    num_background = min(background.sum(), num_samples - num_foreground)
    valid = np.asarray(got.valid)
    got_labels = np.asarray(got.labels)
    assert valid.sum() == num_foreground + num_background
    assert valid[:num_foreground + num_background].all()
    assert (got_labels[:num_foreground] > 0).all() and (got_labels[num_foreground:] == 0).all()
    for roi, label, deltas in zip(np.asarray(got.rois)[valid], got_labels[valid],
                                  np.asarray(got.deltas)[valid]):
        row = np.where((rois == roi).all(axis=1))[0][0]
        assert foreground[row] if label > 0 else background[row]
        assert label == labels[row]
        np.testing.assert_allclose(deltas, locs[row] if label > 0 else 0.0, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(got.rois)[~valid], 0.0)


def test_proposal_targets_match_reference():
    rng = np.random.default_rng(2)
    gt = random_gt(rng, 3)
    gt_labels = np.array([4, 0, 19], np.int32)
    boxes, gt_valid = padded(gt, 2)
    labels_padded = np.concatenate([gt_labels, [5, 5]]).astype(np.int32)
    proposals = jittered_proposals(rng, gt, 300)
    proposal_valid = rng.uniform(size=300) < 0.9
    run = functools.partial(proposal_targets_jit, proposals=proposals, proposal_valid=proposal_valid,
                            gt_boxes=boxes, gt_labels=labels_padded, gt_valid=gt_valid,
                            num_samples=64, foreground_fraction=0.25)
    got = run(key=jax.random.key(0))
    assert isinstance(got, ProposalTargets) and got.rois.shape == (64, 4)
    check_proposal_targets(got, proposals, proposal_valid, gt, gt_labels, 64, 16)
    again = run(key=jax.random.key(0))
    np.testing.assert_array_equal(again.rois, got.rois)
    other = run(key=jax.random.key(1))
    assert not np.array_equal(other.rois, got.rois)
    check_proposal_targets(other, proposals, proposal_valid, gt, gt_labels, 64, 16)


def test_proposal_targets_edge_cases():
    rng = np.random.default_rng(3)
    proposals = random_gt(rng, 20)
    proposal_valid = np.ones(20, bool)
    # No ground truth, or only padding (whose boxes overlap the proposals): every valid
    # proposal is background, and the padding is never appended as a RoI.
    for gt_boxes, gt_valid in ((np.zeros((0, 4), np.float32), np.zeros((0,), bool)),
                               (proposals[:3].copy(), np.zeros((3,), bool))):
        empty = proposal_targets_jit(proposals=proposals, proposal_valid=proposal_valid, gt_boxes=gt_boxes,
                                     gt_labels=np.full((len(gt_boxes),), 4, np.int32), gt_valid=gt_valid,
                                     key=jax.random.key(0), num_samples=16)
        assert np.asarray(empty.valid).all() and (np.asarray(empty.labels) == 0).all()
        np.testing.assert_array_equal(empty.deltas, 0.0)
        assert {tuple(r) for r in np.asarray(empty.rois)} <= {tuple(r) for r in proposals}
    # Only invalid proposals: the appended ground truth is the foreground, exactly on target;
    # fewer RoIs than samples leaves padding.
    gt = random_gt(rng, 2)
    got = proposal_targets_jit(proposals=proposals[:5], proposal_valid=np.zeros(5, bool), gt_boxes=gt,
                           gt_labels=np.array([2, 7], np.int32), gt_valid=np.ones(2, bool),
                           key=jax.random.key(0), num_samples=16)
    np.testing.assert_array_equal(got.valid, np.arange(16) < 2)
    np.testing.assert_array_equal(np.sort(np.asarray(got.labels)[:2]), [3, 8])
    np.testing.assert_allclose(np.asarray(got.deltas)[:2], 0.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got.rois)[:2][np.argsort(got.labels[:2])], gt)


def test_bad_static_arguments_raise():
    common = dict(proposals=np.zeros((3, 4), np.float32), proposal_valid=np.ones(3, bool),
                  gt_boxes=np.zeros((1, 4), np.float32), gt_labels=np.zeros(1, np.int32),
                  gt_valid=np.ones(1, bool), key=jax.random.key(0))
    with pytest.raises(ValueError, match="background_iou"):
        proposal_targets(background_iou=(0.1, 0.6), **common)
    with pytest.raises(ValueError, match="foreground_fraction"):
        proposal_targets(foreground_fraction=1.5, **common)
    with pytest.raises(ValueError, match="negative_iou"):
        label_anchors(anchors=SMALL_ANCHORS, gt_boxes=np.zeros((1, 4)), gt_valid=np.ones(1, bool),
                      image_hw=np.array(IMAGE_HW), positive_iou=0.3, negative_iou=0.5)


# --- the whole per-image chain, batched ----------------------------------------------------

def test_batched_pipeline_compiles_once():
    traces = []

    @jax.jit
    def pipeline(gt_boxes, gt_labels, gt_valid, image_hw, objectness, deltas, key):
        traces.append(1)
        anchor_keys, roi_keys = jnp.split(jax.random.split(key, 2 * len(gt_boxes)), 2)
        targets = jax.vmap(functools.partial(anchor_targets, anchors=SMALL_ANCHORS))(
            gt_boxes=gt_boxes, gt_valid=gt_valid, image_hw=image_hw, key=anchor_keys)
        found = jax.vmap(functools.partial(propose, anchors=SMALL_ANCHORS, pre_nms=500,
                                           post_nms=100))(
            objectness=objectness, deltas=deltas, image_hw=image_hw)
        samples = jax.vmap(functools.partial(proposal_targets, num_samples=32))(
            proposals=found.boxes, proposal_valid=found.valid, gt_boxes=gt_boxes,
            gt_labels=gt_labels, gt_valid=gt_valid, key=roi_keys)
        return targets, found, samples

    rng = np.random.default_rng(4)
    num_anchors = len(SMALL_ANCHORS)
    for step in range(2):
        gt_boxes = np.stack([random_gt(rng, 3), random_gt(rng, 3)])
        gt_valid = np.array([[True, True, False], [True, False, False]])
        gt_labels = rng.integers(0, 20, (2, 3)).astype(np.int32)
        image_hw = np.array([IMAGE_HW, (160, 200)], np.int32)
        objectness = rng.uniform(size=(2, num_anchors)).astype(np.float32)
        deltas = rng.normal(0, 0.2, (2, num_anchors, 4)).astype(np.float32)
        targets, found, samples = pipeline(gt_boxes, gt_labels, gt_valid, image_hw, objectness,
                                           deltas, jax.random.key(step))
        assert isinstance(targets, AnchorTargets) and targets.labels.shape == (2, num_anchors)
        assert found.boxes.shape == (2, 100, 4) and samples.rois.shape == (2, 32, 4)
        for i in range(2):  # each image against its own unbatched reference
            labels, _ = ref.anchor_labels(SMALL_ANCHORS, gt_boxes[i][gt_valid[i]], image_hw[i])
            sampled = np.asarray(targets.labels[i]) != -1
            np.testing.assert_array_equal(np.asarray(targets.labels[i])[sampled], labels[sampled])
            rois, _ = ref.proposals(SMALL_ANCHORS, deltas[i], objectness[i], image_hw[i], 500, 100)
            np.testing.assert_allclose(np.asarray(found.boxes[i])[:len(rois)], rois, rtol=1e-5,
                                       atol=1e-3)
            check_proposal_targets(
                jax.tree.map(lambda x: x[i], samples), np.asarray(found.boxes[i]),
                np.asarray(found.valid[i]), gt_boxes[i][gt_valid[i]],
                gt_labels[i][gt_valid[i]], 32, 8)
    assert len(traces) == 1
