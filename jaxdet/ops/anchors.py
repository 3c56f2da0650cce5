"""Anchors (Ren et al. 2015, sec. 3.1.1): templates and their grid over a feature map.

Templates: for each scale s (outer loop) and each ratio r = height / width (inner loop), a box
of height ``s * sqrt(r) * stride`` and width ``s / sqrt(r) * stride`` centred on the origin; the
defaults give the paper's 9 anchors (128, 256, 512 pixels x ratios 1:2, 1:1, 2:1 at stride 16),
scale-major (py-faster-rcnn's generate_anchors orders them ratio-major and rounds their sizes to
whole pixels; these are exact). The grid puts them at the centre of every
feature-map cell, ``(stride * j + stride / 2, stride * i + stride / 2)`` for cell (i, j), in
row-major cell order with the templates innermost: anchor index ``(i * W + j) * A + a``, which
is also the order of an NHWC RPN head's ``[H, W, A * 4]`` output reshaped to ``[H * W * A, 4]``.
"""

import numpy as np

import jax.numpy as jnp


def _check_positive_numbers(name, values):
    values = tuple(values)
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of positive numbers, got {values!r}")
    return values


def _templates_float64(stride, scales, ratios):
    """[len(scales) * len(ratios), 4] xyxy float64 templates, scale-major."""
    (stride,) = _check_positive_numbers("stride", (stride,))
    scales = np.asarray(_check_positive_numbers("scales", scales), np.float64)
    ratios = np.asarray(_check_positive_numbers("ratios", ratios), np.float64)
    heights = (scales[:, None] * np.sqrt(ratios)[None, :] * stride).reshape(-1)
    widths = (scales[:, None] / np.sqrt(ratios)[None, :] * stride).reshape(-1)
    return np.stack([-widths / 2, -heights / 2, widths / 2, heights / 2], axis=-1)


def anchor_templates(stride=16, scales=(8, 16, 32), ratios=(0.5, 1, 2)):
    """The anchor templates centred on the origin.

    Args:
      stride: feature-map stride in input pixels (positive number).
      scales: anchor sizes in units of ``stride``.
      ratios: height / width ratios.

    Returns:
      [len(scales) * len(ratios), 4] xyxy float32, scale-major.
    """
    return jnp.asarray(_templates_float64(stride, scales, ratios), jnp.float32)


def anchor_grid(feature_hw, stride=16, scales=(8, 16, 32), ratios=(0.5, 1, 2)):
    """All anchors of a feature map, cells row-major, templates innermost.

    Args:
      feature_hw: (height, width) of the feature map, positive Python ints (static).
      stride: feature-map stride in input pixels.
      scales: anchor sizes in units of ``stride``.
      ratios: height / width ratios.

    Returns:
      [H * W * A, 4] xyxy float32 anchors in input pixels, A = len(scales) * len(ratios);
      for an 800x800 image (50x50 map) 22500 anchors, 8940 of them inside the image.
    """
    feature_hw = tuple(feature_hw)
    if len(feature_hw) != 2 or any(
            not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0
            for n in feature_hw):
        raise ValueError(f"feature_hw must be two positive ints (height, width), got {feature_hw!r}")
    height, width = feature_hw
    # Built in float64 on the host and rounded to float32 once.
    templates = _templates_float64(stride, scales, ratios)  # [A, 4]
    ctr_y = np.arange(height, dtype=np.float64) * stride + stride / 2
    ctr_x = np.arange(width, dtype=np.float64) * stride + stride / 2
    ctr_y, ctr_x = np.meshgrid(ctr_y, ctr_x, indexing="ij")  # [H, W] each
    shifts = np.stack([ctr_x, ctr_y, ctr_x, ctr_y], axis=-1)  # [H, W, 4]
    anchors = shifts[:, :, None, :] + templates[None, None, :, :]  # [H, W, A, 4]
    return jnp.asarray(anchors.reshape(-1, 4), jnp.float32)
