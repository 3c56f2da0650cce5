"""Detection over a whole dataset: `detect(config, detector, dataset)` runs `predict` on every image,
through the evaluation's input pipeline (`jaxdet.data.eval_pipeline`: the same resizing and
normalisation for every caller), each batch split over this process's devices; with several
processes each detects on its shard of the images and every process receives everyone's
detections (`jaxdet.distributed.gather_detections`).
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np

from jaxdet import distributed, reporting
from jaxdet.data import Dataset, boxes_to_original, eval_pipeline
from jaxdet.data.batch import DETECTION_KEYS
from jaxdet.devices import make_mesh, replicated, split_batch
from jaxdet.inference.detector import detect_fpn, is_fpn
from jaxdet.inference.predict import detections_to_lists, predict
from jaxdet.inference.trained import TrainedDetector
from jaxdet.settings import DetectorSettings


def _local_detection_mesh(detector: TrainedDetector, batch_size: int) -> jax.sharding.Mesh:
    """The devices of this process that hold `detector`, as a mesh detection splits its batches over;
    only the first of them when `batch_size` does not divide among them."""
    devices = sorted(jax.tree.leaves(detector.variables)[0].sharding.addressable_devices, key=lambda d: d.id)
    return make_mesh(devices=devices if batch_size % len(devices) == 0 else devices[:1])


def detect(config: ml_collections.ConfigDict, detector: TrainedDetector, dataset: Dataset, *,
           show_progress: bool = True, batch_size: int | None = None) -> tuple:
    """Detections on every image of `dataset`: each batch split over this process's devices that
    hold `detector` (a `TrainedDetector` or a `TrainState`); with several processes, each detects
    on its shard of the images and all of them receive everyone's detections.

    Returns:
      (list over records of {"boxes" [n, 4] xyxy original pixels, "scores" [n], "labels" [n]},
       seconds spent, compilation included). A ResNet-FPN detector's images are torchvision's
      (`jaxdet.inference.detector.detect_fpn`).
    """
    if is_fpn(config):
        return detect_fpn(config, detector, dataset, show_progress=show_progress, batch_size=batch_size)
    pipeline = eval_pipeline(config, dataset, batch_size=batch_size, num_shards=jax.process_count(),
                             shard_index=jax.process_index())
    settings = DetectorSettings.from_config(config)
    mesh = _local_detection_mesh(detector, pipeline.batch_size)
    # This process's copy of the (replicated) weights, on each of its devices (all addressable:
    # plain device_put, no cross-process array).
    variables = jax.device_put(jax.tree.map(lambda x: x.addressable_data(0), detector.variables),
                               replicated(mesh))
    found = {}
    began = time.perf_counter()
    with reporting.detection_bar(len(dataset), show_bar=show_progress and distributed.is_main_process()) as bar:
        for batch in pipeline.epoch():
            placed = jax.device_put({k: batch[k] for k in DETECTION_KEYS if k in batch}, split_batch(mesh))
            with jax.set_mesh(mesh):  # each device detects on its own images
                detections = predict(detector.model, variables, placed["images"], placed["image_hw"],
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
