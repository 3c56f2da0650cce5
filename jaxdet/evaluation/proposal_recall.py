"""Proposal recall: the share of ground-truth boxes that some proposal covers, against the number of
proposals an image keeps.

The measure by which selective search (Uijlings et al. 2013) and the RPN (Ren et al. 2015, fig. 2)
are compared: a ground-truth box counts as recalled by the first `n` proposals of its image when
one of them overlaps it with IoU >= the threshold. Proposals are taken in the order given (best
first), as a Fast R-CNN (Girshick 2015) reading `data.max_proposals` of them would.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxdet.ops.boxes import box_iou


def best_overlap_rank(gt_boxes: np.ndarray, proposals: np.ndarray, iou_thresholds: Sequence[float]) -> np.ndarray:
    """For each ground-truth box and threshold, how many proposals it takes to recall it.

    Args:
      gt_boxes: [M, 4] xyxy.
      proposals: [P, 4] xyxy, best first.
      iou_thresholds: [T] IoU thresholds.

    Returns:
      [M, T] float: 1 + the index of the first proposal with IoU >= the threshold (the box is recalled
      by the first n proposals when this is <= n); inf where none reaches it.
    """
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    proposals = np.asarray(proposals, np.float64).reshape(-1, 4)
    thresholds = np.asarray(iou_thresholds, np.float64)
    if len(proposals) == 0:
        return np.full((len(gt_boxes), len(thresholds)), np.inf)
    iou = box_iou(gt_boxes, proposals, xp=np)  # [M, P]
    hit = iou[:, :, None] >= thresholds[None, None, :]  # [M, P, T]
    first = np.argmax(hit, axis=1) + 1  # [M, T]
    return np.where(hit.any(axis=1), first, np.inf)


def proposal_recall(gt_boxes: Sequence[np.ndarray], proposals: Sequence[np.ndarray], counts: Sequence[int],
                    iou_thresholds: Sequence[float] = (0.5, 0.7)) -> np.ndarray:
    """Recall of the ground truth of a set of images by their first `n` proposals, for each n in `counts`.

    Args:
      gt_boxes: per image, [M_i, 4] xyxy ground truth (the boxes to find: leave out difficult and
        crowd ones before).
      proposals: per image, [P_i, 4] xyxy proposals, best first, in the same pixels.
      counts: [C] numbers of proposals an image keeps (its first n; all of them where it has fewer).
      iou_thresholds: [T] IoU thresholds.

    Returns:
      [C, T] float: recalled ground-truth boxes / all ground-truth boxes; NaN when there are none.
    """
    if len(gt_boxes) != len(proposals):
        raise ValueError(f"{len(gt_boxes)} images of ground truth but {len(proposals)} of proposals")
    ranks = [best_overlap_rank(g, p, iou_thresholds) for g, p in zip(gt_boxes, proposals)]
    ranks = np.concatenate(ranks, axis=0) if ranks else np.zeros((0, len(iou_thresholds)))  # [M, T]
    if len(ranks) == 0:
        return np.full((len(counts), len(iou_thresholds)), np.nan)
    counts = np.asarray(counts)
    return (ranks[None, :, :] <= counts[:, None, None]).mean(axis=1)  # [C, T]
