"""COCO instances format: one JSON of images, annotations and categories, plus an image folder.

Category ids (sparse in COCO: 1..90 for 80 classes) map to contiguous labels in id order and
back through `Dataset.category_ids`. COCO's `[x, y, w, h]` is already continuous, so records
hold `x1 = x, x2 = x + w` (:func:`xywh_to_xyxy`, and back :func:`xyxy_to_xywh`).
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from jaxdet.data.records import (
    BadDataLog,
    DataError,
    Dataset,
    Record,
    check_boxes,
    check_image_file,
    make_dataset,
    save_image,
)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[..., 4] COCO (x, y, w, h) -> [..., 4] (x1, y1, x2, y2), in the dtype of `boxes`."""
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] COCO (x, y, w, h), in the dtype of `boxes`."""
    return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def read_coco(
    annotation_file: str,
    image_dir: str,
    *,
    on_error: str = "raise",
    check_images: bool = False,
    keep_empty: bool = True,
) -> Dataset:
    """Reads a COCO instances JSON.

    Args:
      annotation_file: e.g. `annotations/instances_train2017.json`.
      image_dir: the folder the images' `file_name`s are relative to.
      on_error: "raise" stops at the first bad file or annotation; "skip" warns naming it, drops
        the whole image (so no object silently becomes background) and counts it in `skipped`.
      check_images: decode every image now (slow) instead of only checking it exists.
      keep_empty: keep images without annotations (False: skip them, as detection training
        usually does; crowd-only images count as empty).
    Returns:
      Dataset; crowd annotations are kept with `iscrowd` True (never training targets), and a
      non-standard `difficult` key, as `write_coco` writes it, is honoured.
    """
    data = _load_instances(annotation_file)
    category_ids, class_names = _categories(data, annotation_file)
    label_of = {cid: k for k, cid in enumerate(category_ids)}
    log = BadDataLog(on_error)
    images, by_image = _images_and_annotations(data, annotation_file, log)

    records, crowd_only = [], []
    for image_id, (file_name, height, width) in images.items():
        path = os.path.join(image_dir, file_name)
        try:
            record = _record(
                annotation_file, path, image_id, height, width, by_image[image_id], label_of,
                class_names, check_images=check_images,
            )
        except DataError as e:
            log.report(e, path)
            continue
        if keep_empty or np.any(~record.iscrowd):
            records.append(record)
        elif len(record.iscrowd):
            crowd_only.append(file_name)
    log.summarise(len(images), annotation_file)
    if crowd_only:
        warnings.warn(f"{annotation_file}: {len(crowd_only)} images hold only crowd annotations (iscrowd=1, "
                      f"e.g. {crowd_only[0]}), which are never training targets: they are left out with the "
                      "images without annotations", stacklevel=2)
    return make_dataset(records, class_names, category_ids=category_ids, skipped=log.skipped,
                        annotation_file=os.path.abspath(annotation_file))


def _load_instances(annotation_file: str) -> dict:
    """The parsed JSON of a COCO instances file, checked to hold its three lists."""
    try:
        with open(annotation_file, encoding="utf-8-sig") as f:  # a byte-order mark is not JSON
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotation file not found: {annotation_file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{annotation_file}: malformed JSON ({e})") from e
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise DataError(
            f"{annotation_file}: not a COCO instances file (needs lists 'images', "
            "'annotations' and 'categories')"
        )
    return data


def _categories(data: dict, annotation_file: str) -> tuple:
    """(category ids, class names), in id order: label k is the k-th smallest id."""
    try:
        categories = sorted(data["categories"], key=lambda c: c["id"])
        category_ids = [int(c["id"]) for c in categories]
        class_names = [str(c["name"]) for c in categories]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{annotation_file}: malformed 'categories' ({e!r})") from e
    return category_ids, class_names


def _images_and_annotations(data: dict, annotation_file: str, log: BadDataLog) -> tuple:
    """({image id: (file_name, height, width)}, {image id: [(index, annotation)]}); an annotation
    of an unknown image is reported to `log`."""
    images, index_of = {}, {}
    for i, image in enumerate(data["images"]):
        try:
            image_id = image["id"]
            # No size (many exporters leave it out): the image file's (`check_image_file`).
            height, width = (None if image.get(k) is None else int(image[k]) for k in ("height", "width"))
            images_entry = (image["file_name"], height, width)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{annotation_file}: images[{i}] is malformed ({e!r})") from e
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataError(f"{annotation_file}: images[{i}] ({images_entry[0]}) has id {image_id!r}: COCO image "
                            "ids are integers (the evaluation, pycocotools, needs them); renumber the images")
        if image_id in images:
            j = index_of[image_id]
            raise DataError(f"{annotation_file}: images[{i}] ({images_entry[0]}) and images[{j}] "
                            f"({images[image_id][0]}) have the same id {image_id}; image ids must be unique")
        images[image_id], index_of[image_id] = images_entry, i
    by_image = {image_id: [] for image_id in images}
    for i, ann in enumerate(data["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in by_image:
            log.report(
                DataError(
                    f"{annotation_file}: annotation {i} refers to unknown image {image_id!r}"
                ),
                annotation_file,
                image=False,
            )
            continue
        by_image[image_id].append((i, ann))
    return images, by_image


def _record(annotation_file, path, image_id, height, width, anns, label_of, class_names, *,
            check_images) -> Record:
    height, width = check_image_file(path, height=height, width=width, decode=check_images)
    boxes, labels, crowd, difficult, names = [], [], [], [], []
    for i, ann in anns:
        what = f"annotation {i} (id {ann.get('id')!r}) of image {image_id!r}"
        category = ann.get("category_id")
        if category not in label_of:
            raise DataError(f"{annotation_file}: {what} has an unknown category_id {category!r}")
        bbox = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise DataError(f"{annotation_file}: {what} has a malformed bbox {bbox!r}") from None
        boxes.append((x, y, w, h))
        labels.append(label_of[category])
        crowd.append(bool(ann.get("iscrowd", 0)))
        difficult.append(bool(ann.get("difficult", 0)))
        names.append(f"{what} ({class_names[label_of[category]]!r})")
    # In float64, then rounded once, as the annotation's own numbers.
    boxes = xywh_to_xyxy(np.array(boxes, np.float64).reshape(-1, 4))
    boxes = check_boxes(
        boxes.astype(np.float32), height=height, width=width, file=annotation_file, objects=names,
    )
    return Record(
        image_id=0,
        height=height,
        width=width,
        boxes=boxes,
        labels=np.array(labels, np.int32),
        difficult=np.array(difficult, bool),
        iscrowd=np.array(crowd, bool),
        path=path,
        source_id=image_id,
    )


def coco_ground_truth(dataset: Dataset) -> tuple:
    """(gt, image_ids) for `jaxdet.evaluation.eval_detection_coco` on `dataset`'s records.

    A dataset read from a COCO instances file is evaluated against that file with its own image
    ids, as the official evaluation does: segment areas for the small/medium/large split, crowd
    regions, and a results file whose ids the file (and the COCO server) know. Any other dataset
    is converted by `dataset_to_coco`, with the dataset indices as ids.
    """
    if dataset.annotation_file is not None:
        return dataset.annotation_file, [int(r.source_id) for r in dataset.records]
    return dataset_to_coco(dataset), [r.image_id for r in dataset.records]


def dataset_to_coco(dataset: Dataset, *, file_names=None) -> dict:
    """The dataset as a COCO instances dict (ground truth for `eval_detection_coco`).

    Image ids are the records' `image_id` (dataset indices, what batches carry); category ids
    are `dataset.category_ids`; `area` is the box area (no masks), so COCO's small/medium/large
    split is by box area. `difficult` is kept as an extra key; pycocotools ignores it and
    counts difficult objects as ordinary ground truth.
    Args:
      file_names: per record, the `file_name` to write; default the image's file name, or
        "{source_id}.png" for in-memory images.
    """
    images, annotations = [], []
    for k, record in enumerate(dataset.records):
        if file_names is not None:
            file_name = file_names[k]
        elif record.path is not None:
            file_name = os.path.basename(record.path)
        else:
            file_name = f"{record.source_id}.png"
        images.append({
            "id": record.image_id, "file_name": file_name,
            "height": record.height, "width": record.width,
        })
        xywh = xyxy_to_xywh(np.asarray(record.boxes, np.float64).reshape(-1, 4))
        for box, label, crowd, diff in zip(
            xywh.tolist(), record.labels, record.iscrowd, record.difficult
        ):
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": record.image_id,
                "category_id": dataset.category_ids[int(label)],
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": int(crowd),
                "difficult": int(diff),
            })
    categories = [
        {"id": cid, "name": name} for cid, name in zip(dataset.category_ids, dataset.class_names)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(
    dataset: Dataset, annotation_file: str, image_dir: str, *, image_format: str = "png"
) -> None:
    """Writes `dataset` as a COCO instances JSON and its images into `image_dir`.

    Images are written by `records.save_image` ("png" keeps synthetic pixels exact).
    """
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(annotation_file)), exist_ok=True)
    file_names = [save_image(r, image_dir, image_format=image_format) for r in dataset.records]
    with open(annotation_file, "w") as f:
        json.dump(dataset_to_coco(dataset, file_names=file_names), f)
