"""The training loop and evaluation of a whole run: `train_and_evaluate(config, workdir)`.

`train` runs `train_step` from the last checkpoint (or step 0) to `config.train.num_steps`,
saving checkpoints every `train.checkpoint_every` steps and at the end, with a progress bar,
TensorBoard scalars and `train_log.jsonl` (`jaxdet.reporting`). The metrics of each step are
read back one step late, so the host never waits for the device except at checkpoints; a
non-finite loss, gradient norm or learning rate, or non-finite parameters at a checkpoint, stop
the run (`TrainingDiverged`) before anything after it is saved, so the last checkpoint is always
a good one. With several devices or processes the step is data parallel
(`jaxdet.training.parallel`, `jaxdet.training.distributed`); the first process writes the files.

`evaluate` detects on every image of a dataset and writes, into the work directory,
`metrics.json` (VOC07 mAP@0.5, VOC area mAP, COCO AP and the rest of COCO's table, per-class AP),
`pr_curves.png`, `detections.png` (the first held-out images with their detections and dashed
ground truth) and `detections_coco.json` (the detections as a COCO results list).

Work directory layout: checkpoints/, tensorboard/, train_log.jsonl, loss_curve.png,
config.json (the run's resolved config), class_names.json, and the evaluation files above.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from jaxdet import reporting
from jaxdet.data import Dataset, boxes_to_original, coco_ground_truth, load_image
from jaxdet.evaluation import STAT_NAMES, draw_detections, eval_detection_coco, eval_detection_voc, plot_pr_curves
from jaxdet.inference import detections_to_lists, predict
from jaxdet.training import distributed, parallel
from jaxdet.training.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from jaxdet.training.inputs import check_num_classes, eval_pipeline, load_dataset, train_pipeline
from jaxdet.training.state import TrainState, create_train_state, test_settings
from jaxdet.training.step import step_key, train_step

CHECKPOINTS = "checkpoints"
CONFIG_FILE = "config.json"
CLASS_NAMES_FILE = "class_names.json"
PR_CURVES = "pr_curves.png"
DETECTIONS_PICTURE = "detections.png"
COCO_RESULTS = "detections_coco.json"
# What the training step reads from a batch (the rest is for evaluation and bookkeeping);
# Fast R-CNN batches also carry "proposals" and "proposal_valid".
TRAIN_KEYS = ("images", "boxes", "labels", "valid", "image_hw", "scale", "proposals", "proposal_valid")


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; the message names the step, the last finite losses and the last checkpoint."""

    def __init__(self, *, step: int, metrics: Mapping[str, float], last_finite: tuple | None,
                 checkpoint_step: int | None, checkpoint_dir: str):
        self.step, self.metrics, self.last_finite = step, dict(metrics), last_finite
        self.checkpoint_step, self.checkpoint_dir = checkpoint_step, checkpoint_dir
        bad = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if not math.isfinite(v))
        what = "a loss or training value became NaN or infinite" if bad else "the parameters became NaN or infinite"
        bad = f" ({bad})" if bad else " after the update"
        if last_finite is None:
            before = "No step before it had finite losses."
        else:
            good_step, good = last_finite
            losses = ", ".join(f"{k}={v:.4g}" for k, v in sorted(good.items()) if "loss" in k)
            before = f"The last finite losses, at step {good_step}: {losses}."
        if checkpoint_step is None:
            kept = "No checkpoint had been saved yet."
        else:
            kept = (f"The last good checkpoint, step {checkpoint_step}, is kept in {checkpoint_dir}; "
                    "continue from it with --resume.")
        super().__init__(
            f"Training stopped at step {step}: {what}{bad}. {before} {kept} "
            "Lower the learning rate (--config.optimizer.learning_rate), add warm-up "
            "(--config.optimizer.warmup_steps) or gradient clipping (--config.optimizer.clip_norm), "
            "and check the data for broken boxes.")


class CheckpointsExist(RuntimeError):
    """The work directory already holds a run's checkpoints and resuming was not asked for."""


class InvalidSetting(ValueError):
    """A config value the loop cannot run with; the message names the key."""


# The counts `train` (and the evaluation after it) read, each at least 1.
POSITIVE_SETTINGS = ("train.num_steps", "train.batch_size", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "eval.batch_size")


