"""A run's work directory: the name of each file, what it holds, and reading and writing the small ones.

    checkpoints/          orbax checkpoints (`jaxdet.training.checkpoints`)
    config.json           the run's resolved config (what `jaxdet eval` and `predict` read back)
    class_names.json      the class names, label k the k-th
    train_log.jsonl       one line per logging window (`jaxdet.reporting.TrainingReporter`)
    tensorboard/          TensorBoard event files
    loss_curve.png        the losses of train_log.jsonl against the step
    metrics.json          the run's figures, strict JSON: what is not a finite number is null
    pr_curves.png, detections.png, detections_coco.json
                          the evaluation's (`jaxdet.evaluation.run`)
    predictions/          `jaxdet predict`'s pictures and detections.json (`jaxdet.inference_files`)
    data/                 the demo's shapes dataset, data/shapes.json saying which one it is
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Mapping, Sequence

import ml_collections
import numpy as np

CHECKPOINTS = "checkpoints"
CONFIG = "config.json"
CLASS_NAMES = "class_names.json"
TRAIN_LOG = "train_log.jsonl"
TENSORBOARD = "tensorboard"
LOSS_CURVE = "loss_curve.png"
METRICS = "metrics.json"
PR_CURVES = "pr_curves.png"
DETECTIONS_PICTURE = "detections.png"
COCO_RESULTS = "detections_coco.json"
PREDICTIONS = "predictions"
DATA = "data"
DATA_STAMP = "shapes.json"  # inside DATA

# What each file is, in the order a run's results are listed.
DESCRIPTIONS = {
    METRICS: "the figures above, as JSON",
    DETECTIONS_PICTURE: "detections on held-out images",
    PR_CURVES: "precision-recall curve per class",
    LOSS_CURVE: "training losses",
    COCO_RESULTS: "held-out detections, COCO results format",
    TENSORBOARD: "TensorBoard logs (tensorboard --logdir ...)",
    CHECKPOINTS: "checkpoints (resume with --resume)",
    DATA: "the shapes dataset (VOC layout)",
}
TRAINING_FILES = (CHECKPOINTS, TENSORBOARD, TRAIN_LOG, METRICS)  # what a new run in the directory replaces
EVALUATION_FILES = (METRICS, DETECTIONS_PICTURE, PR_CURVES, COCO_RESULTS)


def checkpoint_dir(workdir: str) -> str:
    """The absolute path of the run's checkpoints (orbax wants an absolute one)."""
    return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def save_run_files(config: ml_collections.ConfigDict, workdir: str, class_names: Sequence[str]) -> None:
    """Writes `config.json` and `class_names.json`, what `jaxdet eval` and `predict` read back."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG), "w") as f:
        f.write(config.to_json(indent=2))
    with open(os.path.join(workdir, CLASS_NAMES), "w") as f:
        json.dump(list(class_names), f)


def read_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The config a run in `workdir` was trained with; None when it has no config.json."""
    path = os.path.join(workdir, CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def read_class_names(workdir: str) -> tuple:
    """The class names a run in `workdir` was trained with (label k is the k-th)."""
    with open(os.path.join(workdir, CLASS_NAMES)) as f:
        return tuple(json.load(f))


def clear_training(workdir: str) -> None:
    """Removes a previous run's TRAINING_FILES from `workdir` (not its data)."""
    for name in TRAINING_FILES:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def read_train_log(workdir: str) -> list:
    """The rows of `train_log.jsonl` (empty if there is none)."""
    path = os.path.join(workdir, TRAIN_LOG)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def json_safe(value):
    """`value` with every non-finite float (NaN, inf: e.g. the training rate of a one-step run, the
    AP of a class without ground truth) replaced by None, numpy scalars made Python ones, tuples
    made lists: what strict JSON (RFC 8259, JavaScript's JSON.parse, jq) can hold."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def update_metrics_file(workdir: str, values: Mapping) -> dict:
    """Merges `values` into `metrics.json` (kept from training when only evaluating); returns all of
    it as written: strict JSON, a figure that is not a finite number is null (see `json_safe`)."""
    path = os.path.join(workdir, METRICS)
    metrics = {}
    if os.path.exists(path):
        with open(path) as f:
            metrics = json.load(f)  # a file of an older version may hold NaN: made null below
    metrics.update(values)
    metrics = json_safe(metrics)
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
    return metrics


def data_is_stamped(workdir: str, stamp: Mapping) -> bool:
    """Whether `workdir/data` holds the dataset `stamp` describes (written by `stamp_data`)."""
    path = os.path.join(workdir, DATA, DATA_STAMP)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f) == json.loads(json.dumps(stamp))


def stamp_data(workdir: str, stamp: Mapping) -> None:
    """Records what `workdir/data` holds, once it is completely written."""
    with open(os.path.join(workdir, DATA, DATA_STAMP), "w") as f:
        json.dump(stamp, f)
