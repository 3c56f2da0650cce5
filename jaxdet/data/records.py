"""Records, datasets and the bad-data policy shared by every reader.

Box convention (the whole project's): `(x1, y1, x2, y2)` in continuous pixel coordinates, where
pixel `(row r, col c)` covers `[c, c + 1) x [r, r + 1)`. A box that covers columns `c0..c1`
inclusive is `x1 = c0, x2 = c1 + 1`, so width is `x2 - x1` with no `+ 1`. Pascal VOC's 1-based
inclusive `xmin..xmax` becomes `x1 = xmin - 1, x2 = xmax`; COCO's `[x, y, w, h]` becomes
`x1 = x, x2 = x + w`. Horizontal flip is then exactly `x1' = W - x2, x2' = W - x1`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from jaxdet.errors import JaxdetError

ON_ERROR_CHOICES = ("raise", "skip")

# Annotation tools write boxes a fraction of a pixel outside the image (VOC's `xmin = 0`, COCO's
# float sums): within this many pixels a box is clipped to the image; further out it is bad data.
BOX_TOLERANCE = 1.0


class DataError(JaxdetError, ValueError):
    """Bad data: the message names the file and, where there is one, the object."""

    prefix = "bad data: "
    advice = (". Fix or remove that file, or set --config.data.on_error=skip to leave out the images with bad "
              "data (each is named in a warning, and counted); --config.data.check_images=true also decodes "
              "every image while the dataset is read, to find all the corrupt ones before training.")


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One image and its ground truth.

    Attributes:
      image_id: index of the record in its dataset (what batches carry as `image_id`).
      height, width: original image size in pixels.
      boxes: [M, 4] float32 xyxy in original pixels (see the module docstring).
      labels: [M] int32 in [0, num_classes).
      difficult: [M] bool, VOC's flag (dropped from training by default, ignored by VOC eval).
      iscrowd: [M] bool, COCO's flag (never a training target).
      path: image file, or None when `image` is given.
      image: [H, W, 3] uint8 RGB held in memory (synthetic data), or None.
      source_id: the image's name in its source format (VOC file stem, COCO image id).
      proposals: [P, 4] float32 xyxy in original pixels, RoIs given with the image (Fast R-CNN
        with external proposals, see `jaxdet.data.precomputed_proposals`), or None.
    """

    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    iscrowd: np.ndarray
    path: str | None = None
    image: np.ndarray | None = None
    source_id: str | int | None = None
    proposals: np.ndarray | None = None

    def __post_init__(self):
        m = len(self.labels)
        shapes = {
            "boxes": (self.boxes.shape, (m, 4)),
            "difficult": (self.difficult.shape, (m,)),
            "iscrowd": (self.iscrowd.shape, (m,)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"Record {self.image_id}: {name} has shape {got}, expected {want}")
        proposals = self.proposals
        if proposals is not None and (proposals.ndim != 2 or proposals.shape[1] != 4):
            raise ValueError(
                f"Record {self.image_id}: proposals has shape {proposals.shape}, expected [P, 4]"
            )
        if self.path is None and self.image is None:
            raise ValueError(f"Record {self.image_id}: needs a path or an in-memory image")

    @property
    def name(self) -> str:
        """How messages refer to this image: its file, else its source id."""
        return self.path if self.path is not None else f"image {self.source_id!r}"

    def targets(self, keep_difficult: bool = False) -> np.ndarray:
        """[M] bool: the boxes training learns from (not crowd, and not difficult unless `keep_difficult`)."""
        return ~self.iscrowd & (keep_difficult | ~self.difficult)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A sequence of `Record`s with its class names.

    Attributes:
      records: tuple of Record, `records[i].image_id == i`.
      class_names: tuple of str, label `k` is `class_names[k]`.
      category_ids: tuple of int, the COCO category id of each label (`label + 1` for datasets
        that have none), for COCO result files.
      skipped: tuple of (file, reason) for the images the `on_error="skip"` policy dropped.
      annotation_file: the COCO instances file the records were read from (`read_coco`), whose
        image ids are the records' `source_id`; None otherwise.
    """

    records: tuple
    class_names: tuple
    category_ids: tuple
    skipped: tuple = ()
    annotation_file: str | None = None

    def __post_init__(self):
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(
                f"category_ids has {len(self.category_ids)} entries for "
                f"{len(self.class_names)} class_names"
            )
        for i, record in enumerate(self.records):
            if record.image_id != i:
                raise ValueError(f"records[{i}] has image_id {record.image_id}; expected {i}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def make_dataset(
    records: Sequence[Record],
    class_names: Sequence[str],
    *,
    category_ids: Sequence[int] | None = None,
    skipped: Sequence[tuple] = (),
    annotation_file: str | None = None,
) -> Dataset:
    """Builds a Dataset, numbering `records` 0..N-1 in the order given."""
    records = tuple(dataclasses.replace(r, image_id=i) for i, r in enumerate(records))
    if category_ids is None:
        category_ids = tuple(range(1, len(class_names) + 1))
    return Dataset(records, tuple(class_names), tuple(int(c) for c in category_ids), tuple(skipped),
                   annotation_file)


def concat_datasets(*datasets: Dataset) -> Dataset:
    """Joins datasets with the same classes (VOC 07+12), renumbering `image_id`."""
    if not datasets:
        raise ValueError("concat_datasets needs at least one dataset")
    first = datasets[0]
    for d in datasets[1:]:
        if d.class_names != first.class_names or d.category_ids != first.category_ids:
            raise ValueError("concat_datasets: datasets have different classes")
    records = [r for d in datasets for r in d.records]
    skipped = [s for d in datasets for s in d.skipped]
    files = {d.annotation_file for d in datasets}
    return make_dataset(
        records, first.class_names, category_ids=first.category_ids, skipped=skipped,
        annotation_file=files.pop() if len(files) == 1 else None,
    )


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error (config.data.on_error) must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


class BadDataLog:
    """Applies the bad-data policy: raise at the first problem, or warn and count skips."""

    def __init__(self, on_error: str):
        check_on_error(on_error)
        self.on_error = on_error
        self.skipped: list[tuple[str, str]] = []
        self.skipped_images = 0

    def report(self, error: DataError, file: str, *, image: bool = True) -> None:
        """Raises `error` under "raise"; under "skip" warns and records what was skipped.

        Args:
          image: whether a whole image is dropped (False: an annotation belonging to none).
        """
        if self.on_error == "raise":
            raise error
        warnings.warn(f"skipping: {error}", stacklevel=3)
        self.skipped.append((file, str(error)))
        self.skipped_images += int(image)

    def summarise(self, total: int, source: str) -> None:
        if self.skipped:
            others = len(self.skipped) - self.skipped_images
            extra = f" and {others} annotations without an image" if others else ""
            warnings.warn(
                f"{source}: skipped {self.skipped_images} of {total} images{extra} "
                "with bad data",
                stacklevel=3,
            )


def limit_boxes(dataset: Dataset, *, max_boxes: int, keep_difficult: bool = False, on_error: str = "raise",
                source: str = "the dataset") -> Dataset:
    """`dataset` for training with `max_boxes` ground-truth slots per image: an image with more boxes to
    train on (`Record.targets`) is bad data under `on_error` ("skip": left out, named in a warning and
    counted as coming from `source`).

    Raises:
      DataError (on_error "raise"): the first such image, named with its count, how many there are,
        and the `config.data.max_boxes` that holds every image.
    """
    counts = np.array([int(r.targets(keep_difficult).sum()) for r in dataset.records], np.int64)  # [N]
    over = np.flatnonzero(counts > max_boxes)
    if not len(over):
        return dataset
    log = BadDataLog(on_error)
    for i in over:
        record = dataset.records[i]
        log.report(DataError(
            f"{record.name}: {counts[i]} boxes to train on, more than config.data.max_boxes={max_boxes}, the "
            f"ground-truth slots per image ({len(over)} of the {len(dataset)} training images have more, at most "
            f"{counts.max()}): set config.data.max_boxes={counts.max()} to train on them all"), record.name)
    log.summarise(len(dataset), source)
    kept = [r for i, r in enumerate(dataset.records) if counts[i] <= max_boxes]
    return make_dataset(kept, dataset.class_names, category_ids=dataset.category_ids,
                        skipped=dataset.skipped + tuple(log.skipped), annotation_file=dataset.annotation_file)


def check_boxes(boxes: np.ndarray, *, height: int, width: int, file: str, objects: Sequence[str]):
    """Validates boxes against their image; returns them clipped by at most BOX_TOLERANCE.

    Args:
      boxes: [M, 4] xyxy in original pixels.
      height, width: the image size.
      file: the annotation file, for messages.
      objects: [M] how messages name each object (e.g. "object 3 ('dog')").
    Returns:
      [M, 4] float32 boxes inside the image.
    Raises:
      DataError naming the file and the first bad object.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    limits = np.array([width, height, width, height], np.float32)
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = box
        if not np.all(np.isfinite(box)):
            raise DataError(f"{file}: {objects[i]} has a non-finite box {box.tolist()}")
        if x2 <= x1 or y2 <= y1:
            raise DataError(
                f"{file}: {objects[i]} has an empty or inverted box {box.tolist()} "
                "(needs x2 > x1 and y2 > y1)"
            )
        if np.any(box < -BOX_TOLERANCE) or np.any(box > limits + BOX_TOLERANCE):
            raise DataError(
                f"{file}: {objects[i]} box {box.tolist()} lies outside the "
                f"{width}x{height} image"
            )
    clipped = np.clip(boxes, 0.0, limits)
    # Clipping a box that pokes out by less than a pixel can still empty it.
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if np.any(empty):
        i = int(np.argmax(empty))
        raise DataError(f"{file}: {objects[i]} box {boxes[i].tolist()} is empty inside the image")
    return clipped


# EXIF orientations (tag 0x0112) that turn the image a quarter: its displayed width is its stored height.
_QUARTER_TURNS = (5, 6, 7, 8)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # an unreadable EXIF block: shown as stored
        return 1


def displayed_size(image: Image.Image) -> tuple:
    """(width, height) of an opened image as viewers show it (its EXIF orientation applied)."""
    w, h = image.size
    return (h, w) if _orientation(image) in _QUARTER_TURNS else (w, h)


def open_image(path: str) -> Image.Image:
    """`path` opened with Pillow (lazily: only its header is read).

    Raises:
      DataError naming the file: it is missing, not an image, or larger than Pillow decodes
        (Image.DecompressionBombError: over twice Image.MAX_IMAGE_PIXELS pixels).
    """
    # Pillow warns of an image above Image.MAX_IMAGE_PIXELS as a possible decompression bomb (and refuses one
    # above twice that, below): jaxdet checks the size of what it trains on itself, before any work
    # (`jaxdet.data.pipeline.MAX_CANVAS_PIXELS`), naming the image. (A filter, not `catch_warnings`, which
    # the loader's threads would race on; set again at each call, as a caller's `catch_warnings` drops it.)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        return Image.open(path)
    except FileNotFoundError as e:
        raise DataError(f"{path}: image file is missing") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large to read ({e}); downscale it or leave it out") from e
    except Exception as e:  # PIL raises several unrelated types for a bad file
        raise DataError(f"{path}: image cannot be decoded ({type(e).__name__}: {e})") from e


def _size_mismatch(path: str, image: Image.Image, height: int, width: int) -> DataError:
    w, h = displayed_size(image)
    message = f"{path}: image is {w}x{h} but its annotation says {width}x{height}"
    if _orientation(image) != 1:
        message += (f" (jaxdet reads images as they are displayed: its EXIF orientation tag {_orientation(image)} "
                    f"turns the stored {image.size[0]}x{image.size[1]} pixels; an annotation drawn on the stored "
                    "pixels does not fit the displayed image: annotate it as displayed, or save it rotated "
                    "without the tag)")
    return DataError(message)


def check_image_file(path: str, *, height: int | None, width: int | None, decode: bool) -> tuple:
    """Checks that an image file exists (and, with `decode`, that it decodes at the stated size).
    Sizes are as the image is displayed: its EXIF orientation applied (`displayed_size`).

    Returns:
      (height, width): the stated size, or the file's when none was stated.
    Raises:
      DataError naming the file.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file is missing")
    if decode or height is None or width is None:
        with open_image(path) as im:
            try:
                if decode:
                    im.load()
            except Exception as e:  # PIL raises several unrelated types for a bad file
                raise DataError(f"{path}: image cannot be decoded ({type(e).__name__}: {e})") from e
            w, h = displayed_size(im)
            if height is not None and (h, w) != (height, width):
                raise _size_mismatch(path, im, height, width)
        return h, w
    return height, width


def rgb8(image: Image.Image, path: str) -> np.ndarray:
    """A decoded image as [H, W, 3] uint8 RGB, deeper pixels scaled rather than clipped.

    16-bit grayscale (PIL modes "I;16*", and "I" as 16-bit values) is scaled by 255 / 65535,
    float images (mode "F") with values in [0, 1] by 255; PIL's own conversion would clip both
    to 255, an all-white image. Other modes (palette, RGBA, CMYK, ...) convert as PIL does.

    Raises:
      DataError naming `path` for an "I" or "F" image whose values lie outside those ranges.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, np.float64)
        full = 1.0 if image.mode == "F" else 65535.0
        if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0 and values.max() <= full):
            raise DataError(f"{path}: a {image.mode} image with values in [{values.min():g}, {values.max():g}]: "
                            f"jaxdet reads such images as values in [0, {full:g}]; convert it to 8-bit RGB")
        gray = np.round(values * (255.0 / full)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"))


def load_image(record: Record) -> np.ndarray:
    """The record's image as [H, W, 3] uint8 RGB, as it is displayed: turned and mirrored as its EXIF
    orientation tag says (Pillow's `ImageOps.exif_transpose`), the frame annotation tools draw boxes in.

    Raises:
      DataError naming the file when it is missing, corrupt, or not the annotated size.
    """
    if record.image is not None:
        return record.image
    with open_image(record.path) as im:
        try:
            image = rgb8(ImageOps.exif_transpose(im), record.path)
        except DataError:
            raise
        except Exception as e:  # PIL raises several unrelated types for a bad file
            raise DataError(f"{record.path}: image cannot be decoded ({type(e).__name__}: {e})") from e
        if image.shape[:2] != (record.height, record.width):
            raise _size_mismatch(record.path, im, record.height, record.width)
    return image


IMAGE_FORMATS = ("png", "jpg")


def save_image(record: Record, directory: str, *, image_format: str = "png") -> str:
    """Writes the record's image into `directory` as "{source_id}.{ext}" for the writers.

    In-memory images are encoded as `image_format` ("png" keeps synthetic pixels exact, "jpg"
    at quality 95); images already on disk are copied with their own extension.
    Returns:
      the file name written.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    stem = str(record.source_id if record.source_id is not None else f"{record.image_id:06d}")
    if record.image is not None:
        file_name = f"{stem}.{image_format}"
        options = {"quality": 95} if image_format == "jpg" else {}
        Image.fromarray(record.image).save(os.path.join(directory, file_name), **options)
    else:
        file_name = f"{stem}{os.path.splitext(record.path)[1]}"
        shutil.copyfile(record.path, os.path.join(directory, file_name))
    return file_name
