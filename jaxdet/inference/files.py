"""Detection on image files: `predict_files(config, detector, files, class_names, out)` writes, for each
image, a PNG with its detections drawn (class colour, name and score), and `detections.json` with
every image's boxes (xyxy, original pixels), scores, labels and class names. An image that cannot be
decoded is skipped (named in `detections.json`'s "skipped"), not the end of the run; the files of a
folder that are not images are left out (`image_files`).

The images go through the evaluation's input pipeline and batched detection
(`jaxdet.inference.dataset.detect`): the same resizing and normalisation, so an image of the test
set gets the very detections the evaluation scored. `detect_run_files` is the `jaxdet predict`
command: a run's checkpoint on the files given.
"""

from __future__ import annotations

import glob
import json
import os
from typing import NamedTuple, Sequence

import ml_collections
import numpy as np

from jaxdet import workdir as run_files
from jaxdet.data import DataError, Record, attach_proposals, load_image, make_dataset, with_class_names
from jaxdet.data.records import check_image_file
from jaxdet.devices import select_devices
from jaxdet.errors import UsageError
from jaxdet.inference.dataset import detect
from jaxdet.inference.detector import pretrained_detector
from jaxdet.inference.trained import TrainedDetector, restore_trained
from jaxdet.pictures import draw_detections

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DETECTIONS_FILE = "detections.json"


class ImageFilesError(UsageError, ValueError):
    """A folder without images, no image that can be read, or a Fast R-CNN run without proposals; the
    message names them."""


class ImageFiles(NamedTuple):
    """What `image_files` found: the files to detect on, and the files of the folders left out."""

    images: list
    others: list  # not images by their extension (IMAGE_EXTENSIONS)


def image_files(inputs: Sequence[str]) -> ImageFiles:
    """The image files of `inputs`: files as given, folders as their images (IMAGE_EXTENSIONS) sorted by
    name, the folders' other files left out.

    Raises:
      FileNotFoundError: an input does not exist.
      ImageFilesError: a folder holds no images.
    """
    files, others = [], []
    for item in inputs:
        if os.path.isdir(item):
            inside = sorted(p for p in glob.glob(os.path.join(item, "*")) if os.path.isfile(p))
            found = [p for p in inside if p.lower().endswith(IMAGE_EXTENSIONS)]
            if not found:
                raise ImageFilesError(f"folder {item!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
            others += [p for p in inside if p not in found]
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"image {item!r} not found: give image files or folders of images")
    return ImageFiles(files, others)


def image_dataset(config: ml_collections.ConfigDict, files: Sequence[str], class_names: Sequence[str]) -> tuple:
    """A Dataset of the `files` that decode, without ground truth (Fast R-CNN: with `config.data.proposals`'
    boxes), and the others.

    Returns:
      (Dataset, [(file, why it cannot be read)]).
    Raises:
      ImageFilesError: no file can be read, or a Fast R-CNN config without proposals.
    """
    records, skipped = [], []
    for path in files:
        try:  # decoded now: a corrupt file is left out here rather than failing its batch
            height, width = check_image_file(path, height=None, width=None, decode=True)
        except DataError as e:
            skipped.append((path, str(e)))
            continue
        records.append(Record(image_id=0, height=height, width=width, boxes=np.zeros((0, 4), np.float32),
                              labels=np.zeros(0, np.int32), difficult=np.zeros(0, bool), iscrowd=np.zeros(0, bool),
                              path=path, source_id=os.path.splitext(os.path.basename(path))[0]))
    if not records:
        raise ImageFilesError(f"none of the {len(files)} image files can be read, e.g. {skipped[0][1]}")
    dataset = make_dataset(records, class_names)
    if config.model.kind == "fast_rcnn":
        if not config.data.get("proposals"):
            raise ImageFilesError("a Fast R-CNN run detects on given proposals: set config.data.proposals=FILE with "
                                  "boxes for each image's file stem (jaxdet.data.save_proposals)")
        dataset = attach_proposals(dataset, config.data.proposals)
    return dataset, skipped


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


