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
The numpy side is tests/numpy_reference_detection.py, the reference the tests check against.

Run: .venv/bin/python experiments/bench_targets.py [--repeats 15]
"""

import argparse
import functools
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import numpy_reference_detection as ref  # noqa: E402
from jaxdet.ops import anchor_grid, box_iou, clip_boxes, decode_boxes, nms  # noqa: E402
from jaxdet.proposals import propose  # noqa: E402
from jaxdet.targets import anchor_targets, proposal_targets  # noqa: E402

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


# --- numpy (py-faster-rcnn's steps) ------------------------------------------------------------

def numpy_anchor_targets(x, rng):
    labels, locs = ref.anchor_labels(x["anchors"], x["gt_boxes"], IMAGE_HW)
    return ref.sample_anchor_labels(labels, rng), locs


def numpy_propose(x):
    return ref.proposals(x["anchors"], x["deltas"], x["objectness"], IMAGE_HW, PRE_NMS, POST_NMS)


def numpy_proposal_targets(x, rois, rng):
    rois, foreground, background, labels, locs = ref.proposal_candidates(
        rois, x["gt_boxes"], x["gt_labels"])
    keep = ref.sample_rois(foreground, background, rng)
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
    kept = len(ref.nms(boxes, scores, 0.7))
    nms_2000 = jax.jit(functools.partial(nms, iou_threshold=0.7, max_output=POST_NMS))
    nms_all = jax.jit(functools.partial(nms, iou_threshold=0.7, max_output=PRE_NMS))
    boxes_j, scores_j = jnp.asarray(boxes), jnp.asarray(scores)
    times, _ = side_by_side({
        "numpy greedy loop (py-faster-rcnn)": lambda: ref.nms(boxes, scores, 0.7),
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
