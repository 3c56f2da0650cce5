"""Evaluation of a trained model over a whole dataset: `evaluate(config, detector, dataset, workdir)`.

`evaluate` detects on every image (`jaxdet.inference.dataset.detect`) and scores the detections
with the VOC07 (11-point) and area mAP of the devkit's rules and COCO's AP through pycocotools, and writes into the work directory
`metrics.json`, `pr_curves.png`, `detections.png` (the first held-out images with their
detections and dashed ground truth) and `detections_coco.json` (names: `jaxdet.workdir`).
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from jaxdet import distributed, reporting, workdir as run_files
from jaxdet.data import Dataset, check_num_classes, coco_ground_truth, load_image
from jaxdet.evaluation.coco import STAT_NAMES, eval_detection_coco
from jaxdet.evaluation.voc import eval_detection_voc
from jaxdet.inference.dataset import detect
from jaxdet.inference.trained import TrainedDetector
from jaxdet.pictures import draw_detections, picture_grid, plot_pr_curves


def score(dataset: Dataset, detections: Sequence[Mapping[str, np.ndarray]]) -> tuple:
    """VOC07 11-point and area mAP@0.5 and COCO AP of `detections` (one dict per record of `dataset`).

    Returns:
      (figures: voc07_map, voc_map, coco_ap, coco_<stat> for the rest of COCO's table and
       per_class_ap (VOC07, by name); the VOC07 result of `eval_detection_voc`; the COCO result
       of `eval_detection_coco`).
    """
    boxes = [d["boxes"] for d in detections]
    labels = [d["labels"] for d in detections]
    scores = [d["scores"] for d in detections]
    gt_boxes = [r.boxes for r in dataset.records]
    gt_labels = [r.labels for r in dataset.records]
    # VOC's devkit has no crowd regions: matching one is neither right nor wrong, as for `difficult`.
    ignored = [r.difficult | r.iscrowd for r in dataset.records]
    voc07 = eval_detection_voc(boxes, labels, scores, gt_boxes, gt_labels, ignored, use_07_metric=True,
                               num_classes=dataset.num_classes)
    voc_area = eval_detection_voc(boxes, labels, scores, gt_boxes, gt_labels, ignored, use_07_metric=False,
                                  num_classes=dataset.num_classes)
    gt, image_ids = coco_ground_truth(dataset)
    coco = eval_detection_coco(boxes, labels, scores, gt=gt, image_ids=image_ids, category_ids=dataset.category_ids)
    figures = {
        "voc07_map": voc07["map"],
        "voc_map": voc_area["map"],
        "coco_ap": coco["AP"],
        **{f"coco_{name.lower()}": coco[name] for name in STAT_NAMES[1:]},
        "per_class_ap": {name: float(ap) for name, ap in zip(dataset.class_names, voc07["ap"])},
    }
    return figures, voc07, coco


def detection_tiles(dataset: Dataset, detections: Sequence[Mapping[str, np.ndarray]], *, num_images: int = 8,
                    score_threshold: float = 0.5) -> list:
    """The first `num_images` images drawn with their detections above `score_threshold` and dashed ground truth."""
    return [draw_detections(load_image(record), found["boxes"], found["labels"], found["scores"],
                            dataset.class_names, gt_boxes=record.boxes, gt_labels=record.labels,
                            score_threshold=score_threshold, min_side=256)
            for record, found in list(zip(dataset.records, detections))[:num_images]]


def evaluate(config: ml_collections.ConfigDict, detector: TrainedDetector, dataset: Dataset, workdir: str, *,
             show_progress: bool = True) -> dict:
    """Detects on `dataset` with `detector` (a `TrainedDetector` or a `TrainState`), scores the
    detections, and writes the evaluation's files into `workdir`.

    Returns:
      the figures merged into `workdir/metrics.json`: `score`'s, and eval_images, eval_seconds,
      eval_images_per_second, checkpoint_step.
    """
    check_num_classes(config, dataset)
    detections, seconds = detect(config, detector, dataset, show_progress=show_progress)
    figures, voc07, coco = score(dataset, detections)
    figures.update(eval_images=len(dataset), eval_seconds=seconds,
                   eval_images_per_second=len(dataset) / max(seconds, 1e-9),
                   checkpoint_step=int(jax.device_get(detector.step.addressable_data(0))))
    if not distributed.is_main_process():
        return figures
    os.makedirs(workdir, exist_ok=True)
    plot_pr_curves(voc07, dataset.class_names, run_files.output(os.path.join(workdir, run_files.PR_CURVES)),
                   title=f"held-out PR curves: VOC07 mAP@0.5 {voc07['map']:.4f}, COCO AP {coco['AP']:.4f}")
    picture_grid(detection_tiles(dataset, detections),
                 run_files.output(os.path.join(workdir, run_files.DETECTIONS_PICTURE)))
    with open(run_files.output(os.path.join(workdir, run_files.COCO_RESULTS)), "w") as f:
        json.dump(coco["results"], f)
    reporting.write_scalars(workdir, "eval", {k: v for k, v in figures.items() if k.startswith(("voc", "coco"))},
                            figures["checkpoint_step"])
    return run_files.update_metrics_file(workdir, figures)
