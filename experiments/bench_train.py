"""Benchmark of the jit-compiled training step and of `predict`: images/s, compile time apart.

Presets:
  tiny   the tiny_shapes config (128x128 images, the CPU demo's model).
  vgg16  the vgg16_voc07 config at 600x1000 (random weights; the speed is the same).
Each row is one (batch size, compute dtype, RoI pooling implementation); rows of one run are
measured back to back so that their ratios mean something on a shared machine. The rows' train
steps are compiled at once, in threads (their compile times overlap). "ffi" is the
native custom call, "reference" the pure-jnp RoI pooling (the same model otherwise). With
--torchvision (needs torch and torchvision, meant for GPUs: on the device JAX uses), torchvision's FasterRCNN with a
VGG16 trunk and the same settings (RoIPool 7x7 at 1/16, anchors 128/256/512 x 3 ratios,
12000/2000 and 6000/300 proposals, 256/128 samples, SGD momentum) is timed in the same run.

Usage:
  python experiments/bench_train.py --preset tiny --batch-sizes 1 8 --impls ffi reference
  python experiments/bench_train.py --preset vgg16 --batch-sizes 1 2 4 --dtypes float32 bfloat16 --torchvision
  add --out experiments/results/train_step.md to append the table and the command there.
"""

import argparse
import concurrent.futures
import copy
import functools
import os
import platform
import sys
import time

import jax
import numpy as np

import jaxdet.models.detector as detector_module
from jaxdet.configs import load_config
from jaxdet.inference import predict
from jaxdet.settings import DetectorSettings
from jaxdet.training import create_train_state
from jaxdet.training.inputs import model_num_classes
from jaxdet.training.step import step_key, train_step
from xla_ops import roi_pool

PRESETS = {"tiny": ("tiny_shapes", (128, 128), 8), "vgg16": ("vgg16_voc07", (600, 1000), 20)}


def synthetic_batch(batch_size, image_hw, max_boxes, num_classes, seed=0):
    """Random images with 1..max_boxes random boxes of 1/10 to 1/2 the image side each."""
    rng = np.random.default_rng(seed)
    height, width = image_hw
    size = rng.uniform(0.1, 0.5, (batch_size, max_boxes, 2)) * np.array([width, height])
    corner = rng.uniform(0, 1, (batch_size, max_boxes, 2)) * (np.array([width, height]) - size)
    count = rng.integers(1, max_boxes + 1, batch_size)
    return {
        "images": rng.normal(size=(batch_size, height, width, 3)).astype(np.float32),
        "boxes": np.concatenate([corner, corner + size], -1).astype(np.float32),
        "labels": rng.integers(0, num_classes, (batch_size, max_boxes)).astype(np.int32),
        "valid": np.arange(max_boxes)[None, :] < count[:, None],
        "image_hw": np.tile(np.array(image_hw, np.int32), (batch_size, 1)),
        "scale": np.ones((batch_size,), np.float32),
    }


def seconds(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def prepared_variant(config, dtype, batch):
    """(config, train state, batch on the device, lowered train step) of one row."""
    config = copy.deepcopy(config)
    config.model.compute_dtype = dtype
    state = create_train_state(config, jax.random.PRNGKey(0))
    batch = jax.device_put(batch)
    return config, state, batch, train_step.lower(state, batch, step_key(state))


def compile_concurrently(lowered):
    """{row: Lowered} -> {row: (Compiled, seconds)}. XLA compiles without holding the GIL, so the
    rows' train steps compile at once in threads, on as many cores: the GPU check's six VGG16
    variants, compiled one after the other, would not fit its time limit. Each row's seconds
    overlap the others'."""
    def compile_one(lowered_step):
        start = time.perf_counter()
        compiled = lowered_step.compile()
        return compiled, time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(lowered)) as pool:
        futures = {row: pool.submit(compile_one, step) for row, step in lowered.items()}
        return {row: future.result() for row, future in futures.items()}


def bench_jaxdet(config, state, batch, compiled_step, steps, with_predict=True):
    """(train images/s, predict compile s, predict images/s) of one row, its train step
    compiled; the last two None without `with_predict`."""
    n = batch["images"].shape[0]
    state, metrics = compiled_step(state, batch, step_key(state))  # first call: warm the caches
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled_step(state, batch, step_key(state))
    jax.block_until_ready((state.params, metrics))
    train_ips = steps * n / (time.perf_counter() - start)
    if not with_predict:
        return train_ips, None, None

    settings = DetectorSettings.from_config(config)
    run = lambda: predict(state.model, state.variables, batch["images"], batch["image_hw"],  # noqa: E731
                          image_scale=batch["scale"], settings=settings)
    compile_predict = seconds(lambda: predict.lower(state.model, state.variables, batch["images"],
                                                    batch["image_hw"], image_scale=batch["scale"],
                                                    settings=settings).compile())
    jax.block_until_ready(run())
    start = time.perf_counter()
    for _ in range(steps):
        out = run()
    jax.block_until_ready(out)
    predict_ips = steps * n / (time.perf_counter() - start)
    return train_ips, compile_predict, predict_ips


