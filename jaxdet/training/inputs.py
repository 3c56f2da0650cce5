"""From a config's `data` section to datasets and input pipelines (what the training loop reads).

`config.data.dataset` picks the source:
  "shapes"  the synthetic set (`jaxdet.data.shapes`): generated in memory from `data.shapes`,
            `num_train`/`num_test` and `train_seed`/`test_seed`, or read from `data.root` when it
            is set (a VOC tree that `jaxdet make-shapes` wrote, splits "train" and "test").
  "voc"     a VOCdevkit at `data.root`; `train_splits` like ("VOC2007/trainval", "VOC2012/trainval")
            are joined, `test_split` like "VOC2007/test".
  "coco"    a COCO tree at `data.root`: `annotations/instances_{split}.json` and images in
            `{split}/`, for each of `train_splits` (joined) and `test_split` ("train" and "test"
            when the config has none: the splits `jaxdet make-shapes --format coco` writes).

A Fast R-CNN config (`model.kind = "fast_rcnn"`) also names `data.proposals`, an `.npz` of
[P, 4] boxes per image `source_id` (`jaxdet.data.save_proposals`), and `data.max_proposals`;
its batches then carry "proposals" and "proposal_valid".
"""

from __future__ import annotations

import os

import ml_collections

from jaxdet.data import (DataError, Dataset, InputPipeline, ShapesConfig, VOC_CLASSES, attach_proposals,
                         concat_datasets, make_shapes, read_coco, read_voc, write_shapes)

DATASETS = ("shapes", "voc", "coco")
SPLITS = ("train", "test")


class DatasetNotFound(FileNotFoundError):
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


def load_dataset(config: ml_collections.ConfigDict, split: str) -> Dataset:
    """The training ("train") or held-out ("test") Dataset of `config.data`.

    Raises:
      DatasetNotFound: `data.root` (or a split's list or annotation file) is missing.
      ValueError: an unknown `data.dataset` or split.
    """
    dataset = _read(config, split)
    if config.model.kind == "fast_rcnn":
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
        if not root:
            count, seed = shapes_splits(config)[split]
            return make_shapes(count, seed=seed, config=shapes)
        _require(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "the split list", kind)
        return read_voc(root, split, class_names=shapes.classes, **checks)
    if not root:
        raise DatasetNotFound(f"the {kind} dataset needs a location: set config.data.root=DIR "
                              f"(the {'VOCdevkit' if kind == 'voc' else 'COCO'} directory); nothing is "
                              "ever downloaded.")
    _require(root, "data.root", kind)
    names = tuple(_get(data, "train_splits", ("train",))) if split == "train" else (_get(data, "test_split", "test"),)
    parts = []
    for name in names:
        if kind == "voc":
            year, _, image_set = name.partition("/")
            year_root = os.path.join(root, year)
            _require(os.path.join(year_root, "ImageSets", "Main", f"{image_set}.txt"),
                     f"the split list of {name!r}", kind)
            parts.append(read_voc(year_root, image_set, class_names=VOC_CLASSES, **checks))
        else:
            annotation_file = os.path.join(root, "annotations", f"instances_{name}.json")
            _require(annotation_file, f"the annotations of {name!r}", kind)
            parts.append(read_coco(annotation_file, os.path.join(root, name), **checks,
                                   keep_empty=split == "test"))
    dataset = parts[0] if len(parts) == 1 else concat_datasets(*parts)
    if len(dataset) == 0:
        raise DataError(f"the {kind} {split} split {names} under {root!r} has no usable images")
    return dataset


def check_num_classes(config: ml_collections.ConfigDict, dataset: Dataset) -> None:
    """ValueError when the model's `num_classes` differs from the dataset's."""
    if config.model.num_classes != dataset.num_classes:
        raise ValueError(f"model.num_classes is {config.model.num_classes} but the dataset has "
                         f"{dataset.num_classes} classes {dataset.class_names}; set "
                         f"config.model.num_classes={dataset.num_classes}")


def _max_proposals(config: ml_collections.ConfigDict) -> int | None:
    return int(config.data.max_proposals) if config.model.kind == "fast_rcnn" else None


def train_pipeline(config: ml_collections.ConfigDict, dataset: Dataset, *, num_shards: int = 1,
                   shard_index: int = 0) -> InputPipeline:
    """Shuffled, flipped, full batches of `config.train.batch_size` (global) images."""
    data = config.data
    batch_size = int(config.train.batch_size)
    if batch_size % num_shards:
        raise ValueError(f"train.batch_size {batch_size} is not divisible by the {num_shards} shards")
    return InputPipeline(dataset, batch_size=batch_size // num_shards, max_boxes=data.max_boxes,
                         min_size=data.min_size, max_size=data.max_size, normalization=data.normalization,
                         shuffle=True, flip=data.flip, drop_remainder=True,
                         keep_difficult=_get(data, "use_difficult", False), seed=config.train.seed,
                         num_shards=num_shards, shard_index=shard_index, max_proposals=_max_proposals(config))


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
                         max_proposals=_max_proposals(config))
