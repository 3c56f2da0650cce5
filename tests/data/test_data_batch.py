"""The batch contract: empty batches laid out as FIELDS says, with and without given proposals."""

import numpy as np

from jaxdet.data.batch import DETECTION_KEYS, FIELDS, PROPOSAL_KEYS, TRAIN_KEYS, empty_batch


def test_empty_batch_follows_the_fields():
    plain = empty_batch(3, (16, 24), max_boxes=5)
    with_rois = empty_batch(3, (16, 24), max_boxes=5, max_proposals=7)
    assert set(plain) == set(FIELDS) - set(PROPOSAL_KEYS) and set(with_rois) == set(FIELDS)
    assert with_rois["images"].shape == (3, 16, 24, 3) and with_rois["boxes"].shape == (3, 5, 4)
    assert with_rois["proposals"].shape == (3, 7, 4) and with_rois["proposal_valid"].shape == (3, 7)
    for name, field in FIELDS.items():
        array = with_rois[name]
        assert array.dtype == field.dtype and array.ndim == len(field.shape), name
        assert np.all(array == field.fill), name
    assert np.all(plain["scale"] == 1) and np.all(plain["image_id"] == -1)


def test_keys_the_step_and_detection_read_are_fields():
    assert set(DETECTION_KEYS) <= set(TRAIN_KEYS) <= set(FIELDS)
