"""Precomputed region proposals given with the images (Fast R-CNN): a file of per-image boxes.

Fast R-CNN (Girshick 2015) trains and detects on proposals computed ahead, by selective search or
a trained RPN; the RPN's own proposal layer, run inside the network, is `jaxdet.proposals`.

The file is a NumPy `.npz` with one array per image, named by the image's `source_id` (VOC
file stem, COCO image id as a decimal string): [P, 4] xyxy in original-image pixels, in the
project's continuous convention, best first (the pipeline keeps the first `max_proposals`).
Selective-search files from other projects ([y1, x1, y2, x2], 1-based) must be converted
before saving.
"""

from __future__ import annotations

import dataclasses
import zipfile
from typing import Mapping

import numpy as np

from jaxdet.data.records import DataError, Dataset, make_dataset


def save_proposals(path: str, proposals: Mapping) -> None:
    """Writes {source_id: [P, 4] xyxy} as a proposals file (e.g. boxes saved from an RPN)."""
    arrays = {}
    for key, boxes in proposals.items():
        boxes = np.asarray(boxes, np.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"proposals of {key!r} have shape {boxes.shape}, expected [P, 4]")
        arrays[str(key)] = boxes
    np.savez(path, **arrays)


def attach_proposals(dataset: Dataset, path: str) -> Dataset:
    """The dataset with each record's proposals read from `path`, clipped to its image.

    Proposals are candidates, not ground truth: clipping one to the image or dropping one with
    no area inside it changes no label, so neither is an error.
    Raises:
      DataError naming the file and the image, when the file cannot be read, lacks an image,
      or holds an array that is not [P, 4] finite numbers.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read proposals ({e})") from e
    with archive:
        records = []
        for record in dataset.records:
            key = str(record.source_id)
            if key not in archive.files:
                raise DataError(f"{path}: no proposals for {record.name} (key {key!r})")
            boxes = archive[key]
            if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.all(np.isfinite(boxes)):
                raise DataError(
                    f"{path}: proposals for {record.name} are not [P, 4] finite numbers "
                    f"(shape {boxes.shape})"
                )
            limits = np.array([record.width, record.height] * 2, np.float32)
            boxes = np.clip(boxes.astype(np.float32), 0.0, limits)
            boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
            records.append(dataclasses.replace(record, proposals=boxes))
    return make_dataset(records, dataset.class_names, category_ids=dataset.category_ids,
                        skipped=dataset.skipped, annotation_file=dataset.annotation_file)
