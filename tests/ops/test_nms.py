"""NMS against the greedy loop in numpy (py-faster-rcnn's py_cpu_nms): identical kept indices, in order, on hard inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references.detection_numpy as ref
from jaxdet.ops import Detections, anchor_grid, clip_boxes, decode_boxes, multiclass_nms, nms


def integer_boxes(rng, n, size=60, max_side=20):
    """Boxes on integer pixels, so every area, intersection and union is exact in float32 and
    the IoU is rounded once, identically here and in the reference; some have zero area."""
    xy = rng.integers(0, size, (n, 2))
    wh = rng.integers(0, max_side, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    duplicates = rng.choice(n, n // 5, replace=False)
    boxes[duplicates] = boxes[rng.choice(n, n // 5)]
    return boxes


def check_against_reference(boxes, scores, keep, count, iou_threshold, max_output):
    expected = ref.nms(boxes, scores, iou_threshold)[:max_output]
    keep = np.asarray(keep)
    assert int(count) == len(expected)
    np.testing.assert_array_equal(keep[:len(expected)], expected)
    np.testing.assert_array_equal(keep[len(expected):], -1)


def jit_nms(**static):
    return jax.jit(functools.partial(nms, **static))


def test_hand_case_ties_duplicates_threshold_and_degenerate():
    boxes = np.array([
        [0, 0, 10, 10],    # 0: kept first
        [1, 0, 11, 10],    # 1: IoU 90 / 110 with 0 -> suppressed
        [20, 20, 30, 30],  # 2: kept
        [20, 20, 30, 30],  # 3: duplicate of 2 with the same score -> 2 wins by index
        [0, 0, 10, 20],    # 4: IoU exactly 0.5 with 0 -> not above 0.5, kept
        [2, 2, 2, 9],      # 5: zero area inside 0 -> overlaps nothing, kept
    ], np.float32)
    scores = np.array([0.9, 0.8, 0.5, 0.5, 0.4, 0.95], np.float32)
    keep, count = nms(jnp.asarray(boxes), jnp.asarray(scores), iou_threshold=0.5, max_output=8)
    np.testing.assert_array_equal(keep, [5, 0, 2, 4, -1, -1, -1, -1])
    assert int(count) == 4


@pytest.mark.parametrize("num_boxes, block_size, iou_threshold, max_output", [
    (50, 8, 0.5, 50),      # many blocks, the last one padded
    (301, 64, 0.3, 40),    # output truncated before the boxes run out
    (1000, 128, 0.7, 1000),
])
def test_random_boxes_with_ties_match_greedy(num_boxes, block_size, iou_threshold, max_output):
    rng = np.random.default_rng(num_boxes)
    run = jit_nms(iou_threshold=iou_threshold, max_output=max_output, block_size=block_size)
    for _ in range(3):
        boxes = integer_boxes(rng, num_boxes)
        scores = rng.integers(0, 10, num_boxes).astype(np.float32)  # many ties
        keep, count = run(boxes, scores)
        check_against_reference(boxes, scores, keep, count, iou_threshold, max_output)


def test_block_size_does_not_change_the_result():
    rng = np.random.default_rng(7)
    boxes = integer_boxes(rng, 200, size=40)
    scores = rng.uniform(size=200).astype(np.float32)
    results = [nms(boxes, scores, iou_threshold=0.4, max_output=200, block_size=b)[0]
               for b in (1, 13, 512)]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def test_valid_mask_removes_boxes():
    rng = np.random.default_rng(3)
    boxes = integer_boxes(rng, 120)
    scores = rng.integers(0, 5, 120).astype(np.float32)
    valid = rng.uniform(size=120) < 0.6
    keep, count = nms(boxes, scores, iou_threshold=0.5, max_output=120, valid=valid, block_size=32)
    subset = np.where(valid)[0]
    expected = subset[ref.nms(boxes[subset], scores[subset], 0.5)]
    assert int(count) == len(expected)
    np.testing.assert_array_equal(np.asarray(keep)[:len(expected)], expected)

    keep, count = nms(boxes, scores, iou_threshold=0.5, max_output=5, valid=np.zeros(120, bool))
    assert int(count) == 0
    np.testing.assert_array_equal(keep, -1)
    keep, count = nms(jnp.zeros((0, 4)), jnp.zeros((0,)), iou_threshold=0.5, max_output=3)
    assert int(count) == 0 and keep.shape == (3,)


def test_12000_proposals_exact_and_without_a_quadratic_buffer():
    rng = np.random.default_rng(0)
    anchors = anchor_grid((37, 62))  # a 600x1000 image at stride 16
    deltas = rng.normal(0, 0.1, anchors.shape).astype(np.float32)
    boxes = np.asarray(clip_boxes(decode_boxes(deltas, anchors), jnp.array([600, 1000])))
    scores = rng.uniform(size=len(boxes)).astype(np.float32)
    top = np.argsort(-scores, kind="stable")[:12000]
    boxes, scores = boxes[top], scores[top]
    run = jit_nms(iou_threshold=0.7, max_output=2000)
    keep, count = run(boxes, scores)
    check_against_reference(boxes, scores, keep, count, 0.7, 2000)
    temp_bytes = run.lower(boxes, scores).compile().memory_analysis().temp_size_in_bytes
    assert temp_bytes < 12000 * 12000 // 16  # a bool [12000, 12000] alone would be 144 MB


def test_vmap_over_images_and_no_retrace():
    rng = np.random.default_rng(5)
    traces = []

    @jax.jit
    def batched(boxes, scores):
        traces.append(1)
        return jax.vmap(functools.partial(nms, iou_threshold=0.5, max_output=30, block_size=16))(
            boxes, scores)

    for _ in range(2):
        boxes = np.stack([integer_boxes(rng, 70) for _ in range(3)])
        scores = rng.integers(0, 6, (3, 70)).astype(np.float32)
        keep, count = batched(boxes, scores)
        for i in range(3):
            check_against_reference(boxes[i], scores[i], keep[i], count[i], 0.5, 30)
    assert len(traces) == 1


def test_multiclass_nms_matches_per_class_reference():
    rng = np.random.default_rng(11)
    num_candidates, num_classes, max_output = 60, 4, 25
    boxes = np.stack([integer_boxes(rng, num_candidates) for _ in range(num_classes)], axis=1)
    scores = rng.uniform(size=(num_candidates, num_classes)).astype(np.float32)
    scores[rng.uniform(size=scores.shape) < 0.3] = 0.01  # under the score threshold
    run = jax.jit(functools.partial(multiclass_nms, iou_threshold=0.3, score_threshold=0.05,
                                    max_output=max_output))
    detections = run(boxes, scores)
    assert isinstance(detections, Detections)
    expected = ref.multiclass_nms(boxes, scores, 0.3, 0.05, max_output)
    assert len(expected) == max_output and np.asarray(detections.valid).all()
    np.testing.assert_array_equal(detections.scores, [e[0] for e in expected])
    np.testing.assert_array_equal(detections.labels, [e[1] for e in expected])
    np.testing.assert_array_equal(detections.boxes, np.stack([e[2] for e in expected]))

    # Fewer detections than max_output: padded with zeros and valid False.
    scores[3:] = 0.01
    few = run(boxes, scores)
    expected = ref.multiclass_nms(boxes, scores, 0.3, 0.05, max_output)
    valid = np.asarray(few.valid)
    assert 0 < len(expected) < max_output
    assert valid.sum() == len(expected) and valid[:len(expected)].all()
    np.testing.assert_array_equal(np.asarray(few.labels)[:len(expected)], [e[1] for e in expected])
    np.testing.assert_array_equal(np.asarray(few.scores)[:len(expected)], [e[0] for e in expected])
    np.testing.assert_array_equal(np.asarray(few.scores)[len(expected):], 0.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(iou_threshold=1.5, max_output=3), "iou_threshold"),
    (dict(iou_threshold=0.5, max_output=0), "max_output"),
    (dict(iou_threshold=0.5, max_output=3, block_size=0), "block_size"),
])
def test_bad_static_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nms(jnp.zeros((4, 4)), jnp.zeros((4,)), **kwargs)


def test_nan_scores_and_boxes_take_no_part_and_lists_are_taken():
    rng = np.random.default_rng(21)
    boxes = integer_boxes(rng, 60)
    scores = rng.permutation(60).astype(np.float32)
    scores[[3, 17]] = np.nan
    boxes[[5, 40], 2] = np.nan
    keep, count = nms(boxes.tolist(), scores.tolist(), iou_threshold=0.5, max_output=60)
    finite = np.setdiff1d(np.arange(60), [3, 17, 5, 40])
    expected = finite[ref.nms(boxes[finite], scores[finite], 0.5)]
    np.testing.assert_array_equal(np.asarray(keep)[:int(count)], expected)
    assert not np.isin([3, 17, 5, 40], np.asarray(keep)).any()
