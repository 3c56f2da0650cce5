"""Benchmark: jaxdet.ops.nms per block size, to choose the block size by measurement.

The proposal layer's NMS of Faster R-CNN training (Ren et al. 2015; py-faster-rcnn's
RPN_PRE_NMS_TOP_N / RPN_POST_NMS_TOP_N): the 12000 top-scoring boxes of a 600x1000 image
(decoded from random RPN outputs over VGG16's 37x62x9 anchors, clipped), IoU 0.7, 2000 kept.
Every block size gives the same kept boxes (checked); only the time changes. The block sizes
are timed in turn in each round (in reverse order every other round, so that they share
whatever load the machine has), on the default device: the GPU where JAX finds one.

Usage:  python experiments/bench_nms.py [--block-sizes 32 64 128 256 512 1024 2048] [--repeats 20]
                                        [--boxes 12000] [--out FILE.md]
"""

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.ops import anchor_grid, clip_boxes, decode_boxes, nms
from jaxdet.ops.nms import ACCELERATOR_BLOCK_SIZE, CPU_BLOCK_SIZE

IMAGE_HW = (600, 1000)
FEATURE_HW = (37, 62)
IOU, MAX_OUTPUT = 0.7, 2000


def proposal_boxes(num_boxes, seed=0):
    """The `num_boxes` top-scoring decoded, clipped boxes and their scores, descending."""
    rng = np.random.default_rng(seed)
    anchors = anchor_grid(FEATURE_HW)
    deltas = jnp.asarray(rng.normal(0, 0.1, anchors.shape).astype(np.float32))
    boxes = np.asarray(clip_boxes(decode_boxes(deltas, anchors), jnp.asarray(IMAGE_HW)))
    scores = rng.uniform(size=len(boxes)).astype(np.float32)
    top = np.argsort(-scores, kind="stable")[:num_boxes]
    return jnp.asarray(boxes[top]), jnp.asarray(scores[top])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--boxes", type=int, default=12000)
    parser.add_argument("--out", help="append the table to this markdown file")
    args = parser.parse_args(argv)

    boxes, scores = proposal_boxes(args.boxes)
    max_output = min(MAX_OUTPUT, args.boxes)
    device = jax.devices()[0]
    runs = {}
    for size in args.block_sizes:
        runs[size] = jax.jit(functools.partial(nms, iou_threshold=IOU, max_output=max_output,
                                               block_size=size))
    # Warm-up (compilation) and the check that every block size keeps the same boxes.
    kept = {size: jax.block_until_ready(run(boxes, scores)) for size, run in runs.items()}
    for run in runs.values():
        jax.block_until_ready(run(boxes, scores))
    first = args.block_sizes[0]
    for size, (keep, count) in kept.items():
        assert int(count) == int(kept[first][1]) and (np.asarray(keep) == np.asarray(kept[first][0])).all(), \
            f"block size {size} keeps other boxes than block size {first}"
    times = {size: [] for size in runs}
    order = list(runs)
    for i in range(args.repeats):
        for size in (order if i % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            jax.block_until_ready(runs[size](boxes, scores))
            times[size].append(time.perf_counter() - start)
    medians = {size: float(np.median(t)) for size, t in times.items()}
    best = min(medians, key=medians.get)
    default = CPU_BLOCK_SIZE if device.platform == "cpu" else ACCELERATOR_BLOCK_SIZE

    lines = [f"`python experiments/bench_nms.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             f"NMS of {args.boxes} boxes (IoU {IOU}, {max_output} kept; {int(kept[first][1])} boxes kept) on "
             f"{device.device_kind} ({device.platform}), jax {jax.__version__}, {os.cpu_count()} CPUs; "
             f"{args.repeats} rounds, block sizes in turn", "",
             "| block_size | median ms | min ms | max ms | median / best |", "|---:|---:|---:|---:|---:|"]
    for size in args.block_sizes:
        t = np.array(times[size]) * 1e3
        mark = " (default here)" if size == default else ""
        lines.append(f"| {size}{mark} | {np.median(t):.2f} | {t.min():.2f} | {t.max():.2f} | "
                     f"{medians[size] / medians[best]:.2f} |")
    lines += ["", f"Best block size on {device.device_kind}: **{best}** ({medians[best] * 1e3:.2f} ms median)"
              + (f"; the default {default}: {medians[default] * 1e3:.2f} ms" if default in medians else
                 f"; the default {default} was not among those timed")]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
