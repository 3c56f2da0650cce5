"""experiments/missed_objects.py on a run directory written by hand: the held-out set of a smoke
config (in memory) and a COCO results file built from its ground truth, less or relabelled."""

import json
import os
import sys

import numpy as np

from helpers import REPO

sys.path.insert(0, os.path.join(REPO, "experiments"))
import missed_objects  # noqa: E402

from jaxdet import workdir as run_files  # noqa: E402
from jaxdet.configs import load_config  # noqa: E402
from jaxdet.data import load_dataset  # noqa: E402


def _run_with(tmp_path, edit):
    """A workdir whose detections are the held-out ground truth as `edit(image, k, label, box)`
    returns it: (label, box) to keep, None to drop."""
    config = load_config("tiny_shapes:smoke")
    dataset = load_dataset(config, "test")
    results = []
    for i, record in enumerate(dataset.records):
        for k, (box, label) in enumerate(zip(record.boxes, record.labels)):
            kept = edit(i, k, int(label), box.astype(float))
            if kept is not None:
                label, (x1, y1, x2, y2) = kept
                results.append({"image_id": record.image_id, "category_id": int(dataset.category_ids[label]),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.9})
    workdir = str(tmp_path / "run")
    run_files.save_run_files(config, workdir, dataset.class_names)
    with open(os.path.join(workdir, run_files.COCO_RESULTS), "w") as f:
        json.dump(results, f)
    return workdir, dataset


def test_every_object_found_lists_none(tmp_path):
    workdir, _ = _run_with(tmp_path, lambda i, k, label, box: (label, box))
    assert missed_objects.missed(workdir) == []


def test_a_dropped_a_relabelled_and_a_shifted_object_are_listed(tmp_path):
    def edit(i, k, label, box):
        if (i, k) == (0, 0):
            return None                                    # never detected
        if (i, k) == (1, 0):
            return (label + 1) % 3, box                     # the right box, the wrong class
        if (i, k) == (2, 0):
            w = box[2] - box[0]
            return label, box + np.array([w, 0, w, 0])      # moved by its width: IoU 0
        return label, box

    workdir, dataset = _run_with(tmp_path, edit)
    lines = missed_objects.missed(workdir)
    names = dataset.class_names
    assert len(lines) == 3
    wrong = names[(int(dataset.records[1].labels[0]) + 1) % 3]
    assert lines[0].startswith(f"image 0, {names[dataset.records[0].labels[0]]} ")
    assert lines[1].startswith(f"image 1, {names[dataset.records[1].labels[0]]} ")
    assert f"nearest detection: {wrong}, IoU 1.00" in lines[1]
    assert lines[2].startswith(f"image 2, {names[dataset.records[2].labels[0]]} ")
    assert "IoU 0.00" in lines[2]
