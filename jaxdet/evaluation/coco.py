"""COCO detection metrics through pycocotools, and the conversion of predictions to COCO results."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxdet.data.coco import xyxy_to_xywh

# COCOeval.stats order (bbox), named as papers report them.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def detections_to_coco(
    pred_boxes: Sequence[np.ndarray],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    *,
    image_ids: Sequence[int],
    category_ids: Sequence[int],
) -> list:
    """Predictions as a COCO results list (what `COCO.loadRes` and the COCO server take).

    Each argument is a list over images:
      pred_boxes: [D_i, 4] xyxy in original pixels; pred_labels: [D_i] int in [0, C);
      pred_scores: [D_i].
    Args:
      image_ids: [len(pred_boxes)] the COCO image id of each entry.
      category_ids: [C] the COCO category id of each label (`Dataset.category_ids`).
    Returns:
      list of {"image_id", "category_id", "bbox": [x, y, w, h], "score"} with plain Python
      numbers (JSON-serialisable).
    """
    if not len(pred_boxes) == len(pred_labels) == len(pred_scores) == len(image_ids):
        raise ValueError(
            "pred_boxes, pred_labels, pred_scores and image_ids must have one entry per image, got "
            f"{len(pred_boxes)}, {len(pred_labels)}, {len(pred_scores)}, {len(image_ids)}"
        )
    category_ids = np.asarray(category_ids, np.int64)
    results = []
    for image_id, boxes, labels, scores in zip(image_ids, pred_boxes, pred_labels, pred_scores):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        labels = np.asarray(labels, np.int64).reshape(-1)
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(category_ids)):
            raise ValueError(
                f"pred_labels of image {image_id} must be in [0, {len(category_ids)}), "
                f"got {labels.tolist()}"
            )
        for box, label, score in zip(xyxy_to_xywh(boxes).tolist(), labels, scores.tolist()):
            results.append({
                "image_id": int(image_id),
                "category_id": int(category_ids[label]),
                "bbox": box,
                "score": score,
            })
    return results


def eval_detection_coco(
    pred_boxes: Sequence[np.ndarray],
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    *,
    gt,
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    verbose: bool = False,
) -> dict:
    """COCO bbox AP (IoU 0.50:0.95), AP50, AP75, APs/APm/APl and ARs through pycocotools.

    Args:
      pred_boxes, pred_labels, pred_scores: lists over images, as in `detections_to_coco`.
      gt: the ground truth: a pycocotools COCO, a COCO instances dict (e.g.
        `jaxdet.data.dataset_to_coco(dataset)`), or the path of an instances JSON.
      image_ids: [len(pred_boxes)] COCO image ids; evaluation covers exactly these images.
      category_ids: [C] COCO category id of each label.
      verbose: print pycocotools' summary table.
    Returns:
      dict of the floats named in STAT_NAMES (-1 where COCO has no ground truth, e.g. no small
      objects), plus "results": the COCO results list evaluated.
    """
    coco_gt = _as_coco(gt)
    results = detections_to_coco(
        pred_boxes, pred_labels, pred_scores, image_ids=image_ids, category_ids=category_ids
    )
    missing = set(int(i) for i in image_ids) - set(coco_gt.getImgIds())
    if missing:
        raise ValueError(f"image_ids not in the ground truth: {sorted(missing)[:10]}")
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        # loadRes adds keys to the dicts it is given; the caller's results stay as documented.
        coco_dt = (coco_gt.loadRes([dict(r) for r in results]) if results
                   else _empty_results(coco_gt))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(log.getvalue())
    stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
    stats["results"] = results
    return stats


def _as_coco(gt) -> COCO:
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, dict):
        data = copy.deepcopy(gt)  # COCO keeps and mutates what it is given
    else:
        with open(gt) as f:
            data = json.load(f)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _empty_results(coco_gt: COCO) -> COCO:
    # loadRes cannot take an empty list; no detections at all is still a valid result (AP 0).
    coco = COCO()
    coco.dataset = {"images": coco_gt.dataset["images"], "annotations": [],
                    "categories": copy.deepcopy(coco_gt.dataset["categories"])}
    coco.createIndex()
    return coco
