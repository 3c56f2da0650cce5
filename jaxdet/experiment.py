"""A whole experiment in a work directory, as the `jaxdet` commands run one: train then evaluate
(`train_and_evaluate`), evaluate a run's checkpoint again (`evaluate_checkpoint`), and the demo's
data (`demo_data`). The layers it ties together, each crossed once: `jaxdet.training.loop` trains,
`jaxdet.evaluation.run` evaluates, `jaxdet.workdir` names the files.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import ml_collections

from jaxdet import reporting, workdir as run_files
from jaxdet.evaluation import run as evaluation
from jaxdet.training import distributed, loop, parallel
from jaxdet.training.checkpoints import restore_trained
from jaxdet.training.inputs import load_dataset, shapes_splits, with_class_names, write_shapes_dataset


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False,
                       devices: Sequence[Any] | None = None, show_progress: bool = True) -> dict:
    """Trains (`jaxdet.training.loop.train`), draws the loss curve, and evaluates the final model on
    the held-out split (`jaxdet.evaluation.run.evaluate`).

    Returns:
      metrics.json's content: the evaluation's figures plus train_seconds, first_step_seconds,
      train_images_per_second, steps, start_step, batch_size, batch_layout and devices.
    """
    dataset = load_dataset(config, "train")
    config = with_class_names(config, dataset.class_names)  # the test split is read with the same labels
    result = loop.train(config, workdir, resume=resume, devices=devices, show_progress=show_progress,
                        dataset=dataset)
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
    if distributed.is_main_process():
        reporting.plot_loss_curve(run_files.read_train_log(workdir), os.path.join(workdir, run_files.LOSS_CURVE))
        run_files.update_metrics_file(workdir, figures)
    metrics = evaluation.evaluate(config, result.state, load_dataset(config, "test"), workdir,
                                  show_progress=show_progress)
    return {**figures, **metrics}


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
                        split: str = "test", devices: Sequence[Any] | None = None,
                        show_progress: bool = True, out: str | None = None) -> dict:
    """Evaluates a run's checkpoint (the latest unless `step`) on the config's `split`, replicated
    over `devices` (default all), writing the evaluation's files into `out` (default `workdir`), whose
    writability is checked first (`jaxdet.workdir.check_writable`). The labels are the run's (its
    class_names.json), whatever classes the split's annotations hold."""
    out = workdir if out is None else out
    run_files.check_writable(out)  # before the work, not after it
    config = with_class_names(config, run_files.read_class_names(workdir))
    state = parallel.replicate(restore_trained(config, workdir, step=step), parallel.make_mesh(devices=devices))
    return evaluation.evaluate(config, state, load_dataset(config, split), out, show_progress=show_progress)


def demo_data(config: ml_collections.ConfigDict, workdir: str) -> tuple:
    """The demo's shapes sets (`config.data`) under `workdir/data`, written unless the same ones are
    already there; `workdir` must be the demo's (`jaxdet.workdir.claim_for_demo`), and only files the
    demo wrote are ever replaced (`jaxdet.workdir.write_demo_data`).

    Returns:
      (the dataset's root, whether it was already there).
    """
    root = os.path.join(workdir, run_files.DATA)
    description = {"shapes": dict(config.data.shapes.to_dict()), "splits": shapes_splits(config)}
    if run_files.demo_data_is(workdir, description):
        return root, True
    run_files.write_demo_data(workdir, description, lambda out: write_shapes_dataset(config, out))
    return root, False
