"""The held-out objects a run never found: no detection of their class with IoU >= 0.5.

    python experiments/missed_objects.py RUN [RUN ...]

RUN is an evaluated run's workdir (`jaxdet demo`, or `jaxdet train` then `jaxdet eval`): its
`config.json` names the held-out set, its `detections_coco.json` holds the detections the
evaluation scored (score above `test.score_threshold`). Each such object caps its class's VOC07
11-point AP at 10/11 (results/shapes.md). For each, one line: the held-out image's index, the
class, the box, the best IoU of a detection of its class, and the detection of any class that
overlaps it most (class, IoU, score): a box found but named wrong, or not found at all.
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxdet import workdir as run_files  # noqa: E402
from jaxdet.data import load_dataset  # noqa: E402
from jaxdet.data.coco import coco_ground_truth  # noqa: E402
from jaxdet.ops.boxes import box_iou  # noqa: E402

IOU = 0.5


def detections_by_image(path: str, image_ids, category_ids) -> list:
    """Per held-out image: ([D, 4] xyxy boxes, [D] labels, [D] scores) from a COCO results file."""
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    label = {int(c): k for k, c in enumerate(category_ids)}
    found = [([], [], []) for _ in image_ids]
    with open(path) as f:
        for d in json.load(f):
            x, y, w, h = d["bbox"]
            boxes, labels, scores = found[index[d["image_id"]]]
            boxes.append((x, y, x + w, y + h))
            labels.append(label[d["category_id"]])
            scores.append(d["score"])
    return [(np.asarray(b, np.float64).reshape(-1, 4), np.asarray(l, np.int64), np.asarray(s, np.float64))
            for b, l, s in found]


def missed(run: str) -> list:
    """Lines naming the held-out objects of `run` with no same-class detection at IoU >= 0.5."""
    config = run_files.read_config(run)
    if config is None:
        raise SystemExit(f"{run}: no config.json (not a run's workdir)")
    dataset = load_dataset(config, "test")
    _, image_ids = coco_ground_truth(dataset)
    found = detections_by_image(os.path.join(run, run_files.COCO_RESULTS), image_ids, dataset.category_ids)
    names = dataset.class_names
    lines = []
    for i, (record, (boxes, labels, scores)) in enumerate(zip(dataset.records, found)):
        overlaps = box_iou(record.boxes.astype(np.float64), boxes, xp=np)  # [M, D]
        for gt_box, gt_label, row in zip(record.boxes, record.labels, overlaps):
            same = row[labels == gt_label]
            best = float(same.max()) if same.size else 0.0
            if best >= IOU:
                continue
            k = int(row.argmax()) if row.size else None
            nearest = ("no detection in the image" if k is None else
                       f"nearest detection: {names[labels[k]]}, IoU {row[k]:.2f}, score {scores[k]:.2f}")
            lines.append(f"image {i}, {names[gt_label]} {[int(v) for v in gt_box]}: best {names[gt_label]} "
                         f"IoU {best:.2f}; {nearest}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN")
    for run in parser.parse_args().runs:
        lines = missed(run)
        print(f"{run}: {len(lines)} missed")
        for line in lines:
            print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
