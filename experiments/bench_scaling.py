"""Data-parallel scaling: the train step on 1, 2, 4 ... devices, and its communication per step.

Measured (side by side in one run, so that the ratios mean something on a shared machine):
for each device count n, the same global batch split over a mesh of n devices, either as
`jaxdet.training.parallel` compiles it ("partitioned": RoI pooling and the per-image stages
split along the batch) or with the same shardings but no mesh in context ("plain": the
partitioner alone, which gathers every device's feature map for the custom call and the RPN
scores for top-k): compile time, the median
step time, the loss of the first step (it must not depend on n), and the bytes the compiled
program moves between devices per step, read from its HLO (all-reduce: the gradient; all-gather:
anything gathered; of it, what RoI pooling gathers: feature maps and pooled cotangents).

On paper (no device needed), for the VGG16 Faster R-CNN: the model's parameters and so the gradient bytes every step sums
over devices, the ring all-reduce traffic per device 2 (D - 1) / D * G, and the step time and
throughput that follow for a few interconnects, from a measured single-device step time.

Data: the synthetic shapes generator at the config's image size (no dataset files needed).

Usage:
  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
      python experiments/bench_scaling.py --preset tiny --devices 1 2 4
  python experiments/bench_scaling.py --preset vgg16 --devices 1 --batch 1   (one GPU)
  python experiments/bench_scaling.py --paper-only --step-seconds 0.1 --images-per-step 1
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from jaxdet.overrides import load_config  # noqa: E402
from jaxdet.data import InputPipeline, ShapesConfig, make_shapes  # noqa: E402
from jaxdet.training import create_train_state, step_key, train_step  # noqa: E402
from jaxdet.devices import batch_layout, make_mesh, replicate, replicated, shard_batch, split_batch  # noqa: E402
from jaxdet.models.build import build_model, init_variables  # noqa: E402
from jaxdet.training.parallel import make_parallel_train_step  # noqa: E402
from jaxdet.training.state import FrozenStages  # noqa: E402

# name -> (config, image (H, W)); the VGG16 image is the paper's 600x1000 padded to a bucket.
PRESETS = {"tiny": ("tiny_shapes", (128, 128)), "vgg16": ("vgg16_voc07", (608, 1024))}
TRAIN_KEYS = ("images", "boxes", "labels", "valid", "image_hw", "scale")
COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s64": 8, "u64": 8, "f64": 8, "s8": 1,
               "u8": 1}
# Bus bandwidth of a ring all-reduce (GB/s, what NCCL reports as busbw) on a few interconnects.
LINKS = {"NVLink 4 (8x H100/H200 in one host)": 350.0, "PCIe 4.0 x16": 20.0,
         "400 Gb/s InfiniBand between hosts": 45.0, "100 Gb/s Ethernet between hosts": 11.0}


def collective_bytes(hlo: str, pooling_shapes: set) -> dict:
    """Bytes of the results of each kind of collective in a compiled HLO text (per device), and of
    the all-gathers of RoI pooling's operands (trailing dims in `pooling_shapes`: the feature
    map's (h, w, C) and the pooled (PH, PW, C), whose cotangents the backward gathers)."""
    totals = {op: 0 for op in COLLECTIVES}
    totals["pooling all-gather"] = 0
    pattern = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
    for line in hlo.splitlines():
        match = pattern.search(line)
        if not match:
            continue
        for dtype, dims in re.findall(r"([a-z]+\d*)\[([\d,]*)\]", match.group(1)):
            shape = tuple(int(n) for n in dims.split(",") if n)
            size = int(np.prod(shape, dtype=np.int64)) * DTYPE_BYTES.get(dtype, 4)
            totals[match.group(2)] += size
            if match.group(2) == "all-gather" and shape[-3:] in pooling_shapes:
                totals["pooling all-gather"] += size
    return totals