def bench_torchvision(config, batch, steps, dtype, with_predict=True):
    """torchvision FasterRCNN, VGG16 trunk, the same settings: (train images/s, predict images/s
    or None without `with_predict`)."""
    import torch
    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator

    class RoIPoolAdapter(torch.nn.Module):
        """RoIPool as RoIHeads calls its box_roi_pool: (features dict, proposals, image_sizes).
        FasterRCNN's constructor accepts only a MultiScaleRoIAlign there, so it is put in after.
        It pools in float32 under bfloat16 autocast, as torchvision's autocast rule for roi_pool
        does on CUDA (its CPU kernel has no bfloat16)."""

        def __init__(self):
            super().__init__()
            self.pool = torchvision.ops.RoIPool((7, 7), 1 / 16)

        def forward(self, features, proposals, image_sizes):
            return self.pool(features["0"].float(), [p.float() for p in proposals])

    # On the device JAX uses: the GPU where there is one (the CPU only for a smoke test).
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rpn, roi = config.rpn, config.roi
    trunk = torchvision.models.vgg16().features[:30]
    for p in trunk[:10].parameters():  # conv1-conv2 frozen, as ours
        p.requires_grad_(False)
    trunk.out_channels = 512
    height, width = batch["images"].shape[1:3]
    model = FasterRCNN(
        trunk, min_size=height, max_size=width, image_mean=[0.0] * 3, image_std=[1.0] * 3,
        rpn_anchor_generator=AnchorGenerator(sizes=(tuple(16 * s for s in config.model.anchor_scales),),
                                             aspect_ratios=(tuple(config.model.anchor_ratios),)),
        rpn_pre_nms_top_n_train=rpn.train_pre_nms, rpn_post_nms_top_n_train=rpn.train_post_nms,
        rpn_pre_nms_top_n_test=rpn.test_pre_nms, rpn_post_nms_top_n_test=rpn.test_post_nms,
        rpn_nms_thresh=rpn.nms_iou, rpn_batch_size_per_image=rpn.num_samples,
        rpn_positive_fraction=rpn.positive_fraction,
        box_head=TwoMLPHead(512 * 7 * 7, 4096), box_predictor=FastRCNNPredictor(4096, model_num_classes(config) + 1),
        box_batch_size_per_image=roi.num_samples, box_positive_fraction=roi.foreground_fraction,
        box_score_thresh=config.test.score_threshold, box_nms_thresh=config.test.nms_iou,
        box_detections_per_img=config.test.max_detections)
    model.roi_heads.box_roi_pool = RoIPoolAdapter()
    model.to(device)
    images = list(torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).to(device))
    targets = [{"boxes": torch.from_numpy(b[v]).to(device), "labels": torch.from_numpy(l[v]).long().to(device) + 1}
               for b, l, v in zip(batch["boxes"], batch["labels"], batch["valid"])]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9,
                                weight_decay=5e-4)
    autocast = functools.partial(torch.autocast, device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def train_once():
        with autocast():
            loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def timed(fn):
        fn()
        fn()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        return steps * len(images) / (time.perf_counter() - start)

    model.train()
    train_ips = timed(train_once)
    if not with_predict:
        return train_ips, None
    model.eval()

    def predict_once():
        with torch.no_grad(), autocast():
            model(images)

    return train_ips, timed(predict_once)


def figure(value, spec):
    return "-" if value is None else format(value, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32"])
    parser.add_argument("--impls", nargs="+", choices=["ffi", "reference"], default=["ffi"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row (after compilation and one warm-up)")
    parser.add_argument("--torchvision", action="store_true", help="also time torchvision's FasterRCNN on the same device (meant for GPUs)")
    parser.add_argument("--train-only", action="store_true", help="the training step only, no predict")
    parser.add_argument("--out", help="append the table to this markdown file")
    args = parser.parse_args(argv)

    file_name, image_hw, max_boxes = PRESETS[args.preset]
    config = load_config(file_name)
    device = jax.devices()[0]
    header = ["batch", "dtype", "RoI pool", "train compile s", "train img/s", "predict compile s", "predict img/s"]
    batches = {b: synthetic_batch(b, image_hw, max_boxes, model_num_classes(config)) for b in args.batch_sizes}
    variants = [(b, dtype) for b in args.batch_sizes for dtype in args.dtypes]
    rows = {}

    def add_row(key, row):
        rows[key] = row
        print(" | ".join(str(c) for c in row), flush=True)

    for impl in args.impls:
        # The model calls jaxdet.models.detector.roi_pool: point it at the implementation measured.
        detector_module.roi_pool = functools.partial(roi_pool, impl=impl)
        jax.clear_caches()  # the model is the same for every implementation: compile again
        prepared = {v: prepared_variant(config, v[1], batches[v[0]]) for v in variants}
        compiled = compile_concurrently({v: p[3] for v, p in prepared.items()})
        for (batch_size, dtype), (row_config, state, batch, _) in prepared.items():
            step, compile_seconds = compiled[batch_size, dtype]
            ti, cp, pi = bench_jaxdet(row_config, state, batch, step, args.steps, not args.train_only)
            add_row((batch_size, dtype, impl), [batch_size, dtype, impl, f"{compile_seconds:.1f}", f"{ti:.2f}",
                                                figure(cp, ".1f"), figure(pi, ".2f")])
        del prepared, compiled
    if args.torchvision:
        for batch_size, dtype in variants:
            ti, pi = bench_torchvision(config, batches[batch_size], args.steps, dtype, not args.train_only)
            add_row((batch_size, dtype, "~torchvision"),
                    [batch_size, dtype, "torchvision", "-", f"{ti:.2f}", "-", figure(pi, ".2f")])
    rows = [rows[key] for key in sorted(rows)]  # by batch size, dtype, then ffi, reference, torchvision

    lines = [f"`python experiments/bench_train.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
             "", f"{args.preset} preset, {image_hw[0]}x{image_hw[1]} images, {device.device_kind} ({device.platform}), "
             f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, jax {jax.__version__}, "
             f"{args.steps} timed steps per row; the rows' train steps compiled at once (their compile times "
             f"overlap)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
