"""Pascal VOC format: `Annotations/*.xml`, `ImageSets/Main/{split}.txt`, `JPEGImages/`.

VOC boxes are 1-based inclusive pixel indices; records hold the project's continuous xyxy
(`x1 = xmin - 1, x2 = xmax`, see `jaxdet.data.records`), and the writer maps back.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Sequence

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

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def read_voc(
    root: str,
    split: str = "trainval",
    *,
    class_names: Sequence[str] = VOC_CLASSES,
    on_error: str = "raise",
    check_images: bool = False,
    keep_empty: bool = True,
) -> Dataset:
    """Reads one split of a VOC tree (join years with `concat_datasets`).

    Args:
      root: the year's directory, e.g. `VOCdevkit/VOC2007`.
      split: name of the list in `ImageSets/Main/` ("train", "val", "trainval", "test").
      class_names: the classes, label k = class_names[k]; an object of another class is bad data.
      on_error: "raise" stops at the first bad file or object; "skip" warns naming it, drops the
        whole image (so no object silently becomes background) and counts it in `skipped`.
      check_images: decode every image now (slow) instead of only checking it exists, so a
        corrupt file is caught by the policy rather than when the loader reaches it.
      keep_empty: keep images with no objects (VOC's test set has none; other trees may).
    Returns:
      Dataset with `difficult` kept per object.
    """
    list_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"VOC split list not found: {list_file}")
    with open(list_file, encoding="utf-8-sig") as f:  # editors may start the list with a byte-order mark
        ids = [line.split()[0] for line in f if line.strip()]
    class_index = {name: k for k, name in enumerate(class_names)}
    log = BadDataLog(on_error)
    records = []
    for image_stem in ids:
        xml_file = os.path.join(root, "Annotations", f"{image_stem}.xml")
        try:
            record = _read_annotation(
                xml_file, root, image_stem, class_index, check_images=check_images
            )
        except DataError as e:
            log.report(e, xml_file)
            continue
        if keep_empty or len(record.labels):
            records.append(record)
    log.summarise(len(ids), list_file)
    return make_dataset(records, class_names, skipped=log.skipped)


def _read_annotation(xml_file, root, image_stem, class_index, *, check_images) -> Record:
    try:
        tree = ET.parse(xml_file)
    except FileNotFoundError as e:
        raise DataError(f"{xml_file}: annotation file is missing") from e
    except ET.ParseError as e:
        raise DataError(f"{xml_file}: malformed XML ({e})") from e
    node = tree.getroot()
    filename = (node.findtext("filename") or f"{image_stem}.jpg").strip()
    image_path = os.path.join(root, "JPEGImages", filename)
    size = node.find("size")
    height = width = None
    if size is not None:
        height = _int_field(size, "height", xml_file, "<size>")
        width = _int_field(size, "width", xml_file, "<size>")
    height, width = check_image_file(image_path, height=height, width=width, decode=check_images)

    boxes, labels, difficult, names = [], [], [], []
    for i, obj in enumerate(node.findall("object")):
        name = (obj.findtext("name") or "").strip()
        what = f"object {i} ({name!r})"
        if name not in class_index:
            raise DataError(f"{xml_file}: {what} has an unknown class name")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{xml_file}: {what} has no <bndbox>")
        xmin, ymin, xmax, ymax = (
            _float_field(bndbox, tag, xml_file, what) for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        labels.append(class_index[name])
        difficult.append(_int_field(obj, "difficult", xml_file, what, default=0) != 0)
        names.append(what)
    boxes = check_boxes(
        np.array(boxes, np.float32), height=height, width=width, file=xml_file, objects=names
    )
    return Record(
        image_id=0,
        height=height,
        width=width,
        boxes=boxes,
        labels=np.array(labels, np.int32),
        difficult=np.array(difficult, bool),
        iscrowd=np.zeros(len(labels), bool),
        path=image_path,
        source_id=image_stem,
    )


def _float_field(node, tag, file, what) -> float:
    text = node.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DataError(f"{file}: {what} has a missing or non-numeric <{tag}> ({text!r})") from None


def _int_field(node, tag, file, what, default=None) -> int:
    text = node.findtext(tag)
    if text is None and default is not None:
        return default
    try:
        return int(float(text))
    except (TypeError, ValueError):
        raise DataError(f"{file}: {what} has a missing or non-numeric <{tag}> ({text!r})") from None


def write_voc(dataset: Dataset, root: str, split: str, *, image_format: str = "png") -> None:
    """Writes `dataset` as one split of a VOC tree under `root` (other splits are kept).

    Records' `source_id` become file stems, so they must be unique across the splits of a
    tree. Images are written by `records.save_image` ("png" keeps synthetic pixels exact, "jpg"
    is VOC's own).
    """
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    stems = []
    for record in dataset.records:
        filename = save_image(record, os.path.join(root, "JPEGImages"), image_format=image_format)
        stem = os.path.splitext(filename)[0]
        _annotation_tree(record, filename, dataset.class_names).write(
            os.path.join(root, "Annotations", f"{stem}.xml")
        )
        stems.append(stem)
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.writelines(f"{s}\n" for s in stems)


def _annotation_tree(record: Record, filename: str, class_names) -> ET.ElementTree:
    node = ET.Element("annotation")
    ET.SubElement(node, "filename").text = filename
    size = ET.SubElement(node, "size")
    ET.SubElement(size, "width").text = str(record.width)
    ET.SubElement(size, "height").text = str(record.height)
    ET.SubElement(size, "depth").text = "3"
    for box, label, diff in zip(record.boxes, record.labels, record.difficult):
        obj = ET.SubElement(node, "object")
        ET.SubElement(obj, "name").text = class_names[int(label)]
        ET.SubElement(obj, "difficult").text = str(int(diff))
        bndbox = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = (float(v) for v in box)
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            # Integral values print as VOC's integers; others keep every digit rather than round.
            ET.SubElement(bndbox, tag).text = f"{value:.10g}"
    ET.indent(node)
    return ET.ElementTree(node)
