"""Benchmark of the jit-compiled training step and of `predict`: images/s, compile time apart.

Presets:
  tiny   the tiny_shapes config (128x128 images, the CPU demo's model).
  vgg16  the vgg16_voc07 config at 600x1000 (random weights; the speed is the same).
Run as a script, the process keeps the host memory XLA frees, as the jaxdet command does
(jaxdet.host_memory); imported as a module, it leaves malloc alone.
Each row is one (batch size, compute dtype, RoI pooling implementation); rows of one run are
measured back to back so that their ratios mean something on a shared machine. The rows' train
steps are compiled at once, in threads (their compile times overlap). "ffi" is the
native custom call, "reference" the pure-jnp RoI pooling (the same model otherwise). With
--torchvision (needs torch and torchvision; on the device JAX uses), torchvision's FasterRCNN
matched to the preset's config (common.torchvision_faster_rcnn: the same trunk, anchors, proposal
counts, sampling, RoIPool, head and optimizer; no resize or padding) is timed in the same run,
after the jaxdet rows (not alternating with them: experiments/bench_peers.py does that).

Usage:
  python experiments/bench_train.py --preset tiny --batch-sizes 1 8 --impls ffi reference
  python experiments/bench_train.py --preset vgg16 --batch-sizes 1 2 4 --dtypes float32 bfloat16 --torchvision
  add --out experiments/results/train_step.md to append the table and the command there.
"""

import argparse
import functools
import os
import platform
import sys
import time

if __name__ == "__main__":  # before JAX starts its threads, as the jaxdet command does
    from jaxdet import host_memory

    host_memory.retain_freed_memory_without_gpu()

import jax  # noqa: E402

import jaxdet.models.detector as detector_module  # noqa: E402
from common import (PRESETS, TorchvisionSide, compile_concurrently, prepared_variant, seconds,  # noqa: E402
                    synthetic_batch)
from jaxdet.configs import load_config  # noqa: E402
from jaxdet.inference import predict  # noqa: E402
from jaxdet.settings import DetectorSettings  # noqa: E402
from jaxdet.data.build import model_num_classes  # noqa: E402
from jaxdet.training.step import step_key  # noqa: E402
from xla_ops import roi_pool  # noqa: E402

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
    """torchvision's FasterRCNN matched to `config` (`TorchvisionSide`): (train images/s, predict
    images/s or None without `with_predict`), each after two warm-up calls."""
    side = TorchvisionSide(config, batch, dtype)

    def timed(fn):
        fn()
        fn()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        return steps * len(side.images) / (time.perf_counter() - start)

    train_ips = timed(side.train_once)
    return train_ips, (timed(side.predict_once) if with_predict else None)


def figure(value, spec):
    return "-" if value is None else format(value, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32"])
    parser.add_argument("--impls", nargs="+", choices=["ffi", "reference"], default=["ffi"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row (after compilation and one warm-up)")
    parser.add_argument("--torchvision", action="store_true", help="also torchvision's FasterRCNN matched to the preset, on the same device")
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
