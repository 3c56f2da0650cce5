"""From a config's `data` section to datasets and input pipelines (what training and detection read).

`config.data.dataset` picks the source:
  "shapes"  the synthetic set (`jaxdet.data.shapes`): generated in memory from `data.shapes`,
            `num_train`/`num_test` and `train_seed`/`test_seed`, or read from `data.root` when it
            is set (a VOC tree that `jaxdet make-shapes` wrote, splits "train" and "test").
  "voc"     VOC XML files at `data.root`, in either layout (`jaxdet.data.find_voc_split`): a VOCdevkit,
            `train_splits` like ("VOC2007/trainval", "VOC2012/trainval") joined, `test_split` like
            "VOC2007/test"; or a plain folder (Annotations/, JPEGImages/, ImageSets/Main/), splits
            like "train" and "test".
  "coco"    a COCO tree at `data.root`: `annotations/instances_{split}.json` and images in
            `{split}/`, for each of `train_splits` (joined) and `test_split` ("train" and "test"
            when the config has none: the splits `jaxdet make-shapes --format coco` writes).

The class list (label k is the k-th name) is `data.classes` when it is given; else a shapes
config's `data.shapes.classes`, VOC's 20 for VOCdevkit splits (that name a year), the names
found in the training annotations (sorted) for a plain VOC folder, and the categories of the
training JSON (in id order) for COCO. `model.num_classes = 0` means "as many as the class list";
training settles both into the run's config (`with_class_names`), and the run's
class_names.json is what evaluation and prediction read back.

A Fast R-CNN config (`model.kind = "fast_rcnn"`) also names `data.proposals`, an `.npz` of
[P, 4] boxes per image `source_id` (`jaxdet.data.save_proposals`), and `data.max_proposals`;
its batches then carry "proposals" and "proposal_valid".
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import ml_collections

from jaxdet.data.coco import read_coco
from jaxdet.data.pipeline import InputPipeline
from jaxdet.data.precomputed_proposals import attach_proposals
from jaxdet.data.records import DataError, Dataset, concat_datasets, limit_boxes
from jaxdet.data.shapes import ShapesConfig, make_shapes, write_shapes
from jaxdet.data.voc import VOC_CLASSES, find_voc_split, read_voc, read_voc_class_names
from jaxdet.errors import JaxdetError

DATASETS = ("shapes", "voc", "coco")
SPLITS = ("train", "test")
FROM_DATA = 0  # model.num_classes: as many as the class list


class DatasetNotFound(JaxdetError, FileNotFoundError):
    """The dataset a config names is not on disk; the message says where it was looked for."""


def _get(data: ml_collections.ConfigDict, name: str, default):
    return data[name] if name in data else default


def _require(path: str, what: str, dataset: str) -> None:
    if not os.path.exists(path):
        raise DatasetNotFound(
            f"the {dataset} dataset was not found: {what} {path!r} does not exist. Point "
            f"config.data.root at the directory that holds it"
            + (" (for the synthetic shapes, `jaxdet make-shapes --out DIR` writes one, or leave "
               "data.root empty to generate them in memory)" if dataset == "shapes" else "")
            + "; nothing is ever downloaded.")


def _shapes_config(data: ml_collections.ConfigDict) -> ShapesConfig:
    return ShapesConfig(**dict(data.shapes))


def load_dataset(config: ml_collections.ConfigDict, split: str, *, proposals: bool = True) -> Dataset:
    """The training ("train") or held-out ("test") Dataset of `config.data`; a Fast R-CNN config's with
    the proposals of `data.proposals` unless `proposals` is False (the images, to compute them).

    Raises:
      DatasetNotFound: `data.root` (or a split's list or annotation file) is missing.
      ValueError: an unknown `data.dataset` or split.
    """
    dataset = _read(config, split)
    if config.model.kind == "fast_rcnn" and proposals:
        path = _get(config.data, "proposals", "")
        if not path:
            raise DatasetNotFound("Fast R-CNN trains and detects on proposals given with the images: set "
                                  "config.data.proposals=FILE, an .npz of [P, 4] xyxy boxes per image source_id "
                                  "(jaxdet.data.save_proposals writes one, e.g. from a trained RPN).")
        _require(path, "the proposals file", config.data.dataset)
        dataset = attach_proposals(dataset, path)
    return dataset


def shapes_splits(config: ml_collections.ConfigDict) -> dict:
    """{"train": (num_train, train_seed), "test": (num_test, test_seed)} of a shapes config's `data`."""
    data = config.data
    return {"train": (int(data.num_train), int(data.train_seed)), "test": (int(data.num_test), int(data.test_seed))}


def write_shapes_dataset(config: ml_collections.ConfigDict, out: str, *, format: str = "voc") -> dict:
    """Writes the shapes sets of `config.data` (train and held-out test) into `out`, in the "voc" or
    "coco" layout the readers take; returns the splits' locations (see `jaxdet.data.write_shapes`).

    Raises:
      ValueError: not a shapes config.
    """
    if config.data.dataset != "shapes":
        raise ValueError(f"writing the shapes dataset needs a shapes config (config.data.dataset=shapes), got "
                         f"{config.data.dataset!r}")
    return write_shapes(out, shapes_splits(config), format=format, config=_shapes_config(config.data))


def _split_names(data: ml_collections.ConfigDict, split: str) -> tuple:
    return tuple(_get(data, "train_splits", ("train",))) if split == "train" else (_get(data, "test_split", "test"),)


def _read(config: ml_collections.ConfigDict, split: str) -> Dataset:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = config.data
    kind = data.dataset
    if kind not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {kind!r}")
    root = _get(data, "root", "")
    checks = dict(on_error=_get(data, "on_error", "raise"), check_images=bool(_get(data, "check_images", False)))
    if kind == "shapes":
        shapes = _shapes_config(data)
        declared_class_names(config)  # data.classes, when given, must be the shapes' classes
        if not root:
            count, seed = shapes_splits(config)[split]
            return make_shapes(count, seed=seed, config=shapes)
        _require(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "the split list", kind)
        return read_voc(root, split, class_names=shapes.classes, **checks)
    if not root:
        raise DatasetNotFound(f"the {kind} dataset needs a location: set config.data.root=DIR "
                              f"(the {'VOC-format' if kind == 'voc' else 'COCO'} directory); nothing is "
                              "ever downloaded.")
    _require(root, "data.root", kind)
    names = _split_names(data, split)
    if kind == "voc":
        class_names = _voc_class_names(config)
        parts = [read_voc(*_voc_split(root, name), class_names=class_names, **checks) for name in names]
    else:
        given = tuple(_get(data, "classes", ()))
        parts = []
        for name in names:
            annotation_file = os.path.join(root, "annotations", f"instances_{name}.json")
            _require(annotation_file, f"the annotations of {name!r}", kind)
            part = read_coco(annotation_file, os.path.join(root, name), **checks, keep_empty=split == "test")
            if given and part.class_names != given:
                raise ValueError(f"{annotation_file}: its categories (in id order) {part.class_names} are not "
                                 f"config.data.classes {given}; a COCO file's categories are its class list, so "
                                 "leave data.classes empty or give the same names in that order")
            parts.append(part)
    dataset = parts[0] if len(parts) == 1 else concat_datasets(*parts)
    if len(dataset) == 0:
        raise DataError(f"the {kind} {split} split {names} under {root!r} has no usable images")
    return dataset


def _voc_split(root: str, split: str) -> tuple:
    """`find_voc_split`, its error a DatasetNotFound that says which config keys name the splits."""
    try:
        return find_voc_split(root, split)
    except FileNotFoundError as e:
        raise DatasetNotFound(f"{e}. config.data.train_splits and config.data.test_split name lists in "
                              "ImageSets/Main/: \"train\" for ImageSets/Main/train.txt, \"VOC2007/trainval\" in a "
                              "VOCdevkit") from None


def _voc_class_names(config: ml_collections.ConfigDict) -> tuple:
    """The declared class list, else the names in the annotations of the training splits, sorted."""
    declared = declared_class_names(config)
    if declared:
        return declared
    root, splits = config.data.root, _split_names(config.data, "train")
    found = set()
    for name in splits:
        found.update(read_voc_class_names(*_voc_split(root, name)))
    if not found:
        raise DataError(f"no object in the annotations of the training splits {splits} under {root!r} names a "
                        "class, so there is no class list: give objects a <name>, or set config.data.classes")
    return tuple(sorted(found))


def declared_class_names(config: ml_collections.ConfigDict) -> tuple:
    """The class list `config` gives without reading annotations: `data.classes`; else a shapes
    config's `data.shapes.classes`, or VOC's 20 when every training split names a VOCdevkit year
    ("VOC2007/trainval"); else () (the training annotations tell).

    Raises:
      ValueError: a shapes config whose `data.classes` are not its `data.shapes.classes`.
    """
    data = config.data
    given = tuple(_get(data, "classes", ()))
    if data.dataset == "shapes":
        shapes = tuple(data.shapes.classes)
        if given and given != shapes:
            raise ValueError(f"config.data.classes {given} are not the shapes' classes {shapes}: the synthetic "
                             "set's classes are config.data.shapes.classes")
        return shapes
    if given:
        return given
    if data.dataset == "voc" and all("/" in name for name in _split_names(data, "train")):
        return VOC_CLASSES
    return ()


def model_num_classes(config: ml_collections.ConfigDict) -> int:
    """K, the model's object classes: `model.num_classes`, or when it is 0 (`FROM_DATA`) the length
    of the config's declared class list (`declared_class_names`).

    Raises:
      ValueError: 0, and only the training annotations hold the class list (training settles it
        first: `with_class_names`).
    """
    num_classes = int(config.model.num_classes)
    if num_classes != FROM_DATA:
        return num_classes
    declared = declared_class_names(config)
    if not declared:
        raise ValueError("config.model.num_classes is 0 (as many as the class list) but the config gives no "
                         "class list: set config.data.classes or config.model.num_classes (a training run finds "
                         "the classes in its annotations and stores them in its config.json and class_names.json)")
    return len(declared)


def with_class_names(config: ml_collections.ConfigDict, class_names: Sequence[str]) -> ml_collections.ConfigDict:
    """A copy of `config` with its class list settled to `class_names` (the training data's, or a
    run's class_names.json): `data.classes` set to them, and `model.num_classes` their number.

    Raises:
      ValueError: `model.num_classes` (unless 0) or a non-empty `data.classes` disagree with
        `class_names`; the message names both.
    """
    class_names = tuple(class_names)
    given = tuple(_get(config.data, "classes", ()))
    if given and given != class_names:
        raise ValueError(f"config.data.classes {given} are not the class list {class_names} of the data or run; "
                         "label k is the k-th name, so they must be the same names in the same order")
    num_classes = int(config.model.num_classes)
    if num_classes not in (FROM_DATA, len(class_names)):
        raise ValueError(f"config.model.num_classes is {num_classes} but the class list has {len(class_names)} "
                         f"classes {class_names}: set config.model.num_classes={len(class_names)}, or 0 to follow "
                         "the class list")
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.classes = class_names
    config.model.num_classes = len(class_names)
    return config


def check_num_classes(config: ml_collections.ConfigDict, dataset: Dataset) -> None:
    """ValueError when the model's classes (`model_num_classes`) are not the dataset's."""
    num_classes = model_num_classes(config)
    if num_classes != dataset.num_classes:
        raise ValueError(f"config.model.num_classes is {num_classes} but the dataset has "
                         f"{dataset.num_classes} classes {dataset.class_names}; set "
                         f"config.model.num_classes={dataset.num_classes}, or 0 to follow the class list")


def _max_proposals(config: ml_collections.ConfigDict) -> int | None:
    return int(config.data.max_proposals) if config.model.kind == "fast_rcnn" else None


def _training_images(config: ml_collections.ConfigDict, dataset: Dataset) -> Dataset:
    """`dataset` less the images with more boxes to train on than `data.max_boxes`, under `data.on_error`
    (`jaxdet.data.records.limit_boxes`: an error naming the first, or each skipped and counted); warns
    when no image is left with a box to train on."""
    data = config.data
    names, keep_difficult = _split_names(data, "train"), bool(_get(data, "use_difficult", False))
    where = f"the training split {', '.join(names)} of {_get(data, 'root', '') or 'shapes generated in memory'}"
    dataset = limit_boxes(dataset, max_boxes=int(data.max_boxes), keep_difficult=keep_difficult,
                          on_error=_get(data, "on_error", "raise"), source=where)
    if not any(record.targets(keep_difficult).any() for record in dataset.records):
        difficult = not keep_difficult and any(record.difficult.any() for record in dataset.records)
        warnings.warn(f"{where} has no object to train on: none of its {len(dataset)} images has a box that is not "
                      f"crowd{'' if keep_difficult else ' or difficult'}, so the detector would learn only "
                      "background. Check that its annotations hold objects and that config.data.train_splits "
                      "names the right lists"
                      + (", or set config.data.use_difficult=true to train on the difficult ones" if difficult else ""),
                      UserWarning, stacklevel=3)
    return dataset


def train_pipeline(config: ml_collections.ConfigDict, dataset: Dataset, *, num_shards: int = 1,
                   shard_index: int = 0) -> InputPipeline:
    """Shuffled, flipped, full batches of `config.train.batch_size` (global) images of `dataset`, checked
    for training first (`_training_images`); an image that cannot be read is handled by `data.on_error`."""
    data = config.data
    batch_size = int(config.train.batch_size)
    if batch_size % num_shards:
        raise ValueError(f"train.batch_size {batch_size} is not divisible by the {num_shards} shards")
    return InputPipeline(_training_images(config, dataset), batch_size=batch_size // num_shards,
                         max_boxes=data.max_boxes, min_size=data.min_size, max_size=data.max_size,
                         normalization=data.normalization, shuffle=True, flip=data.flip, drop_remainder=True,
                         keep_difficult=_get(data, "use_difficult", False), seed=config.train.seed,
                         num_shards=num_shards, shard_index=shard_index, max_proposals=_max_proposals(config),
                         on_error=_get(data, "on_error", "raise"), cache_images=bool(_get(data, "cache_images", False)))


def eval_pipeline(config: ml_collections.ConfigDict, dataset: Dataset, *, batch_size: int | None = None,
                  num_shards: int = 1, shard_index: int = 0) -> InputPipeline:
    """Every image once in dataset order (the last batch filled with `image_id` -1), no flip;
    `batch_size` images per shard (default `eval.batch_size`, else `train.batch_size`)."""
    data = config.data
    if batch_size is None:
        batch_size = int(config.eval.batch_size) if "eval" in config else int(config.train.batch_size)
    # Evaluation reads the ground truth from the records; batches only need room for it.
    most = max((len(r.labels) for r in dataset.records), default=0)
    return InputPipeline(dataset, batch_size=batch_size, max_boxes=max(1, most), min_size=data.min_size,
                         max_size=data.max_size, normalization=data.normalization, shuffle=False, flip=False,
                         drop_remainder=False, num_shards=num_shards, shard_index=shard_index,
                         max_proposals=_max_proposals(config), on_error=_get(data, "on_error", "raise"))
