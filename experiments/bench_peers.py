"""jaxdet against torchvision on the same machine, alternating the two (the VGG16 rows: a process each).

What a user would pick instead of jaxdet is torchvision's detection models. This times both on
the platform JAX runs on (the CPU; the GPU when there is one, torch then on CUDA too):
  roi_pool  RoI max pooling, forward and forward+backward (the gradient of the features), 7x7 at
            1/16: train (2 images x 128 RoIs on [2, 38, 63, 512], a 600x1000 batch of 2 at
            stride 16), test (300 RoIs on [1, 38, 63, 512]) and 2000 RoIs on [1, 50, 50, 512].
            jaxdet: xla_ops.roi_pool(rounding="round", impl="ffi"), jitted, NHWC; torchvision:
            torchvision.ops.roi_pool on NCHW (converted once, before timing). Both round RoIs
            the same way; their forward outputs are compared value for value.
  roi_align RoIAlign 7x7, sampling 2, aligned, at a ResNet-50-FPN head's shapes: 512 RoIs of 2
            images (forward, forward+backward) and 1000 RoIs (forward) on the stride-8 map
            [2, 100, 168, 256] and the stride-16 map [2, 50, 84, 256]; xla_ops.roi_align on NHWC
            against torchvision.ops.roi_align on NCHW (experiments/common.py's roi_align_sides).
  tiny      the tiny_shapes config at 128x128, batch 8: jaxdet.training.step.train_step and
            jaxdet.inference.predict as a user calls them, against torchvision's FasterRCNN
            matched to the config (experiments/common.py's torchvision_faster_rcnn: a torch
            port of TinyVGG, the same anchors, proposal counts, sampling, RoIPool, head and
            optimizer; its transform neither resizes nor pads).
  vgg16     the vgg16_voc07 config's training step at 600x1000, batch 1 and batch 2 (random
            weights), against the same FasterRCNN with torchvision.models.vgg16().features[:30]
            (conv1-conv2 frozen), TwoMLPHead 4096, SGD momentum 0.9 and weight decay 5e-4;
            for each dtype pair of --vgg16-dtypes (default: both in float32; jaxdet's
            model.compute_dtype=bfloat16 against torchvision in float32; both in bfloat16,
            torchvision under torch.autocast). Each library runs in a process of its own,
            driven in alternation from this one (--vgg16-processes one: both in this process);
            jaxdet's process keeps the memory it frees mapped, as the jaxdet command does
            (jaxdet.host_memory; --retain-host-memory chooses the sides).
  fpn       torchvision's fasterrcnn_resnet50_fpn (v1, random weights with spread-out scores as
            experiments/fpn_vs_torchvision.py makes them) and jaxdet's FPNFasterRCNN with that state
            dict imported: predict on one 800x1056 image (jaxdet.models.fpn_detector.predict on the
            prepared canvas; torchvision's model in eval mode, its transform a no-op resize at that
            size) and the training step at batch 2 on 800x1056 images with 6 boxes each (jaxdet's
            train_step, fasterrcnn_resnet50_fpn_coco's recipe; torchvision's model in train mode,
            SGD momentum 0.9, weight decay 1e-4, trainable_backbone_layers 3 on both).
The work that still differs between the two sides: experiments/results/peers.md.

Method: every call is made (compiled, warmed) --warmup times on each side first; then in each
of R rounds one call of each side is timed, jaxdet first in even rounds and torchvision first in
odd ones (ABBA), so that both share whatever load the machine has. Per measurement and side: the
median and the min-max of its round times; the ratio torchvision time / jaxdet time (higher:
jaxdet faster) of the medians, and the min-max of the per-round ratios. Rounds where one side
took more than 1.5x its own median are listed (torch's OpenMP threads spin-waiting while the
machine is loaded shows up there, not averaged in). jax calls end with block_until_ready, torch
calls on CUDA with torch.cuda.synchronize. torch runs os.cpu_count() threads (set explicitly),
XLA its own pool of as many. The load average is read at the start and at the end.

Usage (torch and torchvision: the `bench` extra):
  PYTHONPATH=. python experiments/bench_peers.py                      # all, default rounds
  PYTHONPATH=. python experiments/bench_peers.py --only roi_pool tiny --rounds 2   # a quick check
  add --out experiments/results/peers.md to append the table, the command and the machine there.
Defaults: 30 rounds for RoI pooling and RoIAlign, 20 for tiny, 5 for VGG16, 3 for fpn (--roi-rounds,
--tiny-rounds, --vgg16-rounds, --fpn-rounds; --rounds sets all). On a GPU torch and JAX share its memory: JAX takes
half of it (XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 unless set).
"""

