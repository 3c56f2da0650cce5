"""A synthetic detection dataset: coloured shapes on noisy backgrounds, with exact boxes.

Image `i` of a set is drawn from its own generator seeded by `(seed, i)`, so a set is the same
on every machine, any prefix of it is the same whatever the set's length, and sets with
different seeds are independent (train and held-out). Objects are painted one over another;
each box is the extent of the pixels its object still shows (boxes are exact, in the
project's continuous convention: columns c0..c1 give x1 = c0, x2 = c1 + 1), and a placement
that would hide more than `max_occlusion` of an earlier object is redrawn.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import numpy as np

from jaxdet.data.records import Dataset, Record, make_dataset

# Each shape is a test on coordinates (u, v) in [-1, 1]^2 across the object's box.
_SQRT3 = np.sqrt(3.0)
SHAPES = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0),
    "triangle": lambda u, v: np.abs(u) <= (v + 1.0) / 2.0,  # apex up, base along the bottom
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
    "cross": lambda u, v: (np.abs(u) <= 1.0 / 3.0) | (np.abs(v) <= 1.0 / 3.0),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3),
    "hexagon": lambda u, v: _SQRT3 * np.abs(u) + np.abs(v) <= _SQRT3,
}
DEFAULT_CLASSES = ("circle", "square", "triangle")


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """What the generator draws.

    Attributes:
      image_size: (height, width) of every image.
      classes: shape names from `SHAPES`, label k = classes[k].
      min_objects, max_objects: objects per image (fewer when placements keep failing).
      min_object_size, max_object_size: the longer side of an object's box, in pixels.
      max_aspect: boxes' width/height drawn in [1/max_aspect, max_aspect] (1: no stretch).
      max_occlusion: the largest fraction of an object later objects may cover.
      noise_std: Gaussian pixel noise over the whole image (0-255 scale).
      min_contrast: least mean absolute RGB difference between an object's colour and the
        background's and other objects' (0-255 scale).
    """

    image_size: tuple = (128, 128)
    classes: tuple = DEFAULT_CLASSES
    min_objects: int = 1
    max_objects: int = 4
    min_object_size: int = 16
    max_object_size: int = 80
    max_aspect: float = 1.0
    max_occlusion: float = 0.25
    noise_std: float = 10.0
    min_contrast: float = 60.0

    def __post_init__(self):
        # Configs and command lines hand over lists; the dataset's class names are a tuple.
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        unknown = [c for c in self.classes if c not in SHAPES]
        if unknown or not self.classes:
            raise ValueError(f"classes must be names from {tuple(SHAPES)}, got {self.classes}")
        height, width = self.image_size
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if not 2 <= self.min_object_size <= self.max_object_size <= min(height, width):
            raise ValueError(
                "need 2 <= min_object_size <= max_object_size <= the image's shorter side, got "
                f"{self.min_object_size}, {self.max_object_size}, image {self.image_size}"
            )
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")
        if not 0.0 <= self.max_occlusion < 1.0:
            raise ValueError(f"max_occlusion must be in [0, 1), got {self.max_occlusion}")


_PLACEMENT_TRIES = 20


def draw_image(config: ShapesConfig, rng: np.random.Generator) -> tuple:
    """Draws one image.

    Returns:
      (image [H, W, 3] uint8 RGB, boxes [M, 4] float32 xyxy, labels [M] int32), M >= 1.
    """
    height, width = config.image_size
    background = rng.uniform(0, 255, 3)
    owner = np.full((height, width), -1, np.int32)  # index of the object each pixel shows
    colours, labels, areas = [], [], []
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        label = int(rng.integers(len(config.classes)))
        colour = _contrasting_colour(rng, [background] + colours, config.min_contrast)
        for _ in range(_PLACEMENT_TRIES):
            placed = _place(config, rng, config.classes[label], owner, areas)
            if placed is not None:
                owner = placed
                colours.append(colour)
                labels.append(label)
                areas.append(int(np.sum(owner == len(labels) - 1)))
                break
    image = np.empty((height, width, 3), np.float32)
    image[:] = background
    for k, colour in enumerate(colours):
        image[owner == k] = colour
    if config.noise_std > 0:
        image += rng.normal(0.0, config.noise_std, image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    boxes = np.array([_pixel_extent(owner == k) for k in range(len(labels))], np.float32)
    return image, boxes.reshape(-1, 4), np.array(labels, np.int32)


def _contrasting_colour(rng, others, min_contrast) -> np.ndarray:
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        if all(np.mean(np.abs(colour - o)) >= min_contrast for o in others):
            return colour
    # Past a few objects at high contrast there may be no such colour: take the farthest tried.
    candidates = rng.uniform(0, 255, (256, 3))
    distance = np.min([np.mean(np.abs(candidates - o), axis=1) for o in others], axis=0)
    return candidates[int(np.argmax(distance))]


def _place(config, rng, shape, owner, areas):
    """Paints one object onto a copy of `owner`; None if it would hide too much of another."""
    height, width = owner.shape
    size = rng.uniform(config.min_object_size, config.max_object_size)
    aspect = np.exp(rng.uniform(-np.log(config.max_aspect), np.log(config.max_aspect)))
    box_w = max(2, int(round(size * min(1.0, aspect))))
    box_h = max(2, int(round(size * min(1.0, 1.0 / aspect))))
    x0 = int(rng.integers(0, width - box_w + 1))
    y0 = int(rng.integers(0, height - box_h + 1))
    # Pixel centres mapped to [-1, 1] across the box.
    u = (np.arange(box_w) + 0.5) / box_w * 2.0 - 1.0
    v = (np.arange(box_h) + 0.5) / box_h * 2.0 - 1.0
    mask = SHAPES[shape](u[None, :], v[:, None])  # [box_h, box_w]
    if not mask.any():
        return None
    covered = owner[y0:y0 + box_h, x0:x0 + box_w][mask]
    remaining = np.bincount(covered[covered >= 0], minlength=len(areas))
    for k, area in enumerate(areas):
        visible = np.sum(owner == k) - remaining[k]
        if visible < (1.0 - config.max_occlusion) * area:
            return None
    placed = owner.copy()
    placed[y0:y0 + box_h, x0:x0 + box_w][mask] = len(areas)
    return placed


def _pixel_extent(mask: np.ndarray) -> tuple:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


def make_shapes(num_images: int, *, seed: int, config: ShapesConfig = ShapesConfig()) -> Dataset:
    """Generates a shapes set in memory (no files).

    Args:
      num_images: how many images.
      seed: the set's seed; image i depends only on (seed, i).
      config: what to draw.
    Returns:
      Dataset of records holding their images ([H, W, 3] uint8), `source_id` "s{seed}_{i:06d}".
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    height, width = config.image_size
    records = []
    for i in range(num_images):
        image, boxes, labels = draw_image(config, np.random.default_rng([seed, i]))
        records.append(Record(
            image_id=i,
            height=height,
            width=width,
            boxes=boxes,
            labels=labels,
            difficult=np.zeros(len(labels), bool),
            iscrowd=np.zeros(len(labels), bool),
            image=image,
            source_id=f"s{seed}_{i:06d}",
        ))
    return make_dataset(records, config.classes)


