"""What a run shows: a progress bar, TensorBoard scalars, the JSON-lines training log, the
loss-curve picture (the files' names and places: `jaxdet.workdir`), and what the `jaxdet`
commands print: the summary table of a run's figures, the list of its files, and each command's
account of what it wrote (text returned, printed by `jaxdet.cli`).

`train_log.jsonl` has one line per logging window: {"step", "images_per_second", and the means of
the step metrics (losses, accuracies, learning_rate, ...) over the window}.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import sys
import textwrap
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from jaxdet import distributed
from jaxdet.devices import batch_layout, make_mesh
from jaxdet.overrides import as_flags
from jaxdet.workdir import DESCRIPTIONS, TENSORBOARD, TRAIN_LOG, output

# The bar shows these, shortened; everything else goes to the log and TensorBoard only.
_BAR_FIELDS = (("loss", "loss"), ("rpn_cls_loss", "rpn_cls"), ("rpn_box_loss", "rpn_box"),
               ("roi_cls_loss", "roi_cls"), ("roi_box_loss", "roi_box"))
_CURVE_FIELDS = ("loss", "rpn_cls_loss", "rpn_box_loss", "roi_cls_loss", "roi_box_loss")


def _summary_writer(workdir: str):
    # Imported here: tensorboardX pulls in protobuf, which commands that do not train never need.
    from tensorboardX import SummaryWriter
    return SummaryWriter(logdir=os.path.join(workdir, TENSORBOARD), flush_secs=30)


@contextlib.contextmanager
def _naming_tensorboard_dir(workdir: str):
    """Raises an OSError of tensorboardX's writes that names no file again, naming the run's
    TensorBoard directory: its event files are written by tensorboardX's own file objects."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, os.path.join(workdir, TENSORBOARD)) from e