import os

if __name__ == "__main__":  # before JAX starts: leave torch room on a GPU
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

import argparse
import functools
import multiprocessing
import platform
import sys
import time
from typing import NamedTuple
from unittest import mock

import jax
import numpy as np

import common
from jaxdet import host_memory
from jaxdet.configs import load_config
from jaxdet.inference import predict
from jaxdet.settings import DetectorSettings
from jaxdet.training import create_train_state
from jaxdet.data.build import model_num_classes
from jaxdet.training.step import step_key, train_step

SLOW = 1.5  # a round slower than this times its side's median is listed
PARTS = ("roi_pool", "roi_align", "tiny", "vgg16", "fpn")
# (what, features shape [N, h, w, C], RoIs in all, the image size the RoIs lie in)
ROI_SHAPES = (("train: 2 x 128 RoIs on [2, 38, 63, 512]", (2, 38, 63, 512), 2 * 128, (600, 1000)),
              ("test: 300 RoIs on [1, 38, 63, 512]", (1, 38, 63, 512), 300, (600, 1000)),
              ("2000 RoIs on [1, 50, 50, 512]", (1, 50, 50, 512), 2000, (800, 800)))


# --- the arithmetic of the report (pure; tests/project/test_bench_peers.py) -------------------

class Summary(NamedTuple):
    """One measurement: `rounds`; per side (median, min, max) of its round times in seconds;
    ratio = torchvision median / jaxdet median; ratio_min, ratio_max of the per-round ratios;
    slow = [(round (1-based), side, seconds, times its side's median)] of the rounds slower than
    `slow` x their side's median."""
    rounds: int
    jaxdet: tuple
    torchvision: tuple
    ratio: float
    ratio_min: float
    ratio_max: float
    slow: list


