"""Precomputed proposals given with images (Fast R-CNN): the file, and batches that carry them."""

import numpy as np
import pytest

from jaxdet.data import (
    DataError,
    InputPipeline,
    ShapesConfig,
    attach_proposals,
    make_shapes,
    save_proposals,
)

SMALL = ShapesConfig(image_size=(30, 40), min_object_size=6, max_object_size=20, max_objects=3)


def test_attach_round_trip_clips_and_drops_empty(tmp_path):
    ds = make_shapes(3, seed=0, config=SMALL)
    given = {r.source_id: np.array([[1, 2, 10, 12], [-5, -1, 50, 20], [45, 0, 60, 10]])
             for r in ds.records}
    path = str(tmp_path / "proposals.npz")
    save_proposals(path, given)
    with_proposals = attach_proposals(ds, path)
    for r in with_proposals.records:
        # In the 40x30 image: kept, clipped to [0, 0, 40, 20], and dropped (outside).
        np.testing.assert_array_equal(r.proposals, [[1, 2, 10, 12], [0, 0, 40, 20]])
        assert r.proposals.dtype == np.float32


def test_missing_image_and_bad_files(tmp_path):
    ds = make_shapes(2, seed=0, config=SMALL)
    path = str(tmp_path / "partial.npz")
    save_proposals(path, {ds[0].source_id: np.zeros((1, 4))})
    with pytest.raises(DataError, match=f"partial.npz: no proposals for image '{ds[1].source_id}'"):
        attach_proposals(ds, path)
    np.savez(str(tmp_path / "shape.npz"), **{r.source_id: np.zeros((2, 3)) for r in ds.records})
    with pytest.raises(DataError, match="shape.npz: proposals for .* are not \\[P, 4\\]"):
        attach_proposals(ds, str(tmp_path / "shape.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: cannot read proposals"):
        attach_proposals(ds, str(tmp_path / "junk.npz"))
    with pytest.raises(ValueError, match="expected \\[P, 4\\]"):
        save_proposals(str(tmp_path / "x.npz"), {"a": np.zeros(4)})


def test_batches_carry_proposals_resized_and_flipped_with_the_boxes(tmp_path):
    ds = make_shapes(8, seed=4, config=SMALL)
    # Each image's proposals: its ground-truth boxes first, then a fixed extra box.
    extra = np.array([[0, 0, 8, 6]], np.float32)
    path = str(tmp_path / "p.npz")
    save_proposals(path, {r.source_id: np.concatenate([r.boxes, extra]) for r in ds.records})
    ds = attach_proposals(ds, path)
    pipe = InputPipeline(ds, batch_size=4, max_boxes=3, min_size=45, max_size=100,
                         buckets=((48, 64),), flip=True, seed=2, max_proposals=3)
    flips = 0
    for batch in pipe.batches(0, 4):
        assert batch["proposals"].shape == (4, 3, 4) and batch["proposal_valid"].dtype == bool
        for slot in range(4):
            r = ds[batch["image_id"][slot]]
            m = len(r.labels)
            kept = min(m + 1, 3)  # truncated to max_proposals
            np.testing.assert_array_equal(batch["proposal_valid"][slot], np.arange(3) < kept)
            # The proposals that were ground-truth boxes land exactly on the batch's boxes.
            np.testing.assert_allclose(batch["proposals"][slot, :min(m, 3)],
                                       batch["boxes"][slot, :min(m, 3)], rtol=1e-6)
            if m < 3:  # the extra box, x 1.5 (30x40 -> 45x60), maybe mirrored in width 60
                box = batch["proposals"][slot, m]
                plain, mirrored = [0, 0, 12, 9], [48, 0, 60, 9]
                flips += np.allclose(box, mirrored)
                assert np.allclose(box, plain) or np.allclose(box, mirrored)
            assert not batch["proposals"][slot, kept:].any()
    assert flips > 0


def test_max_proposals_needs_proposals():
    ds = make_shapes(2, seed=0, config=SMALL)
    with pytest.raises(ValueError, match="2 records have no proposals"):
        InputPipeline(ds, batch_size=1, min_size=None, max_size=None, max_proposals=10)