def write_shapes(
    root: str,
    splits: Mapping[str, tuple],
    *,
    format: str = "voc",
    config: ShapesConfig = ShapesConfig(),
) -> dict:
    """Generates shapes sets and writes them to disk so the VOC or COCO readers can read them.

    Args:
      root: output directory.
      splits: split name -> (num_images, seed), e.g. {"train": (2000, 0), "test": (300, 1)}.
      format: "voc" (one tree: `root/Annotations`, `root/ImageSets/Main/{split}.txt`,
        `root/JPEGImages/*.png`) or "coco" (`root/annotations/instances_{split}.json` and
        `root/{split}/*.png`).
      config: what to draw.
    Returns:
      split -> what to pass the reader: the VOC root, or (annotation file, image directory).
    """
    from jaxdet.data.coco import write_coco
    from jaxdet.data.voc import write_voc

    if format not in ("voc", "coco"):
        raise ValueError(f"format must be 'voc' or 'coco', got {format!r}")
    seeds = [seed for _, seed in splits.values()]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"splits need distinct seeds (file names come from them), got {seeds}")
    written = {}
    for split, (num_images, seed) in splits.items():
        dataset = make_shapes(num_images, seed=seed, config=config)
        if format == "voc":
            write_voc(dataset, root, split, image_format="png")
            written[split] = root
        else:
            annotation_file = os.path.join(root, "annotations", f"instances_{split}.json")
            image_dir = os.path.join(root, split)
            write_coco(dataset, annotation_file, image_dir, image_format="png")
            written[split] = (annotation_file, image_dir)
    return written