class TrainingReporter:
    """Progress of a training run: tqdm bar, TensorBoard scalars and `train_log.jsonl`.

    Args:
      workdir: the run's directory.
      start_step, total_steps: the bar runs from start_step to total_steps.
      images_per_step: global batch size (for images/s).
      log_every: steps per logging window (TensorBoard, the log, the bar's numbers).
      show_bar: draw the bar (on stderr).
      append: keep an existing `train_log.jsonl` (a resumed run) instead of starting it anew.
      enabled: False makes every method a no-op (the processes of a run other than the first).
    """

    def __init__(self, workdir: str, *, start_step: int, total_steps: int, images_per_step: int,
                 log_every: int, show_bar: bool = True, append: bool = False, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.workdir = workdir
        self.images_per_step = int(images_per_step)
        self.log_every = max(1, int(log_every))
        os.makedirs(workdir, exist_ok=True)
        self._log_path = output(os.path.join(workdir, TRAIN_LOG))
        output(os.path.join(workdir, TENSORBOARD))
        if not append and os.path.exists(self._log_path):
            os.remove(self._log_path)
        self._writer = _summary_writer(workdir)
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not show_bar,
                         dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
        self._window: list = []
        self._window_start = None
        self._timed_steps = 0

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records the metrics of the step that brought the state to `step` (host floats)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        self._window.append(dict(metrics))
        if self._window_start is None:
            # The first step of a run includes compilation: the rate is timed from its end.
            self._window_start = now
        else:
            self._timed_steps += 1
        self._bar.update(1)
        if step % self.log_every == 0:
            self._flush(step, now)

    def _flush(self, step: int, now: float) -> None:
        row = {"step": int(step)}
        for key in self._window[0]:
            row[key] = float(np.mean([m[key] for m in self._window]))
        if self._timed_steps:
            row["images_per_second"] = self._timed_steps * self.images_per_step / max(now - self._window_start, 1e-9)
        self._window, self._window_start, self._timed_steps = [], now, 0
        for key, value in row.items():
            if key != "step":
                self._writer.add_scalar(f"train/{key}", value, step)
        with open(self._log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        postfix = {short: f"{row[key]:.3f}" for key, short in _BAR_FIELDS if key in row}
        if "learning_rate" in row:
            postfix["lr"] = f"{row['learning_rate']:.1e}"
        if "images_per_second" in row:
            postfix["img/s"] = f"{row['images_per_second']:.1f}"
        self._bar.set_postfix(postfix, refresh=False)

    def close(self, *, after_error: bool = False) -> None:
        """Closes the bar and writes out the TensorBoard scalars still pending.

        Args:
          after_error: the run is already failing. A failure to write the pending scalars (most
            often the same full disk) is then dropped so that it cannot replace the run's error.
        """
        if not self.enabled:
            return
        self._bar.close()
        try:
            with _naming_tensorboard_dir(self.workdir):
                self._writer.close()
        except OSError:
            if not after_error:
                raise


def write_scalars(workdir: str, prefix: str, values: Mapping[str, float], step: int) -> None:
    """Adds the finite numbers of `values` to the run's TensorBoard logs as `prefix/name` at `step`."""
    with _naming_tensorboard_dir(workdir):
        writer = _summary_writer(workdir)
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(f"{prefix}/{key}", value, step)
        writer.close()


def plot_loss_curve(rows: Sequence[Mapping[str, float]], path: str, *, title: str = "training losses") -> None:
    """Plots the losses of train-log rows against the step (log scale) and saves a PNG."""
    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = [r["step"] for r in rows]
    for key in _CURVE_FIELDS:
        values = [r.get(key, float("nan")) for r in rows]
        if any(math.isfinite(v) and v > 0 for v in values):
            axes.plot(steps, values, label=key, linewidth=2.0 if key == "loss" else 1.0)
    if axes.get_legend_handles_labels()[0]:
        axes.set_yscale("log")
        axes.legend(loc="upper right", fontsize="small")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (mean over each logging window)")
    axes.grid(alpha=0.3, which="both")
    axes.set_title(title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, format="png")


def detection_bar(total: int, *, show_bar: bool = True) -> tqdm:
    """A progress bar over `total` images to detect on (evaluation, predict)."""
    return tqdm(total=total, desc="detect", unit="img", disable=not show_bar, dynamic_ncols=True, mininterval=0.5,
                file=sys.stderr)


def summary_table(rows: Iterable[tuple], *, title: str = "") -> str:
    """A two-column text table of (name, value) rows; floats with 4 decimals, None (no figure,
    metrics.json's null) as "n/a", strings as given."""
    cells = [(str(name), f"{value:.4f}" if isinstance(value, float) else "n/a" if value is None else str(value))
             for name, value in rows]
    left = max([len(n) for n, _ in cells], default=0)
    right = max([len(v) for _, v in cells], default=0)
    # A long title widens the value column, never the names.
    right = max(right, len(title) - left - 3)
    rule = "+" + "-" * (left + 2) + "+" + "-" * (right + 2) + "+"
    lines = [rule]
    if title:
        lines += [f"| {title.ljust(left + right + 3)} |", rule]
    lines += [f"| {n.ljust(left)} | {v.rjust(right)} |" for n, v in cells]
    lines.append(rule)
    return "\n".join(lines)


# metrics.json's figures the summary shows, in order, with their names.
_SUMMARY_ROWS = (("steps", "training steps"), ("batch_layout", "batch"), ("train_seconds", "training time (s)"),
                 ("first_step_seconds", "  of which compiling (s)"), ("train_images_per_second", "training images/s"),
                 ("eval_images", "held-out images"), ("voc07_map", "VOC07 mAP@0.5 (11-point)"),
                 ("voc_map", "VOC mAP@0.5 (area)"), ("coco_ap", "COCO AP@[.5:.95]"), ("coco_ap50", "COCO AP50"),
                 ("coco_ap75", "COCO AP75"), ("eval_images_per_second", "detection images/s"))


def run_summary(metrics: Mapping[str, Any], title: str) -> str:
    """The summary table of a run's figures (metrics.json's): training, detection and per-class AP."""
    rows = []
    for key, name in _SUMMARY_ROWS:
        if key in metrics:
            value = metrics[key]
            # None: no such figure (metrics.json's null), e.g. no training rate after a single step.
            timing = key.endswith(("seconds", "per_second")) and value is not None
            rows.append((name, f"{value:.1f}" if timing else value))
    rows += [(f"AP {name}", ap) for name, ap in metrics.get("per_class_ap", {}).items()]
    return summary_table(rows, title=title)


def files_list(workdir: str, names: Sequence[str]) -> str:
    """The files `names` (`jaxdet.workdir.DESCRIPTIONS`) that exist in `workdir`, one a line, described."""
    lines = [f"Results in {os.path.abspath(workdir)}:"]
    lines += [f"  {os.path.join(workdir, name):<42} {DESCRIPTIONS[name]}" for name in names
              if os.path.exists(os.path.join(workdir, name))]
    return "\n".join(lines)


def announce_training(config, devices: Sequence[Any], what: str) -> None:
    """Prints (the first process) what is trained, for how many steps, where, and the batch's layout."""
    layout = batch_layout(int(config.train.batch_size), make_mesh(devices=devices))
    if distributed.is_main_process():
        print(f"training {what} for {config.train.num_steps} steps on {devices[0].platform}: {layout}", flush=True)


def _paragraph(text: str) -> str:
    return textwrap.fill(text, width=100, break_on_hyphens=False, break_long_words=False)


def _a_few(items: Sequence[str], separator: str, shown: int = 5) -> str:
    """The first `shown` of `items` joined by `separator`, and how many more there are."""
    more = f"{separator}and {len(items) - shown} more" if len(items) > shown else ""
    return separator.join(items[:shown]) + more


def trained_line(figures: Mapping[str, Any], checkpoints: str) -> str:
    """What a training run without evaluation did (`jaxdet.experiment.run_train`'s figures)."""
    return (f"trained to step {figures['steps']} in {figures['train_seconds']:.1f} s "
            f"({figures['train_images_per_second']:.1f} images/s); checkpoints in {checkpoints}")


def predictions_summary(found: Mapping[str, Any], others: Sequence[str], out: str, detections_file: str,
                        extensions: Sequence[str]) -> str:
    """What `jaxdet predict` wrote (detections.json's content `found`), the files it skipped and left out."""
    total = sum(len(e["detections"]) for e in found["images"])
    lines = [f"{total} detections (score >= {found['score_threshold']}) on {len(found['images'])} images: pictures "
             f"and {detections_file} in {os.path.abspath(out)}"]
    skipped = [entry["reason"] for entry in found["skipped"]]
    if skipped:
        lines.append(_paragraph(f"skipped {len(skipped)} image file{'s' if len(skipped) > 1 else ''} that cannot be "
                                f"read: {_a_few(skipped, '; ')}"))
    if others:
        lines.append(_paragraph(f"left out {len(others)} file{'s' if len(others) > 1 else ''} that are not images "
                                f"({', '.join(extensions)}): {_a_few([os.path.basename(p) for p in others], ', ')}"))
    return "\n".join(lines)


def proposals_summary(summary, workdir: str | None) -> str:
    """What `jaxdet proposals` wrote (a `jaxdet.inference.proposals.ProposalsSummary`), and how to use it."""
    splits = ", ".join(f"{split} {count}" for split, count in summary.images.items())
    path = os.path.abspath(summary.path)
    rpn, images = summary.step is not None, f"{len(summary.counts)} images ({splits})"
    source = (f"the RPN proposals of {images} of the run in {workdir} (step {summary.step})" if rpn
              else f"the {summary.method} proposals of {images}")
    return _paragraph(
        f"wrote {source} to {path}: {summary.counts.mean():.1f} per image on average (min {summary.counts.min()}, "
        f"max {summary.counts.max()}; at most {'rpn.test_post_nms' if rpn else '--max-proposals'} = "
        f"{summary.post_nms}), in original-image pixels. "
        f"Train a Fast R-CNN on them with a fast_rcnn config and --config.data.proposals={path}, on the same "
        f"data (e.g. jaxdet train --config fast_rcnn_vgg16 --config.data.proposals={path} --config.data.root=...).")


# What make-shapes' overrides change only in the files it writes: the train command reads those files.
_WRITE_ONLY_KEYS = ("data.root", "data.dataset", "data.num_train", "data.num_test", "data.train_seed",
                    "data.test_seed")


def shapes_train_command(config_name: str, overrides: Sequence[tuple], format: str, out: str) -> str:
    """The command line (one, pasteable into a shell) that trains on the shapes `jaxdet make-shapes` wrote."""
    words = ["jaxdet", "train", "--config", config_name]
    # The rest of the user's overrides (class names, image size, the model) hold for training too.
    words += [f"--config.{key}={text}" for key, text in overrides if key not in _WRITE_ONLY_KEYS]
    if format == "coco":
        words.append("--config.data.dataset=coco")
    words += [f"--config.data.root={out}", "--workdir", os.path.join("runs", "shapes")]
    return " ".join(shlex.quote(w) for w in words)


def shapes_summary(written: Mapping[str, str], counts: Mapping[str, tuple], train_command: str, format: str) -> str:
    """What `jaxdet make-shapes` wrote (`jaxdet.data.write_shapes_dataset`'s splits), and how to train on it."""
    lines = [f"{split}: {counts[split][0]} images (seed {counts[split][1]}) -> {where}" for split, where in written.items()]
    lines.append(f"train on them with: {train_command}")
    if format == "coco":
        lines.append("(data.dataset=coco trains on the split 'train' and evaluates on 'test', the two written above)")
    return "\n".join(lines)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """A library warning as the `jaxdet` command shows it (`warnings.formatwarning`'s form): its
    category and text, the config keys it names as the flags that set them."""
    return f"jaxdet: {category.__name__}: {as_flags(str(message))}\n"