def summarise(jaxdet_seconds, torchvision_seconds, slow=SLOW):
    """Summary of two equally long sequences of round times (round i of each side together)."""
    a, b = np.asarray(jaxdet_seconds, float), np.asarray(torchvision_seconds, float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equally long non-empty sequences, got shapes {a.shape} and {b.shape}")
    per_round = b / a
    flagged = [(i + 1, side, float(t[i]), float(t[i] / np.median(t)))
               for i in range(len(a)) for side, t in (("jaxdet", a), ("torchvision", b))
               if t[i] > slow * np.median(t)]
    return Summary(len(a), (float(np.median(a)), float(a.min()), float(a.max())),
                   (float(np.median(b)), float(b.min()), float(b.max())),
                   float(np.median(b) / np.median(a)), float(per_round.min()), float(per_round.max()), flagged)


def milliseconds(seconds):
    """Seconds as milliseconds to 3-4 significant digits: 0.0123456 -> '12.35', 4.5 -> '4500'."""
    ms = seconds * 1e3
    for limit, digits in ((1000, 0), (100, 1), (1, 2)):
        if ms >= limit:
            return f"{ms:.{digits}f}"
    return f"{ms:.3f}"


def table_lines(rows, slow=SLOW):
    """A markdown table of rows [(what one call does, Summary)], then the slow rounds one a line."""
    lines = ["| measurement (one call of each side per round) | rounds | jaxdet ms: median (min-max) | "
             "torchvision ms: median (min-max) | torchvision / jaxdet: ratio of medians (per-round min-max) | "
             f"rounds > {slow}x own median: jaxdet, torchvision |",
             "|---|---:|---:|---:|---:|---:|"]
    details = []
    for what, s in rows:
        spread = [f"{milliseconds(m)} ({milliseconds(lo)}-{milliseconds(hi)})"
                  for m, lo, hi in (s.jaxdet, s.torchvision)]
        count = [sum(1 for _, side, _, _ in s.slow if side == name) for name in ("jaxdet", "torchvision")]
        lines.append(f"| {what} | {s.rounds} | {spread[0]} | {spread[1]} | **{s.ratio:.2f}x** "
                     f"({s.ratio_min:.2f}-{s.ratio_max:.2f}) | {count[0]}, {count[1]} |")
        details += [f"- {what}: round {i} of {s.rounds}, {side} {milliseconds(t)} ms = {factor:.1f}x its median"
                    for i, side, t, factor in s.slow]
    if details:
        lines += ["", f"Rounds slower than {slow}x their side's median:", ""] + details
    return lines


# --- the measurements --------------------------------------------------------------------------

def alternate(jaxdet_fn, torchvision_fn, rounds, warmup):
    """Summary of `rounds` ABBA rounds (common.in_rounds) after `warmup` calls of each."""
    t = common.in_rounds({"jaxdet": jaxdet_fn, "torchvision": torchvision_fn}, rounds, warmup)
    return summarise(t["jaxdet"], t["torchvision"])


def say(*parts):
    print(*parts, flush=True)


def roi_pool_part(rounds, warmup):
    """(rows, notes): forward and forward+backward at the three ROI_SHAPES."""
    rows, notes = [], []
    for shape, (n, h, w, c), num_rois, image_hw in ROI_SHAPES:
        features, rois = common.make_inputs(num_rois, channels=c, image_hw=image_hw, feature_hw=(h, w),
                                                    num_images=n)
        fwd, fwd_bwd = common.jax_fns(features, rois, "ffi", rounding="round")
        tv, tv_out = common.torchvision_fns(features, rois, common.cotangent(num_rois, c))
        diff = np.asarray(fwd()) != tv_out
        notes.append(f"- RoI pooling {shape}: {int(diff.sum())} of {diff.size} output values differ between "
                     f"the two sides")
        for what, jf, tf in (("forward", fwd, tv["torchvision forward"]),
                             ("forward+backward (gradient of the features)", fwd_bwd,
                              tv["torchvision forward+backward"])):
            row = (f"RoI pool 7x7 {what}, {shape}", alternate(jf, tf, rounds, warmup))
            say(*table_lines([row])[2:3])
            rows.append(row)
    return rows, notes


def roi_align_part(rounds, warmup):
    """(rows, notes): RoIAlign 7x7, sampling 2, aligned, at a ResNet-50-FPN head's shapes
    (common.ROI_ALIGN_MAPS): 512 RoIs of 2 images forward and forward+backward, 1000 RoIs forward."""
    rows, notes = [], []
    rng = np.random.default_rng(1)
    for name, shape, scale in common.ROI_ALIGN_MAPS:
        features = rng.normal(size=shape).astype(np.float32)
        for num_rois, backward in ((512, False), (512, True), (1000, False)):
            jaxdet_fns, torchvision_fns, difference = common.roi_align_sides(
                features, common.roi_align_rois(num_rois, shape[0]), scale, backward=backward)
            what = "forward+backward" if backward else "forward"
            row = (f"RoIAlign 7x7 {what}, {num_rois} RoIs, {name} {list(shape)}",
                   alternate(jaxdet_fns["jaxdet"], torchvision_fns["torchvision"], rounds, warmup))
            say(*table_lines([row])[2:3])
            rows.append(row)
            if not backward:
                notes.append(f"- RoIAlign {num_rois} RoIs, {name}: largest output difference {difference:.1e}")
    return rows, notes


class JaxdetSide:
    """jaxdet's model of `config` on one batch, called as a user calls it: `train_once()` is
    `train_step(state, batch, step_key(state))` (the state donated and replaced), `predict_once()`
    `predict(model, variables, images, image_hw, image_scale=..., settings=...)`; each ends with
    block_until_ready on its outputs."""

    def __init__(self, config, batch):
        self.state = create_train_state(config, jax.random.PRNGKey(0))
        self.settings = DetectorSettings.from_config(config)
        self.use_batch(batch)
        self.metrics = None

    def use_batch(self, batch):
        self.batch = jax.device_put(batch)  # once, outside the timed calls (torch's too)

    def train_once(self):
        self.state, self.metrics = train_step(self.state, self.batch, step_key(self.state))
        jax.block_until_ready((self.state, self.metrics))

    def predict_once(self):
        s, b = self.state, self.batch
        return jax.block_until_ready(predict(s.model, s.variables, b["images"], b["image_hw"],
                                             image_scale=b["scale"], settings=self.settings))


def loss_note(what, jaxdet_loss, torchvision_loss):
    return (f"- {what}: last training losses (random weights; finite is what matters) jaxdet "
            f"{jaxdet_loss:.4g}, torchvision {torchvision_loss:.4g}")


def tiny_part(rounds, warmup):
    """(rows, notes): the tiny config's training step and predict at batch 8."""
    config = load_config("tiny_shapes")
    _, image_hw, max_boxes = common.PRESETS["tiny"]
    batch_size = config.train.batch_size
    batch = common.synthetic_batch(batch_size, image_hw, max_boxes, model_num_classes(config))
    jd, tv = JaxdetSide(config, batch), common.TorchvisionSide(config, batch)
    where = f"tiny_shapes, batch {batch_size}, {image_hw[0]}x{image_hw[1]}"
    rows = []
    for what, jf, tf in ((f"{where}: training step (forward, losses, backward, optimizer update)",
                          jd.train_once, tv.train_once),
                         (f"{where}: predict (proposals, RoI head, per-class NMS, 100 detections per image)",
                          jd.predict_once, tv.predict_once)):
        row = (what, alternate(jf, tf, rounds, warmup))
        say(*table_lines([row])[2:3])
        rows.append(row)
    return rows, [loss_note(where, float(jd.metrics["loss"]), float(tv.loss))]


def fpn_part(rounds, warmup, image_hw=(800, 1056), batch_size=2, boxes_per_image=6):
    """(rows, notes): fasterrcnn_resnet50_fpn's predict (batch 1) and training step (batch 2), both sides with
    the same weights (torchvision's state dict imported)."""
    import io

    import torch

    from jaxdet.configs import fasterrcnn_resnet50_fpn_coco as coco
    from jaxdet.data import with_class_names
    from jaxdet.models.fpn_detector import predict as fpn_predict, settings_from_config
    from jaxdet.models.fpn_transform import transform_batch
    from jaxdet.models.torchvision_detection import load_torchvision_detection

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    tmodel = common.torchvision_fpn_model("v1")
    buffer = io.BytesIO()
    torch.save(tmodel.state_dict(), buffer)
    buffer.seek(0)
    config = with_class_names(coco.get_config(), coco.COCO_CATEGORIES_TORCHVISION)
    state = create_train_state(config, jax.random.PRNGKey(0))
    variables = load_torchvision_detection(buffer, state.model)
    params = variables.pop("params")
    state = state.replace(params=params, model_state=variables, opt_state=state.tx.init(params))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, *image_hw, 3), dtype=np.uint8)
    prepared, hw = transform_batch(list(images), min_size=800, max_size=1333)
    assert prepared.shape[1:3] == image_hw, prepared.shape  # no resize, no padding: the same input on both sides
    settings = settings_from_config(config)
    one, one_hw = jax.device_put(prepared[:1]), jax.device_put(hw[:1])
    tmodel.to(device)
    torch_images = [torch.from_numpy(im).permute(2, 0, 1).float().div(255).to(device) for im in images]

    def jaxdet_predict():
        return jax.block_until_ready(fpn_predict(state.model, state.variables, one, one_hw, settings=settings))

    def torchvision_predict():
        with torch.no_grad():
            found = tmodel.eval()([torch_images[0]])
        sync()
        return found

    xy = rng.uniform(0, 600, (batch_size, boxes_per_image, 2))
    wh = rng.uniform(40, 400, (batch_size, boxes_per_image, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [image_hw[1], image_hw[0]])], -1).astype(np.float32)
    labels = rng.integers(0, 90, (batch_size, boxes_per_image)).astype(np.int32)
    batch = jax.device_put({"images": prepared, "boxes": boxes, "labels": labels,
                            "valid": np.ones(labels.shape, bool), "image_hw": hw,
                            "scale": np.ones(batch_size, np.float32)})
    targets = [{"boxes": torch.from_numpy(b).to(device), "labels": torch.from_numpy(l.astype(np.int64) + 1).to(device)}
               for b, l in zip(boxes, labels)]
    optimizer = torch.optim.SGD([p for p in tmodel.parameters() if p.requires_grad], lr=0.02 / 16, momentum=0.9,
                                weight_decay=1e-4)
    sides = {"state": state, "metrics": None, "loss": None}

    def jaxdet_train():
        sides["state"], sides["metrics"] = train_step(sides["state"], batch, step_key(sides["state"]))
        jax.block_until_ready(sides["metrics"])

    def torchvision_train():
        losses = tmodel.train()(torch_images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sides["loss"] = float(loss.detach())  # waits for the step

    detections = (int(np.asarray(jaxdet_predict().detections.valid).sum()),
                  len(torchvision_predict()[0]["boxes"]))
    where = f"fasterrcnn_resnet50_fpn (v1), {image_hw[0]}x{image_hw[1]}"
    rows = []
    for what, jf, tf in ((f"{where}, batch 1: predict (transform excluded: RPN over 5 levels, RoIAlign, head, "
                          "post-processing)", jaxdet_predict, torchvision_predict),
                         (f"{where}, batch {batch_size}: training step (forward, 4 losses, backward, SGD update)",
                          jaxdet_train, torchvision_train)):
        row = (what, alternate(jf, tf, rounds, warmup))
        say(*table_lines([row])[2:3])
        rows.append(row)
    notes = [f"- {where} predict: detections jaxdet {detections[0]}, torchvision {detections[1]} (of 100)",
             loss_note(where, float(sides["metrics"]["loss"]), sides["loss"])]
    return rows, notes


# (jaxdet's model.compute_dtype, torchvision's dtype: "bfloat16" under torch.autocast) of the
# VGG16 rows: both in float32; jaxdet in bfloat16 against torchvision as it runs by default; both
# in bfloat16.
VGG16_DTYPES = ("float32/float32", "bfloat16/float32", "bfloat16/bfloat16")


def build_vgg16_side(library, dtype, batch_sizes):
    """One side of the VGG16 rows: ("jaxdet" or "torchvision", its dtype) on the vgg16_voc07
    config at 600x1000, with a synthetic batch per size -> (side, batches, last_loss)."""
    _, image_hw, max_boxes = common.PRESETS["vgg16"]
    config = load_config("vgg16_voc07")
    if library == "jaxdet":
        config.model.compute_dtype = dtype
        config.model.cpu_bf16_kernels = dtype == "bfloat16"  # the AMX kit where the CPU has it
    batches = {b: common.synthetic_batch(b, image_hw, max_boxes, model_num_classes(config))
               for b in batch_sizes}
    if library == "jaxdet":
        side = JaxdetSide(config, batches[batch_sizes[0]])
        return side, batches, lambda: float(side.metrics["loss"])
    import torch

    torch.set_num_threads(os.cpu_count())
    side = common.TorchvisionSide(config, batches[batch_sizes[0]], dtype=dtype)
    return side, batches, lambda: float(side.loss)


class LocalSide:
    """A side of the VGG16 rows in this process: `use_batch(b)`, `train_once()` (the timed call)
    and `loss()`, the last step's loss."""

    def __init__(self, library, dtype, batch_sizes):
        self.side, self.batches, self.loss = build_vgg16_side(library, dtype, batch_sizes)

    def use_batch(self, b):
        self.side.use_batch(self.batches[b])

    def train_once(self):
        self.side.train_once()

    def close(self):
        pass


def _serve_side(conn, library, dtype, batch_sizes):
    """The body of a side's own process: builds it, then runs the parent's commands."""
    side = LocalSide(library, dtype, batch_sizes)
    conn.send("ready")
    commands = {"batch": side.use_batch, "train": side.train_once, "loss": side.loss}
    for command, args in iter(conn.recv, ("stop", ())):
        conn.send(commands[command](*args))


class ProcessSide:
    """A side of the VGG16 rows in a process of its own (spawned, so the jaxdet side never
    imports torch), driven through a pipe; the same methods as `LocalSide`. A round's time then
    includes one pipe message each way (well under a millisecond)."""

    def __init__(self, library, dtype, batch_sizes, retain_host_memory=False):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve_side, args=(child, library, dtype, tuple(batch_sizes)),
                                       daemon=True)
        # glibc reads these when the process starts, before its first thread (jaxdet.host_memory).
        with mock.patch.dict(os.environ, host_memory.ENVIRONMENT if retain_host_memory else {}):
            self.process.start()
        if self.conn.recv() != "ready":
            raise RuntimeError(f"the {library} side did not start")

    def _call(self, command, *args):
        self.conn.send((command, args))
        return self.conn.recv()

    def use_batch(self, b):
        self._call("batch", b)

    def train_once(self):
        self._call("train")

    def loss(self):
        return self._call("loss")

    def close(self):
        self.conn.send(("stop", ()))
        self.process.join()


