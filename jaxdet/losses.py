"""The RPN and RoI-head losses (Faster R-CNN eq. 1, Fast R-CNN multi-task loss).

Each returns ``(cls_loss, box_loss)`` scalars; the caller weights and adds them. Leading axes
(images of a batch) are pooled: every sum and count runs over the whole batch.

Normalisation (``normalize_by``):
  * classification: mean cross entropy over the sampled entries (RPN: label != -1; RoI head:
    ``valid``), as PyTorch's ``F.cross_entropy(..., ignore_index=-1)``.
  * regression, ``"positives"`` (default): smooth L1 summed over the 4 coordinates of the
    positive entries, divided by their number, as the PyTorch Faster R-CNN notebooks read
    ``N_reg`` of Ren et al. 2015 (eq. 1; the paper's ``N_reg`` is the number of anchor
    locations, about 2,400), weighted by ``lambda = 10`` in the total
    (``cls + 10 / N_reg * loc``); that weight is the caller's.
  * regression, ``"samples"``: the same sum divided by the number of sampled entries (256 or 128
    per image), the normalisation of py-faster-rcnn and simple-faster-rcnn, used with weight 1.
Smooth L1 with ``sigma`` (3 for the RPN, 1 for the RoI head, as those ports): ``0.5 (sigma x)^2``
if ``|x| < 1 / sigma^2``, else ``|x| - 0.5 / sigma^2``. Entries that are not positive contribute
exactly zero to the value and to the gradient, whatever their targets hold.
"""

import jax
import jax.numpy as jnp

_NORMALIZERS = ("positives", "samples")


def smooth_l1(x, sigma=1.0):
    """Elementwise smooth L1 of ``x`` with transition at ``1 / sigma^2``.

    Args:
      x: [...] differences.
      sigma: positive Python float.

    Returns:
      [...] losses.
    """
    sigma2 = sigma * sigma
    abs_x = jnp.abs(x)
    return jnp.where(abs_x < 1.0 / sigma2, 0.5 * sigma2 * x * x, abs_x - 0.5 / sigma2)


def _check(sigma, normalize_by):
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    if normalize_by not in _NORMALIZERS:
        raise ValueError(f"normalize_by must be one of {_NORMALIZERS}, got {normalize_by!r}")


def _cross_entropy(logits, labels, weight):
    """Mean over weighted entries of -log softmax(logits)[label]; logits [..., C], labels [...]."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.clip(labels, 0)[..., None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(weight, picked, 0.0)) / jnp.maximum(jnp.sum(weight), 1)


def _box_loss(deltas, target_deltas, positive, sampled, sigma, normalize_by):
    """Smooth L1 over positive entries; deltas, target_deltas [..., 4], masks [...]."""
    # Masking the difference (not the loss) keeps non-finite targets off the gradient.
    diff = jnp.where(positive[..., None], deltas - target_deltas, 0.0)
    total = jnp.sum(smooth_l1(diff, sigma))
    count = jnp.sum(positive if normalize_by == "positives" else sampled)
    return total / jnp.maximum(count, 1)


def rpn_loss(*, logits, deltas, labels, target_deltas, sigma=3.0, normalize_by="positives"):
    """RPN objectness and box losses.

    Args:
      logits: [..., A, 2] (background, object) scores.
      deltas: [..., A, 4] predicted (tx, ty, tw, th).
      labels: [..., A] int, 1 object, 0 background, -1 ignored.
      target_deltas: [..., A, 4].
      sigma: smooth L1 sigma.
      normalize_by: "positives" or "samples" (module docstring).

    Returns:
      (cls_loss, box_loss) float scalars.
    """
    _check(sigma, normalize_by)
    sampled = labels >= 0
    cls_loss = _cross_entropy(logits, labels, sampled)
    box_loss = _box_loss(deltas, target_deltas, labels == 1, sampled, sigma, normalize_by)
    return cls_loss, box_loss


def roi_head_loss(*, logits, deltas, labels, target_deltas, valid, sigma=1.0,
                  normalize_by="positives"):
    """RoI-head classification and box losses; the box loss uses the labelled class's deltas.

    Args:
      logits: [..., S, K + 1] class scores, background = 0.
      deltas: [..., S, K + 1, 4] class-specific predicted deltas.
      labels: [..., S] int in [0, K].
      target_deltas: [..., S, 4].
      valid: [..., S] bool, the sampled RoIs.
      sigma: smooth L1 sigma.
      normalize_by: "positives" or "samples" (module docstring).

    Returns:
      (cls_loss, box_loss) float scalars.
    """
    _check(sigma, normalize_by)
    cls_loss = _cross_entropy(logits, labels, valid)
    picked = jnp.take_along_axis(deltas, labels[..., None, None], axis=-2)[..., 0, :]  # [..., S, 4]
    box_loss = _box_loss(picked, target_deltas, valid & (labels > 0), valid, sigma, normalize_by)
    return cls_loss, box_loss