def predict_files(config: ml_collections.ConfigDict, detector: TrainedDetector, files: Sequence[str],
                  class_names: Sequence[str], out: str, *, score_threshold: float = 0.5,
                  show_progress: bool = True, inputs: Sequence[str] = (), run: str | None = None) -> dict:
    """Detects on the `files` that can be read (`image_dataset`), keeps detections scoring at least
    `score_threshold`, and writes a PNG per image and `detections.json` into `out` (created), refusing
    before any work to replace a file of theirs or of the folders `inputs` (`jaxdet.workdir.output`;
    `run`: the run's directory).

    Returns:
      detections.json's content: {"score_threshold", "box_format", "images": [{"file", "picture",
      "height", "width", "detections": [{"box" [4] xyxy original pixels, "score", "label", "class"}]}],
      "skipped": [{"file", "reason"}] for the files that cannot be read}.
    """
    dataset, skipped = image_dataset(config, files, class_names)
    with run_files.reading([*files, *inputs, *run_files.config_inputs(config)], run):  # before any work
        pictures = [run_files.output(os.path.join(out, name))
                    for name in _picture_names([r.path for r in dataset.records])]
        detections_file = run_files.output(os.path.join(out, DETECTIONS_FILE))
    detections, _ = detect(config, detector, dataset, show_progress=show_progress)
    os.makedirs(out, exist_ok=True)
    entries = []
    for record, found, picture in zip(dataset.records, detections, pictures):
        keep = found["scores"] >= score_threshold
        boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
        draw_detections(load_image(record), boxes, labels, scores, class_names, min_side=0, path=picture)
        entries.append({
            "file": record.path, "picture": picture, "height": record.height, "width": record.width,
            "detections": [{"box": [float(v) for v in box], "score": float(s), "label": int(label),
                            "class": class_names[int(label)]} for box, s, label in zip(boxes, scores, labels)],
        })
    result = {"score_threshold": score_threshold, "box_format": "xyxy, original pixels", "images": entries,
              "skipped": [{"file": path, "reason": reason} for path, reason in skipped]}
    with open(detections_file, "w") as f:
        json.dump(result, f, indent=1)
    return result


def detect_run_files(config: ml_collections.ConfigDict | None, workdir: str | None, inputs: Sequence[str], *,
                     out: str | None = None, step: int | None = None, score_threshold: float = 0.5,
                     device: str = "auto", num_devices: int | None = None, show_progress: bool = True) -> tuple:
    """`predict_files` with the checkpoint of the run in `workdir` (the latest unless `step`) on the
    image files and folders `inputs` (`image_files`), writing into `out` (default
    `workdir/predictions`), on `device` (`jaxdet.devices.select_devices`), with the run's labels.
    With no `workdir`, the detector is the weights file of the config's `model.pretrained` (torchvision's
    FPN detectors: `jaxdet.inference.detector.pretrained_detector`), labelled with its classes, and
    `out` must be given.

    Returns:
      (detections.json's content, the ImageFiles found, the folder written).

    Raises:
      NoDetector: no workdir, and no config with a weights file (the message says what to give).
    """
    if workdir is None and config is not None and not out:
        raise ImageFilesError("predicting with a weights file and no training run needs --out DIR, the "
                              "folder the pictures and detections.json go to")
    select_devices(device, num_devices)
    if workdir is None:
        config, detector = pretrained_detector(config)
        class_names = tuple(config.data.classes)
    else:
        class_names = run_files.read_class_names(workdir)
        config = with_class_names(config, class_names)
    files = image_files(inputs)
    out = out or os.path.join(workdir, run_files.PREDICTIONS)
    if workdir is not None:
        detector = restore_trained(config, workdir, step=step)
    found = predict_files(config, detector, files.images, class_names, out,
                          score_threshold=score_threshold, show_progress=show_progress, inputs=inputs, run=workdir)
    return found, files, out