def make_batch(config, image_hw: tuple, batch_size: int) -> dict:
    shapes = ShapesConfig(**{**dict(config.data.shapes), "image_size": image_hw}) if "shapes" in config.data \
        else ShapesConfig(image_size=image_hw, max_object_size=min(image_hw) // 2)
    dataset = make_shapes(batch_size, seed=0, config=shapes)
    pipeline = InputPipeline(dataset, batch_size=batch_size, max_boxes=int(config.data.max_boxes), min_size=None,
                             max_size=None, shuffle=False, flip=False)
    batch = pipeline.build_batch(0)
    return {k: batch[k] for k in TRAIN_KEYS}


def measure(config, batch: dict, num_devices: int, partitioned: bool, steps: int) -> dict:
    """Compile and time the data-parallel step on the first `num_devices` devices."""
    mesh = make_mesh(num_devices)
    state = replicate(create_train_state(config, jax.random.key(0)), mesh)
    feature_hwc = jax.eval_shape(lambda p, x: state.model.apply({"params": p, **state.model_state}, x,
                                                                method=state.model.extract),
                                 state.params, batch["images"][:1]).shape[1:]
    jax.clear_caches()  # each program traced anew, not taken from the other variant's trace
    if partitioned:
        step = make_parallel_train_step(mesh)
    else:  # the same shardings, traced without the mesh in context: the partitioner decides alone
        step = jax.jit(train_step, in_shardings=(replicated(mesh), split_batch(mesh), replicated(mesh)),
                       out_shardings=replicated(mesh), donate_argnums=(0,))
    placed = shard_batch(batch, mesh)
    began = time.perf_counter()
    compiled = step.lower(state, placed, replicate(step_key(state), mesh)).compile()
    compile_s = time.perf_counter() - began
    times, losses = [], []
    for _ in range(steps + 1):
        began = time.perf_counter()
        state, metrics = compiled(state, placed, replicate(step_key(state), mesh))
        losses.append(float(metrics["loss"]))  # waits for the step
        times.append(time.perf_counter() - began)
    return {"devices": num_devices, "pool": "partitioned" if partitioned else "plain",
            "layout": str(batch_layout(len(batch["images"]), mesh)), "compile_s": compile_s,
            "step_s": statistics.median(times[1:]), "first_loss": losses[0],
            "bytes": collective_bytes(compiled.as_text(), {tuple(feature_hwc),
                                                           (*config.model.pooled_size, feature_hwc[-1])})}


def parameter_counts(config) -> tuple:
    """(all parameters, trainable ones) of the config's model, from shapes alone."""
    model = build_model(config)
    params = jax.eval_shape(lambda k: init_variables(model, k), jax.random.key(0))["params"]
    frozen = FrozenStages(model.backbone)
    total = trainable = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        n = int(np.prod(leaf.shape))
        total += n
        keys = tuple(getattr(k, "key", str(k)) for k in path)
        trainable += 0 if frozen(keys) else n
    return total, trainable


def paper(step_s: float | None, images_per_step: int) -> list:
    """The VGG16 Faster R-CNN's communication per step, and the projection from `step_s` if given."""
    name = PRESETS["vgg16"][0]
    total, trainable = parameter_counts(load_config(name))
    grad_bytes = 4 * total  # float32 gradients of every parameter (the frozen ones are computed too)
    lines = [f"### On paper: {name}", "",
             f"- parameters: {total:,} ({trainable:,} trainable; the frozen stages' gradients are still "
             f"computed and summed, since the step reports the global gradient norm)",
             f"- gradient all-reduced per step: G = 4 B x {total:,} = {grad_bytes / 2**20:,.1f} MiB, whatever "
             "the batch size",
             "- ring all-reduce: each device sends and receives 2 (D - 1) / D x G per step "
             f"({2 * grad_bytes / 2**20:,.0f} MiB as D grows)", ""]
    if step_s is None:
        return lines
    lines += [f"Projected from a single-device step of {step_s * 1e3:.1f} ms at {images_per_step} image(s) per "
              "device (weak scaling: the global batch grows with D), with no overlap of the all-reduce with the "
              "backward pass (the worst case; XLA overlaps part of it):", "",
              "| interconnect (bus GB/s) | D | all-reduce ms | step ms | images/s | efficiency |",
              "|---|---|---|---|---|---|"]
    for link, gbps in LINKS.items():
        for d in (1, 2, 4, 8, 16, 32):
            comm = 2 * (d - 1) / d * grad_bytes / (gbps * 1e9)
            step = step_s + comm
            lines.append(f"| {link} ({gbps:g}) | {d} | {comm * 1e3:.1f} | {step * 1e3:.1f} | "
                         f"{d * images_per_step / step:.1f} | {step_s / step:.0%} |")
    lines.append("")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch", type=int, default=8, help="global batch (the same for every device count)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    parser.add_argument("--pools", nargs="+", choices=("partitioned", "plain"), default=["partitioned", "plain"])
    parser.add_argument("--paper-only", action="store_true", help="only the on-paper part")
    parser.add_argument("--step-seconds", type=float, help="single-device VGG16 step time for the projection "
                        "(default: the 1-device step measured with --preset vgg16; none otherwise)")
    parser.add_argument("--images-per-step", type=int, help="images of that step (default: --batch)")
    args = parser.parse_args(argv)

    config_name, image_hw = PRESETS[args.preset]
    config = load_config(config_name)
    config.train.batch_size = args.batch
    print(f"# bench_scaling: {' '.join(sys.argv)}")
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices "
          f"({jax.devices()[0].device_kind}), {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    rows = []
    if not args.paper_only:
        batch = make_batch(config, image_hw, args.batch)
        for n in args.devices:
            # On one device both are the same program.
            for pool in args.pools if n > 1 else args.pools[:1]:
                row = measure(config, batch, n, pool == "partitioned", args.steps)
                rows.append(row)
                print(row, flush=True)
        base = rows[0]
        print(f"\n### Measured: {args.preset}, global batch {args.batch}, {image_hw[0]}x{image_hw[1]}\n")
        print("| devices | layout | step | compile s | step ms | step vs first row | first-step loss | "
              "all-reduce MiB | all-gather MiB | of it RoI pooling's MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            b = r["bytes"]
            print(f"| {r['devices']} | {r['layout']} | {r['pool']} | {r['compile_s']:.1f} | {r['step_s'] * 1e3:.1f} | "
                  f"{r['step_s'] / base['step_s']:.2f} | {r['first_loss']:.6f} | "
                  f"{b['all-reduce'] / 2**20:.2f} | {b['all-gather'] / 2**20:.2f} | "
                  f"{b['pooling all-gather'] / 2**20:.2f} |")
        losses = [r["first_loss"] for r in rows]
        print(f"\nfirst-step loss spread over all rows: {max(losses) - min(losses):.2e}\n")
    one = [r for r in rows if r["devices"] == 1 and r["pool"] == "partitioned" and args.preset == "vgg16"]
    step_s = args.step_seconds if args.step_seconds is not None else (one[0]["step_s"] if one else None)
    for line in paper(step_s, args.images_per_step or args.batch):
        print(line)


if __name__ == "__main__":
    main()
