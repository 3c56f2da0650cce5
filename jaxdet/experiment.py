"""A whole experiment in a work directory, as the `jaxdet` commands run one: train then evaluate
(`train_and_evaluate`), evaluate a run's checkpoint again (`evaluate_checkpoint`), and the demo
(`demo_data`, `run_demo`). The layers it ties together, each crossed once: `jaxdet.training.loop`
trains, `jaxdet.evaluation.run` evaluates, `jaxdet.workdir` names the files.

`run_train`, `run_eval` and `run_demo` are the commands `jaxdet train`, `eval` and `demo`: they
check the settings before anything starts, pick the devices (`jaxdet.devices.select_devices`),
join the other processes of a multi-host run (`jaxdet.distributed`) and return the figures the
command shows (`jaxdet.reporting`).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import ml_collections

from jaxdet import distributed, reporting, workdir as run_files
from jaxdet.data import load_dataset, shapes_splits, with_class_names, write_shapes_dataset
from jaxdet.devices import make_mesh, replicate, select_devices
from jaxdet.evaluation import run as evaluation
from jaxdet.inference.trained import restore_trained
from jaxdet.training import loop


def _training_figures(config: ml_collections.ConfigDict, result: loop.TrainResult) -> dict:
    return {
        "train_seconds": result.train_seconds,
        "first_step_seconds": result.first_step_seconds,
        "train_images_per_second": result.images_per_second,
        "steps": result.final_step,
        "start_step": result.start_step,
        "batch_size": int(config.train.batch_size),
        "batch_layout": result.layout,
        "devices": [str(d) for d in result.state.step.sharding.device_set],
    }


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
    figures = _training_figures(config, result)
    if distributed.is_main_process():
        reporting.plot_loss_curve(run_files.read_train_log(workdir),
                                  run_files.output(os.path.join(workdir, run_files.LOSS_CURVE)))
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
    detector = replicate(restore_trained(config, workdir, step=step), make_mesh(devices=devices))
    return evaluation.evaluate(config, detector, load_dataset(config, split), out, show_progress=show_progress)


def make_shapes(config: ml_collections.ConfigDict, out: str, *, format: str) -> dict:
    """`jaxdet make-shapes`: the shapes dataset of `config` written into `out`, a new or empty folder
    (nothing of the user's replaced); returns the splits' locations (`write_shapes_dataset`)."""
    run_files.require_new_folder(out, "--out")
    return write_shapes_dataset(config, out, format=format)


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


def run_train(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False, evaluate: bool = True,
              device: str = "auto", num_devices: int | None = None,
              processes: distributed.DistributedSettings | None = None, show_progress: bool = True) -> dict:
    """`jaxdet train`: checks the config's counts, joins the run's processes (`processes`), trains on
    the devices asked for, and evaluates the final model unless `evaluate` is False.

    Returns:
      metrics.json's content (`train_and_evaluate`), or without the evaluation the training's figures.
    """
    loop.check_train_settings(config)  # before anything starts or is written
    run_files.check_workdir(workdir)
    distributed.initialize(processes or distributed.DistributedSettings())
    devices = select_devices(device, num_devices)
    reporting.announce_training(config, devices, f"a {config.model.kind} ({config.model.backbone})")
    with run_files.reading(run_files.config_inputs(config), workdir):  # no file of the data or weights replaced
        if evaluate:
            return train_and_evaluate(config, workdir, resume=resume, devices=devices, show_progress=show_progress)
        result = loop.train(config, workdir, resume=resume, devices=devices, show_progress=show_progress)
    return _training_figures(config, result)


def run_eval(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None, split: str = "test",
             out: str | None = None, device: str = "auto", num_devices: int | None = None,
             processes: distributed.DistributedSettings | None = None, show_progress: bool = True) -> dict:
    """`jaxdet eval`: `evaluate_checkpoint` of the run in `workdir` on the devices asked for."""
    distributed.initialize(processes or distributed.DistributedSettings())
    devices = select_devices(device, num_devices)
    with run_files.reading(run_files.config_inputs(config), workdir):
        return evaluate_checkpoint(config, workdir, step=step, split=split, devices=devices,
                                   show_progress=show_progress, out=out)


def run_demo(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False, device: str = "auto",
             num_devices: int | None = None, show_progress: bool = True) -> dict:
    """`jaxdet demo`: the demo's work directory claimed (`jaxdet.workdir.claim_for_demo`) and, unless
    `resume`, its previous run cleared; its shapes data written (`demo_data`); then
    `train_and_evaluate`. Returns metrics.json's content."""
    loop.check_train_settings(config)  # before the previous demo's files are removed
    devices = select_devices(device, num_devices)
    run_files.claim_for_demo(workdir)  # refuses a directory with files the demo did not write
    run_files.lock(workdir)  # before its previous run is cleared
    if not resume:
        run_files.clear_demo_run(workdir)  # a new demo replaces the previous one's run (not its data)
    config.data.root, reused = demo_data(config, workdir)
    print(f"{'using the shapes dataset already in' if reused else 'wrote the shapes dataset to'} {config.data.root}",
          flush=True)
    reporting.announce_training(config, devices, "the tiny Faster R-CNN")
    with run_files.reading(run_files.config_inputs(config), workdir):
        return train_and_evaluate(config, workdir, resume=resume, devices=devices, show_progress=show_progress)
