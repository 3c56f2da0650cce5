"""Benchmark: the jitted target pipeline against the numpy steps of py-faster-rcnn's target layers, side by side.

One 600x1000 image (VGG16 stride 16: a 37x62 feature map, 20646 anchors), the training
settings (256 anchors sampled, 12000 boxes into NMS at 0.7, 2000 proposals, 128 RoIs at 25%
foreground), random RPN outputs and 5 ground-truth boxes. Each table interleaves its
implementations in one loop (shared machines are noisy, so the ratio is the figure to trust):
  pipeline:  anchor targets + proposal layer + proposal targets, and the jitted pipeline
             vmapped over a batch of 2 images (per image);
  stages:    each of the three steps alone;
  nms:       greedy NMS of the 12000 top-scoring decoded boxes, jaxdet.ops.nms (max_output
             2000, the proposal layer's setting, and 12000, every kept box) against the
             numpy loop, and the temporary memory XLA allocates for it;
  block size: jaxdet.ops.nms per block_size, on one image and vmapped over 2 (wall and
             process CPU time, which shows the cost of XLA:CPU's multi-threaded small ops).
The numpy side is the reference below, the same steps as tests/references/detection_numpy.py
(the reference the tests check jaxdet against).

Run: .venv/bin/python experiments/bench_targets.py [--repeats 15]
"""

import argparse
import functools
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.ops import anchor_grid, box_iou, clip_boxes, decode_boxes, nms
from jaxdet.proposals import propose
from jaxdet.targets import anchor_targets, proposal_targets

IMAGE_HW = (600, 1000)
FEATURE_HW = (37, 62)
PRE_NMS, POST_NMS = 12000, 2000


def make_inputs(seed):
    rng = np.random.default_rng(seed)
    anchors = np.asarray(anchor_grid(FEATURE_HW))
    xy = rng.uniform(0, [IMAGE_HW[1] - 200, IMAGE_HW[0] - 200], (5, 2))
    gt = np.concatenate([xy, xy + rng.uniform(40, 200, (5, 2))], axis=1).astype(np.float32)
    return dict(anchors=anchors, gt_boxes=gt, gt_labels=rng.integers(0, 20, 5).astype(np.int32),
                image_hw=np.array(IMAGE_HW, np.int32),
                objectness=rng.uniform(size=len(anchors)).astype(np.float32),
                deltas=rng.normal(0, 0.1, anchors.shape).astype(np.float32))


# --- jaxdet ------------------------------------------------------------------------------

def jax_anchor_targets(x, key):
    return anchor_targets(anchors=x["anchors"], gt_boxes=x["gt_boxes"],
                          gt_valid=jnp.ones(len(x["gt_boxes"]), bool), image_hw=x["image_hw"],
                          key=key)


def jax_propose(x):
    return propose(anchors=x["anchors"], objectness=x["objectness"], deltas=x["deltas"],
                   image_hw=x["image_hw"], pre_nms=PRE_NMS, post_nms=POST_NMS)


def jax_proposal_targets(x, proposals, key):
    return proposal_targets(proposals=proposals.boxes, proposal_valid=proposals.valid,
                            gt_boxes=x["gt_boxes"], gt_labels=x["gt_labels"],
                            gt_valid=jnp.ones(len(x["gt_boxes"]), bool), key=key)


def jax_pipeline(x, key):
    anchor_key, roi_key = jax.random.split(key)
    proposals = jax_propose(x)
    return (jax_anchor_targets(x, anchor_key), proposals,
            jax_proposal_targets(x, proposals, roi_key))


# --- numpy reference: py-faster-rcnn's steps, loop by loop as step-by-step tutorials write them ---
# Boxes xyxy, widths x2 - x1. The same steps as tests/references/detection_numpy.py (the tests'
# reference; copied here so that no benchmark imports tests/), nothing shared with jaxdet.

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


def reference_nms(rois, scores, nms_thresh):
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


