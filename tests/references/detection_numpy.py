"""The Faster R-CNN steps (Ren et al. 2015) in plain numpy, loop by loop as step-by-step tutorials write them.

The independent reference for tests/ops/test_{boxes,anchors,nms}.py and
tests/targets/test_{proposals,targets,losses}.py (experiments/bench_targets.py carries its own copy
of the steps it times). Loops and variable-size arrays on purpose: nothing here shares
code with jaxdet. Boxes are xyxy (tutorials often write yxyx; only the column order differs),
widths are ``x2 - x1``. Where jaxdet departs from the plain formulation it is noted here and in
jaxdet's docstrings.
"""

import numpy as np


# --- boxes -------------------------------------------------------------------------------

def bbox_area(boxes):
    """[N, 4] -> [N]; degenerate boxes have area 0."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)


def bbox_iou(bbox_a, bbox_b):
    """[N, 4], [M, 4] -> [N, M] IoU, 0 for an empty union."""
    top_left = np.maximum(bbox_a[:, None, :2], bbox_b[None, :, :2])
    bottom_right = np.minimum(bbox_a[:, None, 2:], bbox_b[None, :, 2:])
    wh = np.maximum(bottom_right - top_left, 0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = bbox_area(bbox_a)[:, None] + bbox_area(bbox_b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0).astype(np.result_type(bbox_a, bbox_b))


def format_loc(anchors, base_anchors):
    """Deltas (tx, ty, tw, th) moving ``anchors`` onto ``base_anchors`` (Ren et al. 2015, eq. 2)."""
    width = anchors[:, 2] - anchors[:, 0]
    height = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * width
    ctr_y = anchors[:, 1] + 0.5 * height
    base_width = base_anchors[:, 2] - base_anchors[:, 0]
    base_height = base_anchors[:, 3] - base_anchors[:, 1]
    base_ctr_x = base_anchors[:, 0] + 0.5 * base_width
    base_ctr_y = base_anchors[:, 1] + 0.5 * base_height
    eps = np.finfo(width.dtype).eps
    width = np.maximum(width, eps)
    height = np.maximum(height, eps)
    dx = (base_ctr_x - ctr_x) / width
    dy = (base_ctr_y - ctr_y) / height
    dw = np.log(base_width / width)
    dh = np.log(base_height / height)
    return np.stack([dx, dy, dw, dh], axis=1)


def deformat_loc(anchors, formatted_base_anchor):
    """Boxes from anchors and deltas, the inverse of format_loc (no clamp)."""
    width = anchors[:, 2] - anchors[:, 0]
    height = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * width
    ctr_y = anchors[:, 1] + 0.5 * height
    dx, dy, dw, dh = formatted_base_anchor.T
    base_ctr_x = dx * width + ctr_x
    base_ctr_y = dy * height + ctr_y
    base_width = np.exp(dw) * width
    base_height = np.exp(dh) * height
    return np.stack([base_ctr_x - 0.5 * base_width, base_ctr_y - 0.5 * base_height,
                     base_ctr_x + 0.5 * base_width, base_ctr_y + 0.5 * base_height], axis=1)


# --- anchors -----------------------------------------------------------------------------

def anchors(feature_map_size, sub_sample=16, anchor_scale=(8, 16, 32), ratio=(0.5, 1, 2)):
    """The template loop and the centre loop, returned as [H * W * 9, 4] xyxy."""
    ratio = np.asarray(ratio, np.float64)
    n_ratio = len(ratio)
    anchor_template = np.zeros((len(anchor_scale) * n_ratio, 4))  # y1, x1, y2, x2
    for idx, scale in enumerate(anchor_scale):
        h = scale * np.sqrt(ratio) * sub_sample
        w = scale / np.sqrt(ratio) * sub_sample
        anchor_template[idx * n_ratio:(idx + 1) * n_ratio, 0] = -h / 2
        anchor_template[idx * n_ratio:(idx + 1) * n_ratio, 1] = -w / 2
        anchor_template[idx * n_ratio:(idx + 1) * n_ratio, 2] = h / 2
        anchor_template[idx * n_ratio:(idx + 1) * n_ratio, 3] = w / 2
    ctr_y = np.arange(feature_map_size[0]) * sub_sample + sub_sample / 2
    ctr_x = np.arange(feature_map_size[1]) * sub_sample + sub_sample / 2
    ctr = np.zeros((*feature_map_size, 2))
    for idx, y in enumerate(ctr_y):
        ctr[idx, :, 0] = y
        ctr[idx, :, 1] = ctr_x
    result = np.zeros((*feature_map_size, len(anchor_template), 4))
    for idx_y in range(feature_map_size[0]):
        for idx_x in range(feature_map_size[1]):
            result[idx_y, idx_x] = (ctr[idx_y, idx_x] + anchor_template.reshape(-1, 2, 2)).reshape(-1, 4)
    return result.reshape(-1, 4)[:, [1, 0, 3, 2]]  # yxyx -> xyxy


# --- NMS ---------------------------------------------------------------------------------

def nms(rois, scores, nms_thresh):
    """The greedy loop (py-faster-rcnn's py_cpu_nms); ``order`` sorted stably so equal scores go by index."""
    x1, y1, x2, y2 = rois[:, 0], rois[:, 1], rois[:, 2], rois[:, 3]
    roi_area = bbox_area(rois)
    order_array = np.argsort(-scores, kind="stable")
    keep = []
    while order_array.size > 0:
        i = order_array[0]
        keep.append(i)
        rest = order_array[1:]
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        union = roi_area[i] + roi_area[rest] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            overlap = np.where(union > 0, inter / union, 0)
        order_array = rest[overlap <= nms_thresh]
    return np.asarray(keep, np.int64)


def multiclass_nms(boxes, scores, iou_threshold, score_threshold, max_output):
    """Per-class NMS on boxes [M, K, 4], scores [M, K]; best ``max_output`` over classes.

    Returns a list of (score, label, box) sorted by descending score (ties: lower class).
    """
    found = []
    for label in range(scores.shape[1]):
        candidates = np.where(scores[:, label] > score_threshold)[0]
        kept = nms(boxes[candidates, label], scores[candidates, label], iou_threshold)
        for row in candidates[kept]:
            found.append((scores[row, label], label, boxes[row, label]))
    found.sort(key=lambda item: (-item[0], item[1]))
    return found[:max_output]


# --- anchor targets ----------------------------------------------------------------------

def anchor_labels(anchors_xyxy, bbox, image_size, pos_iou_thres=0.7, neg_iou_thred=0.3):
    """The paper's labelling (before sampling) of [A] anchors; returns (labels [A], locs [A, 4]).

    One departure, also jaxdet's: a ground-truth box whose best IoU is 0 makes no anchor
    positive (a plain ``ious == gt_max_iou`` would then select every anchor with IoU 0).
    Locations are computed for inside anchors whose best IoU is above 0, zero elsewhere.
    """
    height, width = image_size
    valid_index = np.where((anchors_xyxy[:, 0] >= 0) & (anchors_xyxy[:, 1] >= 0)
                           & (anchors_xyxy[:, 2] <= width) & (anchors_xyxy[:, 3] <= height))[0]
    valid_labels = np.empty((valid_index.shape[0],), dtype=np.int32)
    valid_labels.fill(-1)
    valid_anchors = anchors_xyxy[valid_index]
    valid_locs = np.zeros((len(valid_index), 4), anchors_xyxy.dtype)
    if len(bbox) == 0:
        valid_labels.fill(0)
    else:
        ious = bbox_iou(valid_anchors, bbox)
        anchor_max_iou = np.amax(ious, axis=1)
        pos_iou_anchor_label = np.where(anchor_max_iou >= pos_iou_thres)[0]
        neg_iou_anchor_label = np.where(anchor_max_iou < neg_iou_thred)[0]
        valid_labels[pos_iou_anchor_label] = 1
        valid_labels[neg_iou_anchor_label] = 0
        gt_max_iou = np.amax(ious, axis=0)
        gt_max_iou_anchor_label = np.where((ious == gt_max_iou) & (gt_max_iou > 0))[0]
        valid_labels[gt_max_iou_anchor_label] = 1
        argmax_iou = np.argmax(ious, axis=1)
        matched = anchor_max_iou > 0
        valid_locs[matched] = format_loc(valid_anchors[matched], bbox[argmax_iou[matched]])
    anchor_target_labels = np.full((len(anchors_xyxy),), -1, np.int32)
    anchor_target_labels[valid_index] = valid_labels
    anchor_target_locations = np.zeros((len(anchors_xyxy), 4), anchors_xyxy.dtype)
    anchor_target_locations[valid_index] = valid_locs
    return anchor_target_labels, anchor_target_locations


def sample_anchor_labels(labels, rng, n_sample_anchors=256, pos_ratio=0.5):
    """Sampling with np.random.choice (negatives capped at what exists)."""
    labels = labels.copy()
    pos_index = np.where(labels == 1)[0]
    n_pos_sample = min(len(pos_index), int(n_sample_anchors * pos_ratio))
    if len(pos_index) > n_pos_sample:
        labels[rng.choice(pos_index, size=len(pos_index) - n_pos_sample, replace=False)] = -1
    n_neg_sample = n_sample_anchors - n_pos_sample
    neg_index = np.where(labels == 0)[0]
    if len(neg_index) > n_neg_sample:
        labels[rng.choice(neg_index, size=len(neg_index) - n_neg_sample, replace=False)] = -1
    return labels


# --- proposal layer ----------------------------------------------------------------------

def proposals(anchors_xyxy, locs, objectness, image_size, n_pre_nms, n_post_nms, nms_thresh=0.7,
              min_size=16):
    """The proposal layer's steps; returns (rois [<= n_post_nms, 4], scores)."""
    rois = deformat_loc(anchors_xyxy, locs)
    rois[:, 0:4:2] = np.clip(rois[:, 0:4:2], 0, image_size[1])
    rois[:, 1:4:2] = np.clip(rois[:, 1:4:2], 0, image_size[0])
    w = rois[:, 2] - rois[:, 0]
    h = rois[:, 3] - rois[:, 1]
    valid_index = np.where((h > min_size) & (w > min_size))[0]
    valid_rois = rois[valid_index]
    valid_scores = objectness[valid_index]
    valid_score_order = np.argsort(-valid_scores, kind="stable")
    pre_order = valid_score_order[:n_pre_nms]
    pre_rois = valid_rois[pre_order]
    pre_scores = valid_scores[pre_order]
    keep_index = nms(pre_rois, pre_scores, nms_thresh)
    return pre_rois[keep_index][:n_post_nms], pre_scores[keep_index][:n_post_nms]


# --- proposal targets --------------------------------------------------------------------

def proposal_candidates(rois, bbox, labels, pos_iou_thresh=0.5, neg_iou_thresh_hi=0.5,
                        neg_iou_thresh_lo=0.0, stds=(0.1, 0.1, 0.2, 0.2)):
    """The labelling of RoIs (ground truth appended, as jaxdet does) before sampling.

    Background is ``[lo, hi)``, py-faster-rcnn's interval (``>= BG_THRESH_LO``).

    Returns (rois [R, 4], foreground [R] bool, background [R] bool, class labels [R] with 0 for
    background, normalised locs [R, 4] to the assigned box).
    """
    rois = np.concatenate([rois, bbox]) if len(bbox) else rois
    if len(bbox) == 0:
        roi_max_ious = np.zeros(len(rois))
        target_labels = np.zeros(len(rois), np.int64)
        locs = np.zeros((len(rois), 4))
    else:
        ious = bbox_iou(rois, bbox)
        bbox_assignments = ious.argmax(axis=1)
        roi_max_ious = ious.max(axis=1)
        target_labels = labels[bbox_assignments] + 1
        locs = format_loc(rois, bbox[bbox_assignments]) / np.asarray(stds)
    foreground = roi_max_ious >= pos_iou_thresh
    background = (roi_max_ious < neg_iou_thresh_hi) & (roi_max_ious >= neg_iou_thresh_lo)
    target_labels = np.where(foreground, target_labels, 0)
    return rois, foreground, background, target_labels, locs


def sample_rois(foreground, background, rng, n_sample=128, pos_ratio=0.25):
    """RoI sampling with np.random.choice; returns kept indices, foreground first."""
    pos_index = np.where(foreground)[0]
    n_pos_sample = min(len(pos_index), int(round(n_sample * pos_ratio)))
    pos_index = rng.choice(pos_index, size=n_pos_sample, replace=False)
    neg_index = np.where(background)[0]
    n_neg_sample = min(len(neg_index), n_sample - n_pos_sample)
    neg_index = rng.choice(neg_index, size=n_neg_sample, replace=False)
    return np.append(pos_index, neg_index)


# --- losses ------------------------------------------------------------------------------

def cross_entropy(scores, labels, ignore_index=-1):
    """F.cross_entropy with ignore_index: mean over non-ignored rows of -log softmax."""
    total, count = 0.0, 0
    for row, label in zip(scores, labels):
        if label == ignore_index:
            continue
        shifted = row - row.max()
        total += -(shifted[label] - np.log(np.exp(shifted).sum()))
        count += 1
    return total / max(count, 1)


def smooth_l1(x, sigma):
    """Smooth L1 with transition at 1 / sigma^2, elementwise."""
    x = np.abs(x)
    return np.where(x < 1 / sigma ** 2, 0.5 * sigma ** 2 * x ** 2, x - 0.5 / sigma ** 2)
