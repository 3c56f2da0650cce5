"""Greedy non-maximum suppression with fixed-size outputs, under jit and vmap.

The result is exactly the classic greedy algorithm's (py-faster-rcnn's ``py_cpu_nms``,
``torchvision.ops.nms``: take the highest-scoring remaining box, drop every remaining box whose
IoU with it is above the threshold, repeat),
with equal scores broken by the lower index, truncated to the first ``max_output`` kept boxes.

How, without an [M, M] IoU matrix: boxes are sorted once and visited in blocks of
``block_size``. A block is first suppressed by the boxes already kept (compared chunk by
chunk, so the work is about M x kept rather than M x M), then suppressed within itself by
iterating ``keep <- alive & ~any(earlier kept box overlaps)`` to its fixed point. The
dependence only runs from earlier to later boxes, so after t sweeps the first t entries are
final and the fixed point, reached in at most ``block_size`` sweeps and in a handful in
practice, is unique: it is the greedy answer. The loop stops as soon as ``max_output`` boxes are
kept. Peak memory is a few [block_size, block_size] matrices.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.checks import check_count, check_fraction
from jaxdet.ops.boxes import box_area


class Detections(NamedTuple):
    """Per-class NMS output, fixed size with a mask.

    boxes: [max_output, 4] xyxy.
    scores: [max_output], descending over the valid entries.
    labels: [max_output] int32 in [0, K).
    valid: [max_output] bool; invalid entries have zero boxes, scores and labels.
    """
    boxes: jax.Array
    scores: jax.Array
    labels: jax.Array
    valid: jax.Array


# Boxes per block when the caller does not choose. CPU: small blocks keep each pairwise op under
# the size at which XLA:CPU splits it across threads, whose per-op overhead then dominates
# (also under vmap over 2 images); measured in experiments/results/targets.md. Elsewhere
# (GPU): large blocks, because every loop step costs kernel launches; not measured here.
CPU_BLOCK_SIZE = 32
ACCELERATOR_BLOCK_SIZE = 512


def _check_static(iou_threshold, max_output, block_size):
    check_fraction("iou_threshold", iou_threshold)
    check_count("max_output", max_output)
    if block_size is not None:
        check_count("block_size", block_size)


def nms(boxes, scores, *, iou_threshold, max_output, valid=None, block_size=None):
    """Greedy NMS: the indices of the kept boxes in descending score order.

    A box is suppressed by a kept, higher-ranked box when their IoU is strictly greater than
    ``iou_threshold``. Degenerate (zero-area) boxes overlap nothing, so they are never
    suppressed and never suppress. A box with a NaN score or a NaN coordinate takes no part (as
    if ``valid`` were False for it): it is never kept and suppresses nothing.

    Args:
      boxes: [M, 4] xyxy (an array or anything ``jnp.asarray`` takes, as a list of lists).
      scores: [M] floats; ties are ranked by lower index first.
      iou_threshold: Python float in [0, 1].
      max_output: Python int, the size of the output.
      valid: optional [M] bool; boxes with False take no part (as if absent).
      block_size: Python int, boxes visited per step; any value gives the same result, only
        the speed changes. None: ``CPU_BLOCK_SIZE`` on CPU, ``ACCELERATOR_BLOCK_SIZE`` elsewhere.

    Returns:
      keep: [max_output] int32 indices into ``boxes``, padded with -1 after ``count``.
      count: int32 scalar, the number of kept boxes (at most ``max_output``).
    """
    _check_static(iou_threshold, max_output, block_size)
    boxes, scores = jnp.asarray(boxes), jnp.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"boxes must be [M, 4] and scores [M], got {boxes.shape} and {scores.shape}")
    num_boxes = boxes.shape[0]
    if num_boxes == 0:
        return jnp.full((max_output,), -1, jnp.int32), jnp.zeros((), jnp.int32)
    finite = ~jnp.isnan(scores) & ~jnp.any(jnp.isnan(boxes), axis=-1)
    valid = finite if valid is None else jnp.asarray(valid, bool) & finite
    greedy = functools.partial(_greedy_nms, iou_threshold=iou_threshold, max_output=max_output)
    if block_size is not None:
        return greedy(boxes, scores, valid, block_size=block_size)
    return lax.platform_dependent(
        boxes, scores, valid, cpu=functools.partial(greedy, block_size=CPU_BLOCK_SIZE),
        default=functools.partial(greedy, block_size=ACCELERATOR_BLOCK_SIZE))


def _greedy_nms(boxes, scores, valid, *, iou_threshold, max_output, block_size):
    """:func:`nms` on non-empty [M, 4] boxes with a [M] valid mask and a fixed block size."""
    num_boxes = boxes.shape[0]
    # Valid boxes first, then descending score; the stable sort breaks ties by index.
    index = jnp.arange(num_boxes, dtype=jnp.int32)
    _, _, order = lax.sort(
        (jnp.logical_not(valid).astype(jnp.int32), -scores, index), num_keys=2, is_stable=True)
    num_valid = jnp.sum(valid, dtype=jnp.int32)

    block = min(block_size, num_boxes)
    num_blocks = -(-num_boxes // block)
    padding = num_blocks * block - num_boxes
    # The pairwise tests below are the whole cost. Three things keep them fast on CPU:
    # coordinates as rows [4, *] (x1, y1, x2, y2), areas computed once, and blocks taken by
    # gathers, not dynamic slices: XLA:CPU fuses a dynamic slice into the pairwise loop, which
    # then runs 3-5x slower at blocks of 64-256 (experiments/results/targets.md).
    sorted_boxes = jnp.pad(boxes[order], ((0, padding), (0, 0))).T  # [4, num_blocks * B]
    sorted_area = box_area(sorted_boxes.T)
    sorted_index = jnp.pad(order, (0, padding))
    alive = jnp.arange(num_blocks * block) < num_valid
    # Kept boxes are stored compactly; capacity rounded up to whole chunks of `block`.
    capacity = -(-max_output // block) * block
    earlier = jnp.arange(block)[:, None] < jnp.arange(block)[None, :]  # [B, B]: row before col

    def cond(state):
        b, count = state[:2]
        return (b < num_blocks) & (count < max_output) & (b * block < num_valid)

    def body(state):
        b, count, kept_boxes, kept_area, kept_index = state
        rows = b * block + jnp.arange(block)
        candidates, candidates_area = sorted_boxes[:, rows], sorted_area[rows]  # [4, B], [B]
        alive_in_block = alive[rows]
        alive_in_block &= ~_suppressed_by_kept(candidates, candidates_area, alive_in_block, count,
                                               kept_boxes, kept_area, iou_threshold)
        keep = _suppress_within(candidates, candidates_area, alive_in_block, earlier, iou_threshold)
        slot = count + jnp.cumsum(keep, dtype=jnp.int32) - 1
        # Kept boxes beyond max_output go to an out-of-range slot and are dropped.
        slot = jnp.where(keep & (slot < max_output), slot, capacity)
        kept_boxes = kept_boxes.at[:, slot].set(candidates, mode="drop")
        kept_area = kept_area.at[slot].set(candidates_area, mode="drop")
        kept_index = kept_index.at[slot].set(sorted_index[rows], mode="drop")
        count = jnp.minimum(count + jnp.sum(keep, dtype=jnp.int32), max_output)
        return b + 1, count, kept_boxes, kept_area, kept_index

    state = (jnp.int32(0), jnp.int32(0), jnp.zeros((4, capacity), boxes.dtype),
             jnp.zeros((capacity,), boxes.dtype), jnp.full((capacity,), -1, jnp.int32))
    _, count, _, _, kept_index = lax.while_loop(cond, body, state)
    return kept_index[:max_output], count


def _suppressed_by_kept(candidates, candidates_area, alive, count, kept_boxes, kept_area, iou_threshold):
    """[B] bool: alive candidates overlapping one of the first `count` kept boxes.

    Args:
      candidates: [4, B] rows x1, y1, x2, y2; candidates_area: [B]; alive: [B] bool.
      count: int32 scalar; kept_boxes: [4, C] and kept_area: [C], C a multiple of B, compared B
        at a time until every alive candidate is hit or the kept boxes run out.
    """
    block = alive.shape[0]

    def cond(state):
        chunk, hit = state
        return (chunk * block < count) & jnp.any(alive & ~hit)

    def body(state):
        chunk, hit = state
        rows = chunk * block + jnp.arange(block)
        others, others_area = kept_boxes[:, rows], kept_area[rows]  # [4, B], [B]
        others_valid = rows < count
        overlap = _overlap_above(candidates, candidates_area, others, others_area,
                                 iou_threshold) & others_valid[None, :]
        return chunk + 1, hit | jnp.any(overlap, axis=1)

    _, hit = lax.while_loop(cond, body, (jnp.int32(0), jnp.zeros((block,), bool)))
    return hit


def _suppress_within(candidates, candidates_area, alive, earlier, iou_threshold):
    """[B] bool: the greedy kept set of one block, given which of its boxes are alive.

    Args:
      candidates: [4, B] rows x1, y1, x2, y2; candidates_area: [B]; alive: [B] bool.
      earlier: [B, B] bool, True where the row's box comes before the column's.
    """
    overlap = _overlap_above(candidates, candidates_area, candidates, candidates_area,
                             iou_threshold) & earlier  # [B, B]

    def sweep(keep):
        return alive & ~jnp.any(overlap & keep[:, None], axis=0)

    def cond(state):
        keep, previous = state
        return jnp.any(keep != previous)

    def body(state):
        keep, _ = state
        return sweep(keep), keep

    keep, _ = lax.while_loop(cond, body, (sweep(alive), alive))
    return keep


def _overlap_above(a, area_a, b, area_b, iou_threshold):
    """[N, M] bool: IoU(a_i, b_j) > iou_threshold, exactly as :func:`box_iou` computes the IoU.

    Args:
      a: [4, N] rows x1, y1, x2, y2; area_a: [N] their :func:`box_area`.
      b: [4, M]; area_b: [M].
    """
    width = jnp.maximum(
        jnp.minimum(a[2][:, None], b[2][None, :]) - jnp.maximum(a[0][:, None], b[0][None, :]), 0.0)
    height = jnp.maximum(
        jnp.minimum(a[3][:, None], b[3][None, :]) - jnp.maximum(a[1][:, None], b[1][None, :]), 0.0)
    inter = width * height
    # An empty union (two degenerate boxes) gives 0 / 0 = NaN, which compares False: no overlap,
    # as box_iou's 0.
    return inter / (area_a[:, None] + area_b[None, :] - inter) > iou_threshold


def multiclass_nms(boxes, scores, *, iou_threshold=0.3, score_threshold=0.05, max_output=100):
    """Per-class NMS, then the ``max_output`` best detections over all classes.

    Each class is suppressed on its own among the boxes scoring strictly above
    ``score_threshold``; the survivors of all classes are ranked by score (ties: lower class,
    then the class's own order) and the first ``max_output`` returned.

    Args:
      boxes: [M, K, 4] xyxy, one box per candidate and class (e.g. class-specific regression).
      scores: [M, K] class scores (background already removed).
      iou_threshold: Python float in [0, 1].
      score_threshold: candidates at or below it are dropped.
      max_output: Python int, the number of detections returned.

    Returns:
      Detections with ``max_output`` entries.
    """
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2] \
            or 0 in scores.shape:
        raise ValueError(f"boxes must be [M, K, 4] and scores [M, K] with M, K >= 1, got "
                         f"{boxes.shape} and {scores.shape}")
    per_class_nms = functools.partial(nms, iou_threshold=iou_threshold, max_output=max_output)
    keep, _ = jax.vmap(lambda b, s: per_class_nms(b, s, valid=s > score_threshold),
                       in_axes=(1, 1))(boxes, scores)  # [K, max_output]
    kept = (keep >= 0).reshape(-1)  # [K * max_output]
    rows = jnp.maximum(keep, 0).reshape(-1)
    labels = jnp.repeat(jnp.arange(scores.shape[1], dtype=jnp.int32), max_output)
    ranked = jnp.where(kept, scores[rows, labels], -jnp.inf)
    _, best = lax.top_k(ranked, max_output)  # K * max_output >= max_output candidates
    valid = kept[best]
    return Detections(
        boxes=jnp.where(valid[:, None], boxes[rows[best], labels[best]], 0.0),
        scores=jnp.where(valid, ranked[best], 0.0),
        labels=jnp.where(valid, labels[best], 0),
        valid=valid)
