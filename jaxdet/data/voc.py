"""Pascal VOC format: `Annotations/*.xml`, `ImageSets/Main/{split}.txt`, `JPEGImages/`.

A VOC tree is one directory holding those three. It is found in two layouts (`find_voc_split`): a
VOCdevkit, whose year folders are trees (`VOCdevkit/VOC2007/Annotations`, splits named
"VOC2007/trainval"), and a plain folder that is a tree itself, as labelImg, CVAT and Label Studio
export (`my_data/Annotations`, splits named "train").

VOC boxes are 1-based inclusive pixel indices; records hold the project's continuous xyxy
(`x1 = xmin - 1, x2 = xmax`, see `jaxdet.data.records`), and the writer maps back.
"""

from __future__ import annotations

import os
import re
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
from jaxdet.errors import JaxdetError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def find_voc_split(root: str, split: str) -> tuple:
    """The VOC tree and list of `split` under `root`, by what is on disk: a split "YEAR/SET"
    ("VOC2007/trainval") is looked for in the VOCdevkit layout first (`root/YEAR/ImageSets/Main/SET.txt`),
    then, like a split "SET", in the plain layout (`root/ImageSets/Main/{split}.txt`).

    Returns:
      (tree, image_set): the directory holding Annotations/, JPEGImages/ and ImageSets/, and the name
      of its list in ImageSets/Main/; `read_voc(tree, image_set)` reads the split.
    Raises:
      FileNotFoundError: neither list exists; the message names both paths (and the year folders
        under `root` that hold the list, when `split` names no year).
    """
    year, _, image_set = split.rpartition("/")
    candidates = ([(os.path.join(root, year), image_set)] if year else []) + [(root, split)]
    for tree, name in candidates:
        if os.path.isfile(_list_file(tree, name)):
            return tree, name
    devkit = _list_file(os.path.join(root, year or "YEAR"), image_set)
    message = (f"VOC split {split!r} not found: neither the VOCdevkit layout's list {devkit} nor the plain "
               f"layout's {_list_file(root, split)} exists")
    years = [] if year or not os.path.isdir(root) else sorted(
        d for d in os.listdir(root) if os.path.isfile(_list_file(os.path.join(root, d), split)))
    if years:
        message += f"; {root} is a VOCdevkit: name the split with its year, e.g. {years[0]}/{split}"
    raise FileNotFoundError(message)


def _list_file(tree: str, image_set: str) -> str:
    return os.path.join(tree, "ImageSets", "Main", f"{image_set}.txt")


class EmptySplit(JaxdetError, ValueError):
    """A split list that names no image."""


# A line of VOC's per-class lists ("aeroplane_train.txt"): an image name, then 1, 0 or -1 (the class is in
# the image, only as difficult, or not).
_NAME_FLAG = re.compile(r"^(.*\S)\s+(-1|0|1)$")


def _image_stems(list_file: str) -> list:
    """The image names of a split list, one a line: the whole line, stripped (a name may hold spaces:
    "IMG 0003"), or, for a line of VOC's "name flag" format whose whole text names no annotation, the
    name before the flag.

    Raises:
      EmptySplit: the list names no image.
    """
    with open(list_file, encoding="utf-8-sig") as f:  # editors may start the list with a byte-order mark
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise EmptySplit(f"the split list {list_file} is empty: it names no image. Write the image names into it, "
                         "one a line, without extension (e.g. IMG_0001 for Annotations/IMG_0001.xml)")
    annotations = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(list_file))), "Annotations")
    stems = []
    for line in lines:
        flagged = _NAME_FLAG.match(line)
        if flagged and not os.path.isfile(os.path.join(annotations, f"{line}.xml")):
            line = flagged.group(1)
        stems.append(line)
    return stems


def read_voc_class_names(root: str, split: str) -> tuple:
    """The object class names in the annotations of `split` of the VOC tree `root`, sorted, each once:
    the class list of a dataset that does not give one. Annotations that are missing or malformed, and
    objects without a name, are left for `read_voc` to report.

    Raises:
      FileNotFoundError: the split's list is missing.
    """
    list_file = _list_file(root, split)
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"VOC split list not found: {list_file}")
    names = set()
    for image_stem in _image_stems(list_file):
        try:
            tree = ET.parse(os.path.join(root, "Annotations", f"{image_stem}.xml"))
        except (OSError, ET.ParseError):
            continue
        names.update(name for name in ((obj.findtext("name") or "").strip()
                                       for obj in tree.getroot().findall("object")) if name)
    return tuple(sorted(names))


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
      root: the tree: a VOCdevkit's year directory (`VOCdevkit/VOC2007`) or a plain folder with
        Annotations/, JPEGImages/ and ImageSets/ (`find_voc_split` finds it).
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
    list_file = _list_file(root, split)
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"VOC split list not found: {list_file}")
    ids = _image_stems(list_file)
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
            raise DataError(f"{xml_file}: {what} has an unknown class name, not one of the dataset's "
                            f"{len(class_index)} classes ({', '.join(class_index)})")
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
