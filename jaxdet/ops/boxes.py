"""Box geometry: area, pairwise IoU, clipping, and the (tx, ty, tw, th) box coding.

Pixel convention (kept everywhere in jaxdet): boxes are ``(x1, y1, x2, y2)`` in continuous
input-image pixel coordinates, a box covers ``[x1, x2) x [y1, y2)``, so its width is ``x2 - x1``
and its height ``y2 - y1`` (no ``+ 1``, as torchvision and detectron2; py-faster-rcnn adds 1).
This is the convention of the anchors (a 128-pixel anchor centred at 8 spans ``[-56, 72]``), of
the inside-the-image test (``x2 <= width``) and of clipping (to ``[0, width]``, not
``width - 1``).

Boxes with ``x2 <= x1`` or ``y2 <= y1`` are degenerate: their area is 0 and their IoU with any
box, themselves included, is 0.

All functions broadcast over leading batch axes and work under ``jit`` and ``vmap``.
:func:`box_area` and :func:`box_iou` also run in numpy (``xp=np``), so host-side evaluation
computes its IoU in float64 with the same formula.
"""

import math

import jax.numpy as jnp

# Largest |dw|, |dh| decoded: exp(4.135) = 62.5 = 1000 / 16, so a box may grow at most
# 62.5-fold per side of its anchor, and float32 exp never overflows on an untrained network
# (the Detectron / torchvision clamp).
DECODE_CLAMP = math.log(1000.0 / 16.0)


def box_area(boxes, *, xp=jnp):
    """Area of boxes, 0 for degenerate ones.

    Args:
        boxes: [..., 4] xyxy.
        xp: the array module, ``jax.numpy`` or ``numpy``.

    Returns:
        [...] areas.
    """
    width = xp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    height = xp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return width * height


def box_iou(a, b, *, xp=jnp):
    """Pairwise intersection over union.

    Args:
        a: [..., N, 4] xyxy.
        b: [..., M, 4] xyxy (leading axes broadcast against those of ``a``).
        xp: the array module, ``jax.numpy`` or ``numpy`` (e.g. float64 arrays on the host).

    Returns:
        [..., N, M] IoU in [0, 1]; 0 where the union is empty (two degenerate boxes) or not a
        number (NaN coordinates).
    """
    area_a = box_area(a, xp=xp)[..., :, None]  # [..., N, 1]
    area_b = box_area(b, xp=xp)[..., None, :]  # [..., 1, M]
    top_left = xp.maximum(a[..., :, None, :2], b[..., None, :, :2])  # [..., N, M, 2]
    bottom_right = xp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])  # [..., N, M, 2]
    wh = xp.maximum(bottom_right - top_left, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    # The inner where keeps the gradient of the untaken branch finite for empty unions.
    return xp.where(union > 0, inter / xp.where(union > 0, union, 1.0), 0.0)


def clip_boxes(boxes, image_hw):
    """Clips boxes to the image, x to [0, width] and y to [0, height].

    Args:
        boxes: [..., 4] xyxy.
        image_hw: [..., 2] (height, width), broadcast against the leading axes of ``boxes``.

    Returns:
        [..., 4] clipped boxes.
    """
    image_hw = jnp.asarray(image_hw, boxes.dtype)
    upper = jnp.stack([image_hw[..., 1], image_hw[..., 0]] * 2, axis=-1)  # [..., 4] (w, h, w, h)
    return jnp.clip(boxes, 0.0, upper)


def _centre_size(boxes):
    """[..., 4] xyxy -> (cx, cy, w, h), each [...]."""
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * width, boxes[..., 1] + 0.5 * height, width, height


def _check_coding_constants(means, stds):
    if len(means) != 4:
        raise ValueError(f"means must have 4 entries (tx, ty, tw, th), got {means!r}")
    if len(stds) != 4 or any(s <= 0 for s in stds):
        raise ValueError(f"stds must be 4 positive numbers, got {stds!r}")


def encode_boxes(boxes, anchors, *, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0)):
    """Regression targets that move ``anchors`` onto ``boxes`` (Faster R-CNN eq. 2).

    ``tx = (x - xa) / wa``, ``ty = (y - ya) / ha``, ``tw = log(w / wa)``, ``th = log(h / ha)``
    with centres (x, y) and sizes (w, h), then ``(t - means) / stds``. Anchor sizes are floored
    at float eps (as the reference ports do) so a degenerate anchor cannot divide by zero; a
    degenerate target box gives ``-inf`` in tw / th, which callers mask out.

    Args:
        boxes: [..., 4] xyxy targets.
        anchors: [..., 4] xyxy anchors or RoIs (same shape as ``boxes``).
        means: 4 floats subtracted from (tx, ty, tw, th).
        stds: 4 positive floats dividing them (the RoI head uses (0.1, 0.1, 0.2, 0.2)).

    Returns:
        [..., 4] deltas (tx, ty, tw, th).
    """
    _check_coding_constants(means, stds)
    eps = jnp.finfo(anchors.dtype).eps
    acx, acy, aw, ah = _centre_size(anchors)
    aw = jnp.maximum(aw, eps)
    ah = jnp.maximum(ah, eps)
    cx, cy, w, h = _centre_size(boxes)
    deltas = jnp.stack(
            [(cx - acx) / aw, (cy - acy) / ah, jnp.log(w / aw), jnp.log(h / ah)], axis=-1)
    return (deltas - jnp.asarray(means, deltas.dtype)) / jnp.asarray(stds, deltas.dtype)


def decode_boxes(deltas, anchors, *, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0)):
    """Applies deltas to anchors, the inverse of :func:`encode_boxes`.

    ``dw`` and ``dh`` are clamped to ``DECODE_CLAMP`` (log 62.5) before ``exp`` so that wild
    predictions give large but finite boxes.

    Args:
        deltas: [..., 4] (tx, ty, tw, th), normalised with ``means`` and ``stds``.
        anchors: [..., 4] xyxy (same shape as ``deltas``).
        means, stds: the constants used by :func:`encode_boxes`.

    Returns:
        [..., 4] xyxy boxes.
    """
    _check_coding_constants(means, stds)
    deltas = deltas * jnp.asarray(stds, deltas.dtype) + jnp.asarray(means, deltas.dtype)
    acx, acy, aw, ah = _centre_size(anchors)
    cx = acx + deltas[..., 0] * aw
    cy = acy + deltas[..., 1] * ah
    w = aw * jnp.exp(jnp.minimum(deltas[..., 2], DECODE_CLAMP))
    h = ah * jnp.exp(jnp.minimum(deltas[..., 3], DECODE_CLAMP))
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)
