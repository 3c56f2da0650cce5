"""torchvision's `GeneralizedRCNNTransform` at test time, in numpy: normalise, resize, pad.

For each image (float32 in [0, 1], [H, W, 3]): subtract the ImageNet mean and divide by the
std; resize bilinearly by `scale = min(min_size / min(H, W), max_size / max(H, W))` to
`(floor(H * scale), floor(W * scale))` exactly as `torch.nn.functional.interpolate(mode="bilinear",
align_corners=False, recompute_scale_factor=True)` does on the CPU (the sample position of
output pixel i is `float32(in / out) * (i + 0.5) - 0.5`, floored at 0; float32 weights, the
width interpolated first; with the fused multiply-adds of torch's x86-64 build, so the result is
torch's bit for bit there: checked on photographs in tests/models/test_fpn_torchvision.py); then the batch is zero-padded at the bottom/right to the
largest height and width, rounded up to multiples of 32. Normalising before resizing and
padding after normalising are torchvision's order: the padding is 0 in normalised units.

    images, image_hw = transform_batch([uint8_image, ...])       # [N, H, W, 3], [N, 2]
"""

import math
from typing import Sequence, Tuple

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(height: int, width: int, min_size: int = 800, max_size: int = 1333) -> Tuple[Tuple[int, int], float]:
    """((new_h, new_w), scale) of torchvision's resize: floor(side * scale), Python floats (double)."""
    scale = min(float(min_size) / min(height, width), float(max_size) / max(height, width))
    return (int(math.floor(float(height) * scale)), int(math.floor(float(width) * scale))), scale


def _fma(a, b, c):
    """float32 `a * b + c` rounded once (the product is exact in float64), as a fused multiply-add."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(np.float32)


def _linear_terms(in_size: int, out_size: int):
    """Source indices (i0, i1) and weights (l0, l1), float32, of torch's upsample_bilinear (align_corners=False).

    The source position `float32(in / out) * (i + 0.5) - 0.5` is rounded once, as the fused
    multiply-add of torch's x86-64 CPU kernels computes it.
    """
    out = np.arange(out_size)
    if in_size == out_size:
        return out, out, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    ratio = np.float32(in_size) / np.float32(out_size)
    real = _fma(ratio, out.astype(np.float32) + np.float32(0.5), np.float32(-0.5))
    real = np.where(real < 0, np.float32(0), real).astype(np.float32)
    i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    l1 = np.clip(real - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    l0 = (np.float32(1) - l1).astype(np.float32)
    return i0, i1, l0, l1


def resize_bilinear(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """image [H, W, C] float32 -> [size[0], size[1], C] float32, torch's bilinear (align_corners=False).

    Along the width `fma(v0, l0, v1 * l1)`, then along the height `fma(r0, l0, r1 * l1)`: the order and
    the fused multiply-adds of torch's CPU kernel (upsample_generic_Nd_kernel_impl), so that the result
    is torch's bit for bit (but for rare double roundings of the float64 emulation of the fma).
    """
    image = np.asarray(image, np.float32)
    y0, y1, ly0, ly1 = _linear_terms(image.shape[0], size[0])
    x0, x1, lx0, lx1 = _linear_terms(image.shape[1], size[1])
    lx0, lx1 = lx0[None, :, None], lx1[None, :, None]
    rows = []
    for ys in (y0, y1):
        band = image[ys]  # [h, W, C]
        rows.append(_fma(band[:, x0], lx0, band[:, x1] * lx1))
    return _fma(rows[0], ly0[:, None, None], rows[1] * ly1[:, None, None])


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 / 255 (torchvision's to_tensor); float input is taken as in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    return image.astype(np.float32)


def transform_image(image: np.ndarray, *, min_size: int = 800, max_size: int = 1333, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD) -> np.ndarray:
    """One image [H, W, 3] (uint8, or float in [0, 1]) -> normalised, resized float32 [h, w, 3]."""
    image = to_float(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got {image.shape}")
    image = (image - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    size, _ = resized_size(image.shape[0], image.shape[1], min_size, max_size)
    return resize_bilinear(image, size)


def pad_batch(images: Sequence[np.ndarray], size_divisible: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """Images [h_i, w_i, 3] -> (batch [N, H, W, 3] zero-padded, H and W the largest sizes rounded up to
    multiples of `size_divisible`; image_hw [N, 2] int32)."""
    hw = np.asarray([im.shape[:2] for im in images], np.int32)
    height = int(math.ceil(hw[:, 0].max() / size_divisible) * size_divisible)
    width = int(math.ceil(hw[:, 1].max() / size_divisible) * size_divisible)
    batch = np.zeros((len(images), height, width, images[0].shape[-1]), np.float32)
    for i, im in enumerate(images):
        batch[i, : im.shape[0], : im.shape[1]] = im
    return batch, hw


def transform_batch(images: Sequence[np.ndarray], *, min_size: int = 800, max_size: int = 1333,
                    size_divisible: int = 32, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tuple[np.ndarray, np.ndarray]:
    """Images [H_i, W_i, 3] -> (batch [N, H, W, 3] float32, image_hw [N, 2] int32), torchvision's transform."""
    return pad_batch([transform_image(im, min_size=min_size, max_size=max_size, mean=mean, std=std)
                      for im in images], size_divisible)