def vgg16_part(rounds, warmup, batch_sizes=(1, 2), dtype_pairs=VGG16_DTYPES, processes="two",
               retain_host_memory=("jaxdet",)):
    """(rows, notes): the vgg16_voc07 training step at 600x1000 per batch size and dtype pair,
    each side in a process of its own (`processes="two"`) or both in this one ("one"). The
    libraries named in `retain_host_memory` run with jaxdet.host_memory's malloc settings (in
    processes of their own only)."""
    _, image_hw, _ = common.PRESETS["vgg16"]
    if processes == "two":
        layout = f"a process each, freed memory retained by {' and '.join(retain_host_memory) or 'neither'}"
    else:
        layout = "one process"
    rows, notes = [], []
    for pair in dtype_pairs:
        jaxdet_dtype, torchvision_dtype = pair.split("/")
        if processes == "two":
            jd, tv = (ProcessSide(library, dtype, batch_sizes, library in retain_host_memory)
                      for library, dtype in (("jaxdet", jaxdet_dtype), ("torchvision", torchvision_dtype)))
        else:
            jd, tv = LocalSide("jaxdet", jaxdet_dtype, batch_sizes), LocalSide("torchvision", torchvision_dtype, batch_sizes)
        for b in batch_sizes:
            jd.use_batch(b)
            tv.use_batch(b)
            where = (f"vgg16_voc07, batch {b}, {image_hw[0]}x{image_hw[1]}, jaxdet {jaxdet_dtype} / "
                     f"torchvision {torchvision_dtype}, {layout}")
            row = (f"{where}: training step (forward, losses, backward, optimizer update)",
                   alternate(jd.train_once, tv.train_once, rounds, warmup))
            say(*table_lines([row])[2:3])
            rows.append(row)
            notes.append(loss_note(where, jd.loss(), tv.loss()))
        jd.close()
        tv.close()
    return rows, notes


