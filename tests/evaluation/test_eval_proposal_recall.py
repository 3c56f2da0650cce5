"""`jaxdet.evaluation.proposal_recall` against a case computed by hand: the recall of the ground
truth by each image's first n proposals, at IoU 0.5 and 0.7."""

import numpy as np
import pytest

from jaxdet.evaluation import best_overlap_rank, proposal_recall

# Image 1: two objects; proposal 0 covers the first at IoU exactly 0.5 (50 / 100), proposal 1 is
# the second exactly, proposal 2 the first at IoU 0.8. Image 2: one object and no proposals.
GT = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([[0, 0, 4, 4]], np.float32)]
PROPOSALS = [np.array([[0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 10, 8]], np.float32), np.zeros((0, 4), np.float32)]


def test_the_rank_that_recalls_each_object():
    np.testing.assert_array_equal(best_overlap_rank(GT[0], PROPOSALS[0], (0.5, 0.7)), [[1, 3], [2, 2]])
    np.testing.assert_array_equal(best_overlap_rank(GT[1], PROPOSALS[1], (0.5, 0.7)), [[np.inf, np.inf]])


def test_recall_against_the_number_of_proposals_by_hand():
    recall = proposal_recall(GT, PROPOSALS, counts=(1, 2, 3, 2000), iou_thresholds=(0.5, 0.7))
    # 3 objects: at 0.5 the first proposal finds 1, the first two find 2; at 0.7 the third is needed.
    np.testing.assert_allclose(recall, [[1 / 3, 0], [2 / 3, 1 / 3], [2 / 3, 2 / 3], [2 / 3, 2 / 3]])


def test_no_ground_truth_is_nan_and_mismatched_lists_are_refused():
    assert np.isnan(proposal_recall([np.zeros((0, 4))], [PROPOSALS[0]], counts=(1,))).all()
    with pytest.raises(ValueError, match="2 images of ground truth but 1 of proposals"):
        proposal_recall(GT, PROPOSALS[:1], counts=(1,))
