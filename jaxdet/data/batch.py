"""The batch contract: the keys, shapes and dtypes of a batch, written once.

The input pipeline (`jaxdet.data.pipeline`) yields batches as dicts of numpy arrays,
:func:`empty_batch` laid out; the training step (`jaxdet.training.step.detection_losses`) reads
`TRAIN_KEYS` of them, detection (`jaxdet.inference.predict`) `DETECTION_KEYS`, and evaluation
maps the detections back with "orig_hw" and "image_id". Axes: B images, padded to the bucket
(H, W); G = `max_boxes` ground-truth slots; P = `max_proposals` given RoIs. Boxes are xyxy in
the continuous pixels of the resized image (`jaxdet.data.records`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Field(NamedTuple):
    """One array of a batch: its axes (names or sizes), dtype, value in padding, meaning."""

    shape: tuple
    dtype: type
    fill: float
    doc: str


FIELDS = {
    "images": Field(("B", "H", "W", 3), np.float32, 0, "normalised, zero padded bottom/right to the bucket (H, W)"),
    "boxes": Field(("B", "G", 4), np.float32, 0, "ground truth xyxy in resized pixels, zeros where padding"),
    "labels": Field(("B", "G"), np.int32, 0, "class in [0, K), 0 where padding"),
    "valid": Field(("B", "G"), np.bool_, False, "False for padding, crowd boxes and (by default) difficult ones"),
    "image_hw": Field(("B", 2), np.int32, 0, "(height, width) of the resized content inside the padding"),
    "scale": Field(("B",), np.float32, 1, "nominal resize factor (the exact per-axis mapping: "
                                          "`jaxdet.data.transforms.boxes_to_original`)"),
    "orig_hw": Field(("B", 2), np.int32, 0, "original (height, width)"),
    "image_id": Field(("B",), np.int64, -1, "index in the dataset; -1 for the filler of a last partial batch"),
    # Fast R-CNN only: RoIs given with the images (`jaxdet.data.precomputed_proposals`).
    "proposals": Field(("B", "P", 4), np.float32, 0, "xyxy in resized pixels, zeros where padding"),
    "proposal_valid": Field(("B", "P"), np.bool_, False, "False for padding"),
}
# Present only in the batches of a pipeline with `max_proposals` (Fast R-CNN).
PROPOSAL_KEYS = ("proposals", "proposal_valid")
# What the training step reads; the others are for evaluation and bookkeeping.
TRAIN_KEYS = ("images", "boxes", "labels", "valid", "image_hw", "scale") + PROPOSAL_KEYS
# What detection reads.
DETECTION_KEYS = ("images", "image_hw", "scale") + PROPOSAL_KEYS


def empty_batch(batch_size: int, image_hw: tuple, *, max_boxes: int, max_proposals: int | None = None) -> dict:
    """A batch of `FIELDS` filled with their padding values; the proposal keys only with `max_proposals`.

    Args:
      batch_size: B.
      image_hw: the padded (H, W).
      max_boxes: G.
      max_proposals: P, or None for batches without given RoIs.
    """
    sizes = {"B": batch_size, "H": image_hw[0], "W": image_hw[1], "G": max_boxes, "P": max_proposals}
    return {name: np.full(tuple(sizes.get(axis, axis) for axis in field.shape), field.fill, field.dtype)
            for name, field in FIELDS.items() if max_proposals is not None or name not in PROPOSAL_KEYS}