# --- the report --------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_text(load):
    return "/".join(f"{x:.2f}" for x in load)


def machine_line(load_start, load_end):
    import torch
    import torchvision

    device = jax.devices()[0]
    line = (f"{platform.node()}: {cpu_model()}, {os.cpu_count()} cores; JAX {jax.__version__} on "
            f"{device.platform} ({device.device_kind}); torch {torch.__version__} ({torch.get_num_threads()} "
            f"threads), torchvision {torchvision.__version__}")
    if jax.default_backend() == "gpu":
        line += (f"; torch TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN "
                 f"{torch.backends.cudnn.allow_tf32}")
    return line + f"; load average (1/5/15 min) {load_text(load_start)} at the start, {load_text(load_end)} at the end"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="the measurements to run")
    parser.add_argument("--rounds", type=int, help="rounds of every measurement (overrides the three below)")
    parser.add_argument("--roi-rounds", type=int, default=30, help="rounds of RoI pooling and RoIAlign")
    parser.add_argument("--tiny-rounds", type=int, default=20)
    parser.add_argument("--vgg16-rounds", type=int, default=5)
    parser.add_argument("--fpn-rounds", type=int, default=3)
    parser.add_argument("--vgg16-dtypes", nargs="+", default=list(VGG16_DTYPES), metavar="JAXDET/TORCHVISION",
                        help="dtype pairs of the VGG16 rows: jaxdet's model.compute_dtype / torchvision's "
                             "(bfloat16: under torch.autocast); float32 or bfloat16 each")
    parser.add_argument("--vgg16-processes", choices=["two", "one"], default="two",
                        help="the VGG16 rows with each library in a process of its own (default), or both in "
                             "this one (jaxdet's step then ran up to 2x slower right after torchvision's)")
    parser.add_argument("--retain-host-memory", nargs="*", choices=["jaxdet", "torchvision"],
                        default=[] if host_memory.gpu_plugin_installed() else ["jaxdet"], metavar="LIBRARY",
                        help="the VGG16 sides whose process keeps freed memory mapped (jaxdet.host_memory's malloc "
                             "settings, as the jaxdet command makes them): jaxdet (the default, but none where a JAX "
                             "GPU plugin is installed, as the command does), torchvision, both, or none (no names); "
                             "with --vgg16-processes two only")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls of each side before the rounds (the first compiles jaxdet's)")
    parser.add_argument("--out", help="append the report (table, command, machine) to this markdown file")
    args = parser.parse_args(argv)

    import torch

    load_start = os.getloadavg()
    torch.set_num_threads(os.cpu_count())
    say(f"torch threads: {torch.get_num_threads()} (os.cpu_count() = {os.cpu_count()}); "
        f"JAX on {jax.default_backend()}; load average {load_text(load_start)}")
    rounds = {part: args.rounds or getattr(args, f"{'roi' if part.startswith('roi_') else part}_rounds")
              for part in PARTS}
    runs = {"roi_pool": roi_pool_part, "roi_align": roi_align_part, "tiny": tiny_part,
            "fpn": fpn_part, "vgg16": functools.partial(vgg16_part, dtype_pairs=args.vgg16_dtypes, processes=args.vgg16_processes,
                                        retain_host_memory=tuple(args.retain_host_memory))}
    rows, notes = [], []
    for part in PARTS:
        if part in args.only:
            say(f"{part}: {rounds[part]} rounds after {args.warmup} warm-up calls of each side")
            r, n = runs[part](rounds[part], args.warmup)
            rows += r
            notes += n
    load_end = os.getloadavg()

    command = "PYTHONPATH=. python " + common.command_line(
        sys.argv[0] if argv is None else "experiments/bench_peers.py", argv)
    lines = [f"### jaxdet against torchvision, {time.strftime('%Y-%m-%d %H:%M %Z')}", "",
             f"Command: `{command}`", "", f"Machine: {machine_line(load_start, load_end)}", "",
             "Each row times one call of each side per round, alternating which goes first; the ratio is "
             "torchvision's time over jaxdet's (higher: jaxdet faster). jaxdet: xla_ops.roi_pool "
             "(rounding=\"round\", the custom call), xla_ops.roi_align, train_step and predict; torchvision: "
             "ops.roi_pool, ops.roi_align and "
             "FasterRCNN matched to the config (the differences left: experiments/results/peers.md).", ""]
    lines += table_lines(rows)
    if notes:
        lines += ["", "Checks:", ""] + notes
    common.publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
