"""Detection on image files: `predict_files(config, state, files, class_names, out)` writes, for each
image, a PNG with its detections drawn (class colour, name and score), and `detections.json` with
every image's boxes (xyxy, original pixels), scores, labels and class names.

The images go through the evaluation's input pipeline and batched detection
(`jaxdet.evaluation.run.detect`): the same resizing and normalisation, so an image of the test
set gets the very detections the evaluation scored.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Sequence

import ml_collections
import numpy as np
from PIL import Image

from jaxdet.data import Dataset, Record, attach_proposals, load_image, make_dataset
from jaxdet.evaluation.pictures import draw_detections
from jaxdet.evaluation.run import detect
from jaxdet.training.state import TrainState

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DETECTIONS_FILE = "detections.json"


class ImageFilesError(ValueError):
    """A folder without images, or a file that is not an image; the message names it."""


def image_files(inputs: Sequence[str]) -> list:
    """The image files of `inputs`: files as given, folders as their images (IMAGE_EXTENSIONS) sorted by name.

    Raises:
      FileNotFoundError: an input does not exist.
      ImageFilesError: a folder holds no images.
    """
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(p for p in glob.glob(os.path.join(item, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ImageFilesError(f"folder {item!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"image {item!r} not found: give image files or folders of images")
    return files


def image_dataset(config: ml_collections.ConfigDict, files: Sequence[str], class_names: Sequence[str]) -> Dataset:
    """A Dataset of `files` without ground truth (Fast R-CNN: with `config.data.proposals`' boxes).

    Raises:
      ImageFilesError: a file PIL cannot read, or a Fast R-CNN config without proposals.
    """
    records = []
    for path in files:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception as e:  # PIL raises several unrelated types for a bad file
            raise ImageFilesError(f"{path}: not an image PIL can read ({type(e).__name__}: {e})") from None
        records.append(Record(image_id=0, height=height, width=width, boxes=np.zeros((0, 4), np.float32),
                              labels=np.zeros(0, np.int32), difficult=np.zeros(0, bool), iscrowd=np.zeros(0, bool),
                              path=path, source_id=os.path.splitext(os.path.basename(path))[0]))
    dataset = make_dataset(records, class_names)
    if config.model.kind == "fast_rcnn":
        if not config.data.get("proposals"):
            raise ImageFilesError("a Fast R-CNN run detects on given proposals: set config.data.proposals=FILE with "
                                  "boxes for each image's file stem (jaxdet.data.save_proposals)")
        dataset = attach_proposals(dataset, config.data.proposals)
    return dataset


def _picture_names(paths: Sequence[str]) -> list:
    """One PNG name per image file: its stem, with _1, _2, ... where two stems are the same."""
    names, used = [], set()
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, k = f"{stem}.png", 1
        while name in used:
            name, k = f"{stem}_{k}.png", k + 1
        used.add(name)
        names.append(name)
    return names


def predict_files(config: ml_collections.ConfigDict, state: TrainState, files: Sequence[str],
                  class_names: Sequence[str], out: str, *, score_threshold: float = 0.5,
                  show_progress: bool = True) -> dict:
    """Detects on `files`, keeps detections scoring at least `score_threshold`, and writes a PNG per
    image and `detections.json` into `out` (created).

    Returns:
      detections.json's content: {"score_threshold", "box_format", "images": [{"file", "picture",
      "height", "width", "detections": [{"box" [4] xyxy original pixels, "score", "label", "class"}]}]}.
    """
    dataset = image_dataset(config, files, class_names)
    detections, _ = detect(config, state, dataset, show_progress=show_progress)
    os.makedirs(out, exist_ok=True)
    entries = []
    for record, found, name in zip(dataset.records, detections, _picture_names([r.path for r in dataset.records])):
        keep = found["scores"] >= score_threshold
        boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
        picture = os.path.join(out, name)
        draw_detections(load_image(record), boxes, labels, scores, class_names, min_side=0, path=picture)
        entries.append({
            "file": record.path, "picture": picture, "height": record.height, "width": record.width,
            "detections": [{"box": [float(v) for v in box], "score": float(s), "label": int(label),
                            "class": class_names[int(label)]} for box, s, label in zip(boxes, scores, labels)],
        })
    result = {"score_threshold": score_threshold, "box_format": "xyxy, original pixels", "images": entries}
    with open(os.path.join(out, DETECTIONS_FILE), "w") as f:
        json.dump(result, f, indent=1)
    return result