def check_train_settings(config: ml_collections.ConfigDict) -> None:
    """Raises InvalidSetting naming every count of POSITIVE_SETTINGS the config has that is below 1
    (or not a whole number): e.g. num_steps -1 would train nothing and evaluate a random model."""
    problems = []
    for key in POSITIVE_SETTINGS:
        section, name = key.split(".")
        if section not in config or name not in config[section]:
            continue
        value = config[section][name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            problems.append(f"{key} must be a whole number of at least 1, got {value!r} "
                            f"(--config.{key}=N)")
    if problems:
        raise InvalidSetting("; ".join(problems))


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the final state and the figures of the run."""

    state: TrainState
    start_step: int            # the step training started (or resumed) from
    final_step: int
    train_seconds: float       # wall time of the steps run, compilation included
    first_step_seconds: float  # the first step alone (mostly compilation)
    images_per_second: float   # training throughput after the first step
    layout: str                # how the global batch was spread over processes and devices


@jax.jit
def _all_finite(tree) -> jax.Array:
    """bool scalar: every element of every leaf of `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


@functools.lru_cache(maxsize=8)
def _parallel_step(mesh: jax.sharding.Mesh, step_fn):
    # One jitted program per mesh: a second run in the same process (resume, evaluate) reuses it.
    return parallel.make_parallel_train_step(mesh, step_fn)


def is_main_process() -> bool:
    """Whether this process writes the run's files (the first of several, or the only one)."""
    return jax.process_index() == 0


def _host_metrics(metrics: Mapping[str, jax.Array]) -> dict:
    return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


def save_run_files(config: ml_collections.ConfigDict, workdir: str, class_names: Sequence[str]) -> None:
    """Writes `config.json` and `class_names.json`, what `eval` and `predict` read back."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json(indent=2))
    with open(os.path.join(workdir, CLASS_NAMES_FILE), "w") as f:
        json.dump(list(class_names), f)


def read_class_names(workdir: str) -> tuple:
    """The class names a run in `workdir` was trained with (label k is the k-th)."""
    with open(os.path.join(workdir, CLASS_NAMES_FILE)) as f:
        return tuple(json.load(f))


def _warn_if_frozen_without_weights(model: ml_collections.ConfigDict) -> None:
    """Frozen backbone stages keep their initial weights: random ones, unless pretrained are given."""
    frozen = int(model.get("frozen_stages", 0))
    if frozen > 0 and not model.get("pretrained", ""):
        warnings.warn(f"model.frozen_stages={frozen} freezes the first {frozen} backbone stages, but no "
                      "pretrained weights are given (model.pretrained is empty): they stay random for the "
                      "whole run. Set --config.model.pretrained=FILE (e.g. an ImageNet VGG16 .pth), or "
                      "--config.model.frozen_stages=0 to train them from scratch.", UserWarning, stacklevel=3)


def train(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False,
          devices: Sequence[Any] | None = None, show_progress: bool = True,
          dataset: Dataset | None = None) -> TrainResult:
    """Trains to `config.train.num_steps`, checkpointing into `workdir/checkpoints`.

    Args:
      config: an experiment config (`jaxdet.configs`).
      workdir: the run's directory (created).
      resume: continue from the latest checkpoint in workdir (from step 0 if there is none).
      devices: jax devices to train on, data parallel over several (`jaxdet.training.parallel`);
        default all of `jax.devices()` (every process's).
      show_progress: draw the progress bar.
      dataset: the training Dataset; default `load_dataset(config, "train")`.

    Raises:
      InvalidSetting: a step count, interval or batch size below 1 (`check_train_settings`).
      CheckpointsExist: workdir has checkpoints and `resume` is False.
      TrainingDiverged: a non-finite loss or gradient (nothing after the last good checkpoint saved).
    """
    check_train_settings(config)
    mesh = parallel.make_mesh(devices=devices)
    global_batch = int(config.train.batch_size)
    layout = parallel.batch_layout(global_batch, mesh)
    shard = distributed.process_shard(global_batch)
    if dataset is None:
        dataset = load_dataset(config, "train")
    check_num_classes(config, dataset)
    pipeline = train_pipeline(config, dataset, num_shards=shard.num_shards, shard_index=shard.shard_index)
    num_steps = int(config.train.num_steps)
    checkpoint_dir = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
    every = int(config.train.checkpoint_every)
    manager = checkpoint_manager(checkpoint_dir, save_every=every, keep=int(config.train.keep_checkpoints))
    latest = manager.latest_step()
    if latest is not None and not resume:
        manager.close()
        raise CheckpointsExist(
            f"{workdir} already holds the checkpoints of a run (the latest at step {latest}). Pass --resume to "
            "continue it, or choose another --workdir to start a new run.")
    if latest is None:
        _warn_if_frozen_without_weights(config.model)
    state = create_train_state(config, jax.random.key(int(config.train.seed)))
    start = 0
    if latest is not None:
        state, data_state = restore_checkpoint(manager, state)
        start = int(data_state.get("next_step", int(state.step)))
        if start > num_steps:
            manager.close()
            raise InvalidSetting(
                f"train.num_steps={num_steps}, but the run in {workdir} is already at step {start}: "
                f"nothing to train. Raise --config.train.num_steps above {start} to continue it, or "
                f"evaluate its checkpoint with `jaxdet eval --workdir {workdir}`.")
    main = is_main_process()
    if main:
        save_run_files(config, workdir, dataset.class_names)
    state = parallel.replicate(state, mesh)
    step_fn = _parallel_step(mesh, train_step)
    reporter = reporting.TrainingReporter(
        workdir, start_step=start, total_steps=num_steps, images_per_step=global_batch,
        log_every=int(config.train.log_every), show_bar=show_progress, append=latest is not None, enabled=main)

    last_finite = None  # (step, host metrics)

    def record(step: int, metrics: Mapping[str, jax.Array]) -> None:
        nonlocal last_finite
        host = _host_metrics(metrics)
        if not all(math.isfinite(v) for v in host.values()):
            manager.wait_until_finished()
            raise TrainingDiverged(step=step, metrics=host, last_finite=last_finite,
                                   checkpoint_step=manager.latest_step(), checkpoint_dir=checkpoint_dir)
        last_finite = (step, host)
        reporter.step(step, host)

    step, pending = start, None
    began = time.perf_counter()
    first_step_seconds = 0.0
    try:
        for batch in pipeline.batches(start, max(num_steps - start, 0)):
            batch = parallel.shard_batch({k: batch[k] for k in TRAIN_KEYS if k in batch}, mesh)
            state, metrics = step_fn(state, batch, step_key(state))
            step += 1
            if pending is not None:
                record(*pending)
            pending = (step, metrics)
            if step == start + 1:
                record(*pending)
                pending = None
                first_step_seconds = time.perf_counter() - began
            # A checkpoint is written only once its step's losses and the parameters are known to be finite.
            if step % every == 0 or step == num_steps:
                if pending is not None:
                    record(*pending)
                    pending = None
                if not bool(_all_finite(state.params)):
                    manager.wait_until_finished()
                    raise TrainingDiverged(step=step, metrics={}, last_finite=last_finite,
                                           checkpoint_step=manager.latest_step(), checkpoint_dir=checkpoint_dir)
                save_checkpoint(manager, state, data_state={"next_step": step}, force=step == num_steps)
        if pending is not None:
            record(*pending)
        jax.block_until_ready(state)
        train_seconds = time.perf_counter() - began
    finally:
        reporter.close()
        manager.wait_until_finished()
        manager.close()
    timed = step - start - 1
    rate = timed * global_batch / max(train_seconds - first_step_seconds, 1e-9) if timed > 0 else float("nan")
    return TrainResult(state=state, start_step=start, final_step=step, train_seconds=train_seconds,
                       first_step_seconds=first_step_seconds, images_per_second=rate, layout=str(layout))


def restore_trained(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None) -> TrainState:
    """The TrainState of a run's checkpoint (the latest if `step` is None).

    Raises:
      FileNotFoundError: workdir has no checkpoint (or not that step: the message lists those there).
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.pretrained = ""  # the checkpoint holds every weight
    checkpoint_dir = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
    no_checkpoints = f"no checkpoints in {workdir}: train there first (jaxdet train --workdir {workdir})"
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(no_checkpoints)
    manager = checkpoint_manager(checkpoint_dir, keep=1000)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise FileNotFoundError(no_checkpoints)
        if step is not None and step not in steps:
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {checkpoint_dir}; the run's checkpoints are of step"
                f"{'s' if len(steps) > 1 else ''} {', '.join(str(s) for s in steps)} (a run keeps only its last "
                f"train.keep_checkpoints): pass --step with one of them, or no --step for the latest")
        state, _ = restore_checkpoint(manager, create_train_state(config, jax.random.key(0)), step=step)
    finally:
        manager.close()
    return state


def detect(config: ml_collections.ConfigDict, state: TrainState, dataset: Dataset, *,
           show_progress: bool = True, batch_size: int | None = None) -> tuple:
    """Detections on every image of `dataset`: each batch split over this process's devices that
    hold `state` (with several processes, each detects on its shard of the images and all of them
    receive everyone's detections).

    Returns:
      (list over records of {"boxes" [n, 4] xyxy original pixels, "scores" [n], "labels" [n]},
       seconds spent, compilation included).
    """
    pipeline = eval_pipeline(config, dataset, batch_size=batch_size, num_shards=jax.process_count(),
                             shard_index=jax.process_index())
    settings = test_settings(config)
    mesh = _local_detection_mesh(state, pipeline.batch_size)
    # This process's copy of the (replicated) weights, on each of its devices (all addressable:
    # plain device_put, no cross-process array).
    variables = jax.device_put(jax.tree.map(lambda x: x.addressable_data(0), state.variables),
                               parallel.replicated(mesh))
    inputs = ("images", "image_hw", "scale", "proposals", "proposal_valid")
    found = {}
    began = time.perf_counter()
    with reporting.detection_bar(len(dataset), show_bar=show_progress and is_main_process()) as bar:
        for batch in pipeline.epoch():
            placed = jax.device_put({k: batch[k] for k in inputs if k in batch}, parallel.split_batch(mesh))
            with jax.set_mesh(mesh):  # each device detects on its own images
                detections = predict(state.model, variables, placed["images"], placed["image_hw"],
                                     image_scale=placed["scale"], proposals=placed.get("proposals"),
                                     proposal_valid=placed.get("proposal_valid"), settings=settings)
            # Exact per-axis mapping back to the original pixels (the nominal scale is rounded).
            # Filler slots of a last partial batch have size 0: keep their (ignored) boxes finite.
            boxes = boxes_to_original(np.asarray(detections.boxes), image_hw=np.maximum(batch["image_hw"], 1),
                                      orig_hw=batch["orig_hw"])
            lists = detections_to_lists(detections._replace(boxes=boxes), scale=np.ones(len(boxes), np.float32),
                                        orig_hw=batch["orig_hw"])
            for image_id, result in zip(batch["image_id"], lists):
                if image_id >= 0:
                    found[int(image_id)] = result
            bar.update(len(found) * jax.process_count() - bar.n)
    if jax.process_count() > 1:
        found = distributed.gather_detections(found)
    return [found[i] for i in range(len(dataset))], time.perf_counter() - began


def _local_detection_mesh(state: TrainState, batch_size: int) -> jax.sharding.Mesh:
    """The devices of this process that hold `state`, as a mesh detection splits its batches over;
    only the first of them when `batch_size` does not divide among them."""
    devices = sorted(jax.tree.leaves(state.variables)[0].sharding.addressable_devices, key=lambda d: d.id)
    return parallel.make_mesh(devices=devices if batch_size % len(devices) == 0 else devices[:1])


def detection_picture(dataset: Dataset, detections: Sequence[Mapping[str, np.ndarray]], class_names: Sequence[str],
                      path: str, *, num_images: int = 8, columns: int = 4, score_threshold: float = 0.5) -> None:
    """A grid of the first `num_images` images with detections above `score_threshold` and dashed ground truth."""
    tiles = []
    for record, found in list(zip(dataset.records, detections))[:num_images]:
        tiles.append(draw_detections(load_image(record), found["boxes"], found["labels"], found["scores"],
                                     class_names, gt_boxes=record.boxes, gt_labels=record.labels,
                                     score_threshold=score_threshold, min_side=256))
    if not tiles:
        return
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    grid = Image.new("RGB", (columns * cell_w + (columns + 1) * 4, rows * cell_h + (rows + 1) * 4), (32, 32, 32))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        grid.paste(tile, (4 + c * (cell_w + 4), 4 + r * (cell_h + 4)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path, format="PNG")


def evaluate(config: ml_collections.ConfigDict, state: TrainState, dataset: Dataset, workdir: str, *,
             show_progress: bool = True) -> dict:
    """Detects on `dataset`, computes VOC and COCO metrics, and writes the evaluation files.

    Returns:
      the figures merged into `workdir/metrics.json`: voc07_map (11-point, IoU 0.5), voc_map
      (area), coco_ap (IoU 0.50:0.95) and coco_<stat> for the rest of COCO's table, per_class_ap
      (VOC07, by name), eval_images, eval_seconds, eval_images_per_second, checkpoint_step.
    """
    check_num_classes(config, dataset)
    detections, seconds = detect(config, state, dataset, show_progress=show_progress)
    boxes = [d["boxes"] for d in detections]
    labels = [d["labels"] for d in detections]
    scores = [d["scores"] for d in detections]
    gt_boxes = [r.boxes for r in dataset.records]
    gt_labels = [r.labels for r in dataset.records]
    # VOC's devkit has no crowd regions: matching one is neither right nor wrong, as for `difficult`.
    ignored = [r.difficult | r.iscrowd for r in dataset.records]
    voc07 = eval_detection_voc(boxes, labels, scores, gt_boxes, gt_labels, ignored, use_07_metric=True,
                               num_classes=dataset.num_classes)
    voc_area = eval_detection_voc(boxes, labels, scores, gt_boxes, gt_labels, ignored, use_07_metric=False,
                                  num_classes=dataset.num_classes)
    gt, image_ids = coco_ground_truth(dataset)
    coco = eval_detection_coco(boxes, labels, scores, gt=gt, image_ids=image_ids, category_ids=dataset.category_ids)
    figures = {
        "voc07_map": voc07["map"],
        "voc_map": voc_area["map"],
        "coco_ap": coco["AP"],
        **{f"coco_{name.lower()}": coco[name] for name in STAT_NAMES[1:]},
        "per_class_ap": {name: float(ap) for name, ap in zip(dataset.class_names, voc07["ap"])},
        "eval_images": len(dataset),
        "eval_seconds": seconds,
        "eval_images_per_second": len(dataset) / max(seconds, 1e-9),
        "checkpoint_step": int(jax.device_get(state.step.addressable_data(0))),
    }
    if not is_main_process():
        return figures
    os.makedirs(workdir, exist_ok=True)
    plot_pr_curves(voc07, dataset.class_names, os.path.join(workdir, PR_CURVES),
                   title=f"held-out PR curves: VOC07 mAP@0.5 {voc07['map']:.4f}, COCO AP {coco['AP']:.4f}")
    detection_picture(dataset, detections, dataset.class_names, os.path.join(workdir, DETECTIONS_PICTURE))
    with open(os.path.join(workdir, COCO_RESULTS), "w") as f:
        json.dump(coco["results"], f)
    reporting.write_scalars(workdir, "eval", {k: v for k, v in figures.items() if k.startswith(("voc", "coco"))},
                            figures["checkpoint_step"])
    return reporting.update_metrics_file(workdir, figures)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False,
                       devices: Sequence[Any] | None = None, show_progress: bool = True) -> dict:
    """Trains (see `train`), evaluates on the held-out split (see `evaluate`), draws the loss curve.

    Returns:
      metrics.json's content: `evaluate`'s figures plus train_seconds, first_step_seconds,
      train_images_per_second, steps, start_step, batch_size, batch_layout and devices.
    """
    result = train(config, workdir, resume=resume, devices=devices, show_progress=show_progress)
    figures = {
        "train_seconds": result.train_seconds,
        "first_step_seconds": result.first_step_seconds,
        "train_images_per_second": result.images_per_second,
        "steps": result.final_step,
        "start_step": result.start_step,
        "batch_size": int(config.train.batch_size),
        "batch_layout": result.layout,
        "devices": [str(d) for d in result.state.step.sharding.device_set],
    }
    if is_main_process():
        reporting.plot_loss_curve(reporting.read_train_log(workdir), os.path.join(workdir, reporting.LOSS_CURVE))
        reporting.update_metrics_file(workdir, figures)
    metrics = evaluate(config, result.state, load_dataset(config, "test"), workdir, show_progress=show_progress)
    return {**figures, **metrics}
