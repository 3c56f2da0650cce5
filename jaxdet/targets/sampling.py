"""Balanced random sampling of positives and negatives on fixed shapes, as detectron2's sampling.py."""

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.checks import check_count, check_fraction


def sample_balanced(*, positive, negative, key, num_samples, positive_fraction):
    """Draws up to ``num_samples`` items, at most ``round(num_samples * positive_fraction)`` positive.

    The rule of py-faster-rcnn's anchor and proposal target layers and of detectron2's
    ``subsample_labels``: ``min(#positive, cap)`` positives uniformly at random, then negatives
    uniformly at random to fill the sample (all of them when there are too few). Fixed-shape:
    each item draws a uniform priority and the highest priorities of each kind win
    (``lax.top_k``).

    Args:
      positive: [N] bool.
      negative: [N] bool, disjoint from ``positive``.
      key: a ``jax.random`` key.
      num_samples: Python int.
      positive_fraction: Python float in [0, 1].

    Returns:
      (take_positive [N] bool, take_negative [N] bool).
    """
    check_count("num_samples", num_samples)
    check_fraction("positive_fraction", positive_fraction)
    size = positive.shape[0]
    # Disjoint sets, so one draw serves both.
    priority = jax.random.uniform(key, (size,))

    def take_best(candidates, limit, k):
        """[N] bool: the `limit` highest-priority candidates (limit may be traced, k >= limit)."""
        if k == 0:
            return jnp.zeros((size,), bool)
        _, best = lax.top_k(jnp.where(candidates, priority, -1.0), k)
        chosen = candidates[best] & (jnp.arange(k) < limit)
        return jnp.zeros((size,), bool).at[best].set(chosen)

    max_positive = min(int(round(num_samples * positive_fraction)), size)
    take_positive = take_best(positive, max_positive, max_positive)
    num_negative = num_samples - jnp.sum(take_positive, dtype=jnp.int32)
    take_negative = take_best(negative, num_negative, min(num_samples, size))
    return take_positive, take_negative
