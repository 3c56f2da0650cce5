"""Host-side image transforms that move boxes with the pixels: resize, flip, normalise.

Images are [H, W, 3] uint8 RGB; boxes are [M, 4] xyxy in continuous pixels (see
`jaxdet.data.records`), so a flip is exact and a resize scales each axis by the ratio of the
integer sizes.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

NORMALIZATIONS = ("torchvision", "caffe")

# torchvision's ImageNet weights expect RGB in [0, 1] standardised per channel.
TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCHVISION_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Caffe's VGG16 / py-faster-rcnn weights expect BGR in [0, 255] minus these pixel means.
CAFFE_MEAN_BGR = np.array([102.9801, 115.9465, 122.7717], np.float32)


def resized_hw(height: int, width: int, *, min_size: int | None, max_size: int | None) -> tuple:
    """Size after scaling the short side to `min_size`, the long side capped at `max_size`.

    Either limit may be None (no resize when both are).
    Returns:
      (new_height, new_width, scale): ints and the nominal float scale factor.
    """
    if min_size is None and max_size is None:
        return height, width, 1.0
    short, long = min(height, width), max(height, width)
    scale = math.inf
    if min_size is not None:
        if min_size <= 0:
            raise ValueError(f"min_size must be positive, got {min_size}")
        scale = min_size / short
    if max_size is not None:
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        scale = min(scale, max_size / long)
    return max(1, round(height * scale)), max(1, round(width * scale)), scale


def resize(
    image: np.ndarray, boxes: np.ndarray, *, min_size: int | None = 600, max_size: int | None = 1000
) -> tuple:
    """Resizes an image (bilinear) and its boxes; see `resized_hw` for the size.

    Args:
      image: [H, W, 3] uint8.
      boxes: [M, 4] xyxy in the image's pixels.
    Returns:
      (image [H', W', 3] uint8, boxes [M, 4] float32 in the new pixels, scale float).
    """
    height, width = image.shape[:2]
    new_h, new_w, scale = resized_hw(height, width, min_size=min_size, max_size=max_size)
    if (new_h, new_w) == (height, width):
        return image, np.asarray(boxes, np.float32), scale
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    return image, scale_boxes(boxes, from_hw=(height, width), to_hw=(new_h, new_w)), scale


def scale_boxes(boxes, *, from_hw, to_hw):
    """Maps xyxy boxes between two sizes of the same picture, axis by axis.

    Operators only, so it works on numpy and (under jit) jax arrays alike.
    Args:
      boxes: [..., 4] xyxy.
      from_hw, to_hw: [..., 2] (height, width) of the two sizes, broadcastable against the
        leading axes of `boxes` (e.g. [B, 1, 2] for [B, N, 4] boxes), or plain pairs.
    Returns:
      [..., 4] boxes (float32 for numpy input).
    """
    from_hw = np.asarray(from_hw, np.float32) if isinstance(from_hw, tuple) else from_hw
    to_hw = np.asarray(to_hw, np.float32) if isinstance(to_hw, tuple) else to_hw
    ratio_h = (to_hw[..., 0] / from_hw[..., 0])[..., None]
    ratio_w = (to_hw[..., 1] / from_hw[..., 1])[..., None]
    scaled = boxes * (ratio_w * _X_COORDS + ratio_h * _Y_COORDS)
    return scaled.astype(np.float32) if isinstance(scaled, np.ndarray) else scaled


_X_COORDS = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
_Y_COORDS = np.array([0.0, 1.0, 0.0, 1.0], np.float32)


def boxes_to_original(boxes, *, image_hw, orig_hw):
    """Maps predicted boxes from the resized image back to the original image's pixels.

    Args:
      boxes: [B, N, 4] xyxy in resized pixels (numpy or jax).
      image_hw: [B, 2] (height, width) of the resized image content (the batch's `image_hw`).
      orig_hw: [B, 2] original (height, width) (the batch's `orig_hw`).
    Returns:
      [B, N, 4] xyxy in original pixels.
    """
    return scale_boxes(boxes, from_hw=image_hw[:, None, :], to_hw=orig_hw[:, None, :])


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple:
    """Mirrors an image left-right with its boxes.

    Args:
      image: [H, W, C].
      boxes: [M, 4] xyxy.
    Returns:
      (image [H, W, C] contiguous, boxes [M, 4] float32 with x1' = W - x2, x2' = W - x1).
    """
    return _flip_pixels(image), flip_boxes(boxes, width=image.shape[1])


def flip_boxes(boxes: np.ndarray, *, width: int) -> np.ndarray:
    """Boxes [M, 4] xyxy mirrored in an image `width` pixels wide (x1' = W - x2, x2' = W - x1)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


def _flip_pixels(image: np.ndarray) -> np.ndarray:
    # Copying pixels as opaque C-byte items is several times faster than numpy's copy of a
    # reversed [H, W, C] view, whose innermost loop is only C elements long.
    image = np.ascontiguousarray(image)
    height, width, channels = image.shape
    pixels = image.view(np.dtype((np.void, channels * image.itemsize))).reshape(height, width)
    return pixels[:, ::-1].copy().view(image.dtype).reshape(height, width, channels)


def _rows(image: np.ndarray) -> np.ndarray:
    """[H, W, C] with contiguous pixels (a batch slot may have a row stride) as an [H, W*C] view."""
    height, width, channels = image.shape
    item = image.itemsize
    if image.strides[1:] != (channels * item, item):
        raise ValueError(f"needs contiguous pixels within rows, got strides {image.strides}")
    return np.lib.stride_tricks.as_strided(
        image, (height, width * channels), (image.strides[0], item)
    )


def check_normalization(convention: str) -> None:
    """Raises ValueError unless `convention` is one of NORMALIZATIONS."""
    if convention not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {convention!r}")


def normalize(
    image: np.ndarray, convention: str = "torchvision", *, out: np.ndarray | None = None
) -> np.ndarray:
    """Converts [H, W, 3] uint8 RGB to the float input pretrained weights expect.

    "torchvision": RGB, (x / 255 - mean) / std. "caffe": BGR, x - pixel means, in [0, 255].
    Args:
      out: optional [H, W, 3] float32 destination (e.g. a slice of the batch), written in
        place: the pipeline's hottest step, so no temporaries.
    Returns:
      [H, W, 3] float32 (`out` when given).
    """
    check_normalization(convention)
    if out is None:
        out = np.empty(image.shape, np.float32)
    width = image.shape[1]
    # Row-flattened [H, W*3] views with per-channel constants tiled along the row, so numpy
    # runs long inner loops (per-pixel broadcasting of 3 constants is ~10x slower).
    target = _rows(out)
    if convention == "torchvision":
        np.multiply(_rows(np.ascontiguousarray(image)), np.tile(_TORCHVISION_SCALE, width),
                    out=target)
        np.subtract(target, np.tile(_TORCHVISION_OFFSET, width), out=target)
    else:
        # RGB -> BGR: reversing a flattened row reverses channels and pixels; flipping the
        # pixels first puts them back in place.
        source = _rows(_flip_pixels(image))[:, ::-1]
        np.subtract(source, np.tile(CAFFE_MEAN_BGR, width), out=target)
    return out


_TORCHVISION_SCALE = (1.0 / (255.0 * TORCHVISION_STD)).astype(np.float32)
_TORCHVISION_OFFSET = (TORCHVISION_MEAN / TORCHVISION_STD).astype(np.float32)


def denormalize(image: np.ndarray, convention: str = "torchvision") -> np.ndarray:
    """Inverse of `normalize` (for pictures of batch images).

    Args:
      image: [..., H, W, 3] float, normalised.
    Returns:
      [..., H, W, 3] uint8 RGB.
    """
    check_normalization(convention)
    x = np.asarray(image, np.float32)
    if convention == "torchvision":
        x = (x * TORCHVISION_STD + TORCHVISION_MEAN) * 255.0
    else:
        x = (x + CAFFE_MEAN_BGR)[..., ::-1]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def size_buckets(min_size: int, max_size: int, *, stride: int = 32) -> tuple:
    """The two padded sizes that hold any image resized by (`min_size`, `max_size`).

    Landscape images fit (min, max) and portrait (max, min), each side rounded up to a multiple
    of `stride` so every backbone level sees whole cells.
    Returns:
      ((H, W) landscape, (H, W) portrait), or one bucket when they coincide.
    """
    short = -(-min(min_size, max_size) // stride) * stride
    long = -(-max_size // stride) * stride
    return ((short, long),) if short == long else ((short, long), (long, short))
