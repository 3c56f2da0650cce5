"""Evaluation of a trained model over a whole dataset: `evaluate(config, state, dataset, workdir)`.

`detect` runs `jaxdet.inference.predict` on every image of a dataset, each batch split over this
process's devices (with several processes, each on its shard of the images, and every process
receives everyone's detections). `evaluate` scores them with the VOC07 (11-point) and area mAP of
the devkit's rules and COCO's AP through pycocotools, and writes into the work directory
`metrics.json`, `pr_curves.png`, `detections.png` (the first held-out images with their
detections and dashed ground truth) and `detections_coco.json` (names: `jaxdet.workdir`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from jaxdet import reporting, workdir as run_files
from jaxdet.data import Dataset, boxes_to_original, coco_ground_truth, load_image
from jaxdet.data.batch import DETECTION_KEYS
from jaxdet.evaluation.coco import STAT_NAMES, eval_detection_coco
from jaxdet.evaluation.pictures import draw_detections, picture_grid, plot_pr_curves
from jaxdet.evaluation.voc import eval_detection_voc
from jaxdet.inference import detections_to_lists, predict
from jaxdet.settings import DetectorSettings
from jaxdet.training import distributed, parallel
from jaxdet.training.inputs import check_num_classes, eval_pipeline
from jaxdet.training.state import TrainState


def _local_detection_mesh(state: TrainState, batch_size: int) -> jax.sharding.Mesh:
    """The devices of this process that hold `state`, as a mesh detection splits its batches over;
    only the first of them when `batch_size` does not divide among them."""
    devices = sorted(jax.tree.leaves(state.variables)[0].sharding.addressable_devices, key=lambda d: d.id)
    return parallel.make_mesh(devices=devices if batch_size % len(devices) == 0 else devices[:1])


def detect(config: ml_collections.ConfigDict, state: TrainState, dataset: Dataset, *,
           show_progress: bool = True, batch_size: int | None = None) -> tuple:
    """Detections on every image of `dataset`: each batch split over this process's devices that
    hold `state` (with several processes, each detects on its shard of the images and all of them
    receive everyone's detections).

    Returns:
      (list over records of {"boxes" [n, 4] xyxy original pixels, "scores" [n], "labels" [n]},
       seconds spent, compilation included).
    """
    pipeline = eval_pipeline(config, dataset, batch_size=batch_size, num_shards=jax.process_count(),
                             shard_index=jax.process_index())
    settings = DetectorSettings.from_config(config)
    mesh = _local_detection_mesh(state, pipeline.batch_size)
    # This process's copy of the (replicated) weights, on each of its devices (all addressable:
    # plain device_put, no cross-process array).
    variables = jax.device_put(jax.tree.map(lambda x: x.addressable_data(0), state.variables),
                               parallel.replicated(mesh))
    found = {}
    began = time.perf_counter()
    with reporting.detection_bar(len(dataset), show_bar=show_progress and distributed.is_main_process()) as bar:
        for batch in pipeline.epoch():
            placed = jax.device_put({k: batch[k] for k in DETECTION_KEYS if k in batch}, parallel.split_batch(mesh))
            with jax.set_mesh(mesh):  # each device detects on its own images
                detections = predict(state.model, variables, placed["images"], placed["image_hw"],
                                     image_scale=placed["scale"], proposals=placed.get("proposals"),
                                     proposal_valid=placed.get("proposal_valid"), settings=settings)
            # Exact per-axis mapping back to the original pixels (the nominal scale is rounded).
            # Filler slots of a last partial batch have size 0: keep their (ignored) boxes finite.
            boxes = boxes_to_original(np.asarray(detections.boxes), image_hw=np.maximum(batch["image_hw"], 1),
                                      orig_hw=batch["orig_hw"])
            lists = detections_to_lists(detections._replace(boxes=boxes), scale=np.ones(len(boxes), np.float32),
                                        orig_hw=batch["orig_hw"])
            for image_id, result in zip(batch["image_id"], lists):
                if image_id >= 0:
                    found[int(image_id)] = result
            bar.update(len(found) * jax.process_count() - bar.n)
    if jax.process_count() > 1:
        found = distributed.gather_detections(found)
    return [found[i] for i in range(len(dataset))], time.perf_counter() - began


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


def evaluate(config: ml_collections.ConfigDict, state: TrainState, dataset: Dataset, workdir: str, *,
             show_progress: bool = True) -> dict:
    """Detects on `dataset`, scores the detections, and writes the evaluation's files into `workdir`.

    Returns:
      the figures merged into `workdir/metrics.json`: `score`'s, and eval_images, eval_seconds,
      eval_images_per_second, checkpoint_step.
    """
    check_num_classes(config, dataset)
    detections, seconds = detect(config, state, dataset, show_progress=show_progress)
    figures, voc07, coco = score(dataset, detections)
    figures.update(eval_images=len(dataset), eval_seconds=seconds,
                   eval_images_per_second=len(dataset) / max(seconds, 1e-9),
                   checkpoint_step=int(jax.device_get(state.step.addressable_data(0))))
    if not distributed.is_main_process():
        return figures
    os.makedirs(workdir, exist_ok=True)
    plot_pr_curves(voc07, dataset.class_names, os.path.join(workdir, run_files.PR_CURVES),
                   title=f"held-out PR curves: VOC07 mAP@0.5 {voc07['map']:.4f}, COCO AP {coco['AP']:.4f}")
    picture_grid(detection_tiles(dataset, detections), os.path.join(workdir, run_files.DETECTIONS_PICTURE))
    with open(os.path.join(workdir, run_files.COCO_RESULTS), "w") as f:
        json.dump(coco["results"], f)
    reporting.write_scalars(workdir, "eval", {k: v for k, v in figures.items() if k.startswith(("voc", "coco"))},
                            figures["checkpoint_step"])
    return run_files.update_metrics_file(workdir, figures)
