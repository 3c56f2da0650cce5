"""Benchmark: images per second the input pipeline delivers.

Two workloads, each with several worker counts side by side in one run (ratios against one
worker, since shared machines are noisy):
  voc:    VOC-sized JPEGs (500x375, written to a temporary VOC tree by the VOC writer) read by
          the VOC reader, decoded, resized to 600/1000, flipped, normalised (torchvision) and
          padded into the (608, 1024)/(1024, 608) buckets, batch 2 (the paper's recipe).
  shapes: the in-memory synthetic set at 128x128 (the main job), native size, batch 8.
Plus a per-stage profile of one VOC image (decode, resize, normalise) on one thread.

Run: .venv/bin/python experiments/bench_data.py [--images 64] [--seconds 8] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from jaxdet.data import InputPipeline, ShapesConfig, make_shapes, read_voc, write_voc
from jaxdet.data.records import load_image
from jaxdet.data.transforms import hflip, normalize, resize


def images_per_second(pipeline: InputPipeline, seconds: float) -> float:
    """Consumes batches as fast as they come for about `seconds` (after one warm-up batch)."""
    iterator = pipeline.batches(0)
    next(iterator)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += len(next(iterator)["image_id"])
    elapsed = time.perf_counter() - start
    iterator.close()
    return images / elapsed


def stage_profile(dataset, repeats: int) -> dict:
    """Milliseconds per image of each stage, one thread."""
    times = {"decode": [], "resize": [], "flip": [], "normalize": []}
    for i in range(repeats):
        record = dataset[i % len(dataset)]
        t0 = time.perf_counter()
        image = load_image(record)
        t1 = time.perf_counter()
        image, boxes, _ = resize(image, record.boxes, min_size=600, max_size=1000)
        t2 = time.perf_counter()
        image, boxes = hflip(image, boxes)
        t3 = time.perf_counter()
        normalize(image)
        t4 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key].append(dt * 1e3)
    return {key: float(np.median(v)) for key, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="VOC-sized JPEGs to write")
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before the run {os.getloadavg()[0]:.2f} (other jobs share the CPUs)")

    with tempfile.TemporaryDirectory() as root:
        config = ShapesConfig(image_size=(375, 500), min_object_size=40, max_object_size=300)
        write_voc(make_shapes(args.images, seed=0, config=config), root, "bench",
                  image_format="jpg")
        voc = read_voc(root, "bench", class_names=config.classes)
        sizes = [os.path.getsize(r.path) for r in voc.records]
        print(f"voc: {len(voc)} JPEGs 500x375, mean {np.mean(sizes) / 1024:.0f} KiB")
        profile = stage_profile(voc, 3 * len(voc))
        print("voc stages, ms per image (median, one thread): "
              + ", ".join(f"{k} {v:.2f}" for k, v in profile.items())
              + f"; sum {sum(profile.values()):.2f} -> {1e3 / sum(profile.values()):.0f} img/s")
        rates = {}
        for workers in args.workers:
            pipeline = InputPipeline(voc, batch_size=2, max_boxes=32, min_size=600,
                                     max_size=1000, num_workers=workers, prefetch=2 * workers,
                                     seed=0)
            rates[workers] = images_per_second(pipeline, args.seconds)
        print("voc pipeline, 600/1000, batch 2: " + ", ".join(
            f"{w} workers {r:.1f} img/s (x{r / rates[args.workers[0]]:.2f})"
            for w, r in rates.items()))

    t0 = time.perf_counter()
    shapes = make_shapes(512, seed=0)
    generate = (time.perf_counter() - t0) / 512 * 1e3
    print(f"shapes: generating 128x128 images in memory: {generate:.2f} ms per image "
          f"({1e3 / generate:.0f} img/s)")
    rates = {}
    for workers in args.workers:
        pipeline = InputPipeline(shapes, batch_size=8, max_boxes=8, min_size=None, max_size=None,
                                 num_workers=workers, prefetch=2 * workers, seed=0)
        rates[workers] = images_per_second(pipeline, args.seconds)
    print("shapes pipeline, 128x128 native, batch 8: " + ", ".join(
        f"{w} workers {r:.0f} img/s (x{r / rates[args.workers[0]]:.2f})"
        for w, r in rates.items()))
    print(f"load average after the run {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