def reference_proposals(anchors_xyxy, locs, objectness, image_size, n_pre_nms, n_post_nms, nms_thresh=0.7,
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
    keep_index = reference_nms(pre_rois, pre_scores, nms_thresh)
    return pre_rois[keep_index][:n_post_nms], pre_scores[keep_index][:n_post_nms]


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


# --- numpy (py-faster-rcnn's steps) ------------------------------------------------------------

def numpy_anchor_targets(x, rng):
    labels, locs = anchor_labels(x["anchors"], x["gt_boxes"], IMAGE_HW)
    return sample_anchor_labels(labels, rng), locs


def numpy_propose(x):
    return reference_proposals(x["anchors"], x["deltas"], x["objectness"], IMAGE_HW, PRE_NMS, POST_NMS)


def numpy_proposal_targets(x, rois, rng):
    rois, foreground, background, labels, locs = proposal_candidates(
        rois, x["gt_boxes"], x["gt_labels"])
    keep = sample_rois(foreground, background, rng)
    return rois[keep], labels[keep], locs[keep]


def numpy_pipeline(x, rng):
    rois, _ = numpy_propose(x)
    return numpy_anchor_targets(x, rng), rois, numpy_proposal_targets(x, rois, rng)


# --- timing ------------------------------------------------------------------------------

def block(tree):
    return jax.tree.map(lambda a: a.block_until_ready() if isinstance(a, jax.Array) else a, tree)


def side_by_side(candidates, repeats):
    """{name: thunk} -> ({name: [wall ms]}, {name: [process CPU ms]}), the thunks called in
    turn, after one warm-up call each."""
    for thunk in candidates.values():
        block(thunk())
    wall = {name: [] for name in candidates}
    cpu = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, thunk in candidates.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            block(thunk())
            wall[name].append((time.perf_counter() - start) * 1e3)
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
    return wall, cpu


def report(title, times, baseline):
    print(f"\n{title}\n| implementation | median ms | min ms | numpy median / this median |")
    print("|---|---:|---:|---:|")
    base = np.median(times[baseline])
    for name, values in times.items():
        print(f"| {name} | {np.median(values):.1f} | {np.min(values):.1f} | "
              f"{base / np.median(values):.1f}x |")


def block_sizes(boxes, scores, repeats):
    """NMS (max_output 2000) per block size, one image and vmapped over 2, wall and CPU time."""
    pair = (jnp.stack([boxes, boxes]), jnp.stack([scores, scores]))
    candidates = {}
    for size in (32, 64, 128, 256):
        run = functools.partial(nms, iou_threshold=0.7, max_output=POST_NMS, block_size=size)
        single, batched = jax.jit(run), jax.jit(jax.vmap(run))
        candidates[(size, 1)] = functools.partial(single, boxes, scores)
        candidates[(size, 2)] = functools.partial(batched, *pair)
    wall, cpu = side_by_side(candidates, repeats)
    print("\nNMS block size (max_output 2000); per image; CPU = process time, all threads")
    print("| block_size | 1 image: wall ms | 1 image: CPU ms | vmap 2: wall ms | vmap 2: CPU ms |")
    print("|---:|---:|---:|---:|---:|")
    for size in (32, 64, 128, 256):
        print(f"| {size} | {np.median(wall[size, 1]):.1f} | {np.median(cpu[size, 1]):.1f} | "
              f"{np.median(wall[size, 2]) / 2:.1f} | {np.median(cpu[size, 2]) / 2:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; load average {os.getloadavg()}")

    x = make_inputs(0)
    xj = {k: jnp.asarray(v) for k, v in x.items()}
    key = jax.random.key(0)
    rng = np.random.default_rng(0)
    print(f"{len(x['anchors'])} anchors ({FEATURE_HW[0]}x{FEATURE_HW[1]}x9) for a "
          f"{IMAGE_HW[0]}x{IMAGE_HW[1]} image")

    pipeline = jax.jit(jax_pipeline)
    batch = jax.tree.map(lambda a: jnp.stack([a, a]), xj)
    batched = jax.jit(jax.vmap(jax_pipeline))
    batch_keys = jax.random.split(key, 2)
    times, _ = side_by_side({
        "numpy (py-faster-rcnn steps)": lambda: numpy_pipeline(x, rng),
        "jaxdet, jit": lambda: pipeline(xj, key),
        "jaxdet, jit + vmap over 2 images (per image)": lambda: batched(batch, batch_keys),
    }, args.repeats)
    times["jaxdet, jit + vmap over 2 images (per image)"] = [
        t / 2 for t in times["jaxdet, jit + vmap over 2 images (per image)"]]
    report("Pipeline: anchor targets + proposals + proposal targets, one image", times,
           "numpy (py-faster-rcnn steps)")

    proposals = pipeline(xj, key)[1]
    rois, _ = numpy_propose(x)
    stages, _ = side_by_side({
        "numpy anchor targets": lambda: numpy_anchor_targets(x, rng),
        "jaxdet anchor targets": functools.partial(jax.jit(jax_anchor_targets), xj, key),
        "numpy proposal layer": lambda: numpy_propose(x),
        "jaxdet proposal layer": functools.partial(jax.jit(jax_propose), xj),
        "numpy proposal targets": lambda: numpy_proposal_targets(x, rois, rng),
        "jaxdet proposal targets": functools.partial(jax.jit(jax_proposal_targets), xj, proposals,
                                                     key),
    }, args.repeats)
    print("\nStages, one image")
    print("| stage | median ms | min ms |\n|---|---:|---:|")
    for name, values in stages.items():
        print(f"| {name} | {np.median(values):.1f} | {np.min(values):.1f} |")

    boxes = np.asarray(clip_boxes(decode_boxes(xj["deltas"], xj["anchors"]), xj["image_hw"]))
    top = np.argsort(-x["objectness"], kind="stable")[:PRE_NMS]
    boxes, scores = boxes[top], x["objectness"][top]
    kept = len(reference_nms(boxes, scores, 0.7))
    nms_2000 = jax.jit(functools.partial(nms, iou_threshold=0.7, max_output=POST_NMS))
    nms_all = jax.jit(functools.partial(nms, iou_threshold=0.7, max_output=PRE_NMS))
    boxes_j, scores_j = jnp.asarray(boxes), jnp.asarray(scores)
    times, _ = side_by_side({
        "numpy greedy loop (py-faster-rcnn)": lambda: reference_nms(boxes, scores, 0.7),
        "jaxdet.ops.nms, max_output 2000": lambda: nms_2000(boxes_j, scores_j),
        "jaxdet.ops.nms, max_output 12000": lambda: nms_all(boxes_j, scores_j),
    }, args.repeats)
    report(f"NMS of {PRE_NMS} boxes at IoU 0.7 ({kept} kept by the greedy algorithm)", times,
           "numpy greedy loop (py-faster-rcnn)")
    full_matrix = jax.jit(lambda b: jnp.any(box_iou(b, b) > 0.7, axis=1))
    print("\nXLA temporary memory (compiled memory_analysis): "
          f"jaxdet.ops.nms, max_output 12000: {temp_megabytes(nms_all, boxes_j, scores_j):.2f} MB; "
          f"a dense any(IoU > 0.7) over [12000, 12000]: {temp_megabytes(full_matrix, boxes_j):.0f} MB")
    block_sizes(boxes_j, scores_j, args.repeats)


def temp_megabytes(jitted, *args):
    return jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20


if __name__ == "__main__":
    main()
