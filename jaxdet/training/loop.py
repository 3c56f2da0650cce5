"""The training loop: `train(config, workdir)`.

`train` runs `train_step` from the last checkpoint (or step 0) to `config.train.num_steps`,
saving checkpoints every `train.checkpoint_every` steps and at the end, with a progress bar,
TensorBoard scalars and `train_log.jsonl` (`jaxdet.reporting`). The metrics of each step are
read back one step late, so the host never waits for the device except at checkpoints; a
non-finite loss, gradient norm or learning rate, or non-finite parameters at a checkpoint, stop
the run (`TrainingDiverged`) before anything after it is saved, so the last checkpoint is always
a good one. With several devices or processes the step is data parallel
(`jaxdet.training.parallel`, `jaxdet.distributed`); the first process writes the files
(their names: `jaxdet.workdir`). Errors name the config keys to change (`config.train.num_steps`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdet import distributed, reporting, workdir as run_files
from jaxdet.data import Dataset, load_dataset, train_pipeline, with_class_names
from jaxdet.data.batch import TRAIN_KEYS
from jaxdet.devices import batch_layout, make_mesh, replicate, shard_batch
from jaxdet.errors import JaxdetError, user_error
from jaxdet.settings import InvalidSetting
from jaxdet.training import parallel
from jaxdet.training.checkpoints import check_fits, restore_checkpoint, save_checkpoint, saving
from jaxdet.training.state import TrainState, create_train_state
from jaxdet.training.step import step_key, train_step


class TrainingDiverged(JaxdetError, RuntimeError):
    """A non-finite loss or gradient; the message names the step, the last finite losses and the last checkpoint."""

    exit_status = 3

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
                    "continue from it with --resume (resume=True).")
        super().__init__(
            f"Training stopped at step {step}: {what}{bad}. {before} {kept} "
            "Lower the learning rate (config.optimizer.learning_rate), add warm-up "
            "(config.optimizer.warmup_steps) or gradient clipping (config.optimizer.clip_norm), "
            "and check the data for broken boxes.")


class CheckpointsExist(JaxdetError, RuntimeError):
    """The work directory already holds a run's checkpoints and resuming was not asked for."""


class TrainingInterrupted(JaxdetError):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler, `docker stop`) stopped training; the message says which
    checkpoint holds the run, and the exit status is 128 + the signal's number, as the shell's."""

    def __init__(self, signum: int, *, step: int | None, saved: int | None, checkpoint_dir: str):
        self.exit_status = 128 + signum
        name = signal.Signals(signum).name
        if saved is not None:
            kept = (f"at step {step}: saved a checkpoint of step {saved} in {checkpoint_dir} before stopping. Rerun "
                    "the same command with --resume to continue from it.")
        elif step is not None:
            kept = (f"at step {step}, before a checkpoint of it could be saved (a second signal); the checkpoints "
                    f"already in {checkpoint_dir} are intact: rerun the same command with --resume to continue.")
        else:
            kept = ("before its first step ended: no checkpoint of this run was written; rerun the same command "
                    "(with --resume if the directory holds an earlier checkpoint).")
        super().__init__(f"training stopped by {name} {kept}")


# The signals after which training saves the step reached, then stops (`_Stop`).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stop:
    """While training, SIGINT and SIGTERM stop it: once the first step has run, the step in flight
    ends and a checkpoint of it is saved (`_run_steps`) before TrainingInterrupted is raised, a wait
    bounded by one step and one checkpoint write; a second signal, or one before the first step
    ended, stops at once with the checkpoints already written. Only the main thread can handle
    signals: elsewhere nothing changes."""

    def __init__(self, checkpoint_dir: str):
        self.checkpoint_dir = checkpoint_dir
        self.received = None  # the first signal's number, while stepping
        self.step = None      # the last step run; None before the first one ended
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum, frame):
        if self.step is not None and self.received is None:
            self.received = signum
            print(f"\njaxdet: {signal.Signals(signum).name} received: saving a checkpoint of the step in flight, "
                  "then stopping (a second signal stops at once, without it)", file=sys.stderr, flush=True)
            return
        raise TrainingInterrupted(self.received or signum, step=self.step, saved=None,
                                  checkpoint_dir=self.checkpoint_dir)

    def save_and_stop(self, step: int, state, manager, guard) -> None:
        """Raises TrainingInterrupted once `state` (at `step`) is saved, if a signal came."""
        self.step = step
        if self.received is None:
            return
        guard.check_params(step, state.params)
        if manager.latest_step() != step:
            save_checkpoint(manager, state, data_state={"next_step": step}, force=True)
        manager.wait_until_finished()
        raise TrainingInterrupted(self.received, step=step, saved=step, checkpoint_dir=self.checkpoint_dir)


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
                            f"(config.{key}=N)")
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


def _host_metrics(metrics: Mapping[str, jax.Array]) -> dict:
    return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


def _warn_if_frozen_without_weights(model: ml_collections.ConfigDict) -> None:
    """Frozen backbone stages keep their initial weights: random ones, unless pretrained are given."""
    frozen = int(model.get("frozen_stages", 0))
    if frozen > 0 and not model.get("pretrained", ""):
        warnings.warn(f"model.frozen_stages={frozen} freezes the first {frozen} backbone stages, but no "
                      "pretrained weights are given (model.pretrained is empty): they stay random for the "
                      "whole run. Set config.model.pretrained=FILE (e.g. an ImageNet VGG16 .pth), or "
                      "config.model.frozen_stages=0 to train them from scratch.", UserWarning, stacklevel=4)


def _starting_state(config: ml_collections.ConfigDict, workdir: str, manager, *, resume: bool) -> tuple:
    """(the state training starts from, its step): a fresh one, or the latest checkpoint's when resuming.

    Raises:
      CheckpointsExist: `manager` has checkpoints and `resume` is False.
      InvalidSetting: the checkpoint is past `train.num_steps`.
      CheckpointMismatch: the checkpoint does not fit the config's model or optimizer.
    """
    latest = manager.latest_step()
    if distributed.is_main_process():
        run_files.check_start(workdir, resume=resume, latest=latest)
    if latest is not None and not resume:
        raise CheckpointsExist(
            f"{workdir} already holds the checkpoints of a run (the latest at step {latest}). Pass --resume to "
            "continue it, or choose another --workdir to start a new run.")
    state = create_train_state(config, jax.random.key(int(config.train.seed)))
    if latest is None:
        _warn_if_frozen_without_weights(config.model)
        return state, 0
    check_fits(manager, latest, state, config, workdir)
    state, data_state = restore_checkpoint(manager, state)
    start, num_steps = int(data_state.get("next_step", int(state.step))), int(config.train.num_steps)
    if start > num_steps:
        raise InvalidSetting(
            f"config.train.num_steps={num_steps}, but the run in {workdir} is already at step {start}: "
            f"nothing to train. Raise config.train.num_steps above {start} to continue it, or "
            f"evaluate its checkpoint with `jaxdet eval --workdir {workdir}`.")
    return state, start


def _save_run_files(config: ml_collections.ConfigDict, workdir: str, class_names: Sequence[str], start: int) -> None:
    """config.json and class_names.json for a new run. A resumed run keeps its config.json as it
    started, records the settings different from its config now (`jaxdet.workdir.read_config`) in
    config_changes.jsonl and warns of them (a longer train.num_steps, the way to continue a run, only
    recorded), and cuts its log back to `start`."""
    if start == 0 or not os.path.isfile(os.path.join(workdir, run_files.CONFIG)):
        run_files.save_run_files(config, workdir, class_names)
        if start == 0:
            return
    run = run_files.read_config(workdir)
    run_files.cut_train_log(workdir, start)  # rows past the checkpoint are logged again
    changes = run_files.config_differences(run, config)
    if changes:
        run_files.record_config_changes(workdir, start, changes)
    shown = {key: v for key, v in changes.items() if key != "train.num_steps"}
    if shown:
        listed = "; ".join(f"config.{key}: {was!r} -> {now!r}" for key, (was, now) in shown.items())
        warnings.warn(f"resuming from step {start} with settings that differ from the run's: {listed}. They hold "
                      f"from step {start} on; {os.path.join(workdir, run_files.CONFIG)} keeps the run's original "
                      f"config and {os.path.join(workdir, run_files.CONFIG_CHANGES)} records the change.",
                      UserWarning, stacklevel=3)


class _Guard:
    """Reads each step's metrics back and reports them; stops the run (TrainingDiverged) at the first
    non-finite metric or, before a checkpoint, non-finite parameters."""

    def __init__(self, manager, checkpoint_dir: str, reporter: reporting.TrainingReporter):
        self.manager, self.checkpoint_dir, self.reporter = manager, checkpoint_dir, reporter
        self.last_finite = None  # (step, host metrics)

    def _stop(self, step: int, metrics: Mapping[str, float]) -> TrainingDiverged:
        self.manager.wait_until_finished()
        return TrainingDiverged(step=step, metrics=metrics, last_finite=self.last_finite,
                                checkpoint_step=self.manager.latest_step(), checkpoint_dir=self.checkpoint_dir)

    def record(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
        host = _host_metrics(metrics)
        if not all(math.isfinite(v) for v in host.values()):
            raise self._stop(step, host)
        self.last_finite = (step, host)
        self.reporter.step(step, host)

    def check_params(self, step: int, params) -> None:
        if not bool(_all_finite(params)):
            raise self._stop(step, {})


def _run_steps(state: TrainState, pipeline, mesh: jax.sharding.Mesh, *, start: int, num_steps: int, every: int,
               manager, guard: _Guard, stop: _Stop) -> tuple:
    """Steps `start` to `num_steps`, each step's metrics recorded one step late (the first at once),
    a checkpoint every `every` steps and at the end once its step is known to be finite, and one of
    the step reached when a signal came (`stop`).

    Returns:
      (final state, final step, seconds of the first step, seconds of all steps).
    """
    step_fn = _parallel_step(mesh, train_step)
    step, pending = start, None
    began = time.perf_counter()
    first_step_seconds = 0.0
    for batch in pipeline.batches(start, max(num_steps - start, 0)):
        batch = shard_batch({k: batch[k] for k in TRAIN_KEYS if k in batch}, mesh)
        state, metrics = step_fn(state, batch, step_key(state))
        step += 1
        if pending is not None:
            guard.record(*pending)
        pending = (step, metrics)
        if step == start + 1:
            guard.record(*pending)
            pending = None
            first_step_seconds = time.perf_counter() - began
        if step % every == 0 or step == num_steps:
            if pending is not None:
                guard.record(*pending)
                pending = None
            guard.check_params(step, state.params)
            save_checkpoint(manager, state, data_state={"next_step": step}, force=step == num_steps)
        if stop.received is not None and pending is not None:
            guard.record(*pending)
            pending = None
        stop.save_and_stop(step, state, manager, guard)
    if pending is not None:
        guard.record(*pending)
    jax.block_until_ready(state)
    return state, step, first_step_seconds, time.perf_counter() - began


def _has_checkpoint(manager) -> bool:
    try:
        return manager.latest_step() is not None
    except Exception:  # the error may have broken the manager: say what holds in general
        return True


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
      InvalidSetting: a step count, interval or batch size below 1 (`check_train_settings`), or
        a resumed run already past num_steps.
      CheckpointsExist: workdir has checkpoints and `resume` is False.
      RunWithoutCheckpoints: workdir holds a run's log but no checkpoint (`jaxdet.workdir.check_start`).
      WorkdirLocked: another process trains in workdir (`jaxdet.workdir.lock`).
      WouldOverwrite: a file to write is one of the inputs (`jaxdet.workdir.output`).
      TrainingInterrupted: SIGINT or SIGTERM, after saving the step reached (`_Stop`).
      CheckpointMismatch: resuming with a model or optimizer the checkpoint does not fit.
      TrainingDiverged: a non-finite loss or gradient (nothing after the last good checkpoint saved).
    """
    check_train_settings(config)
    mesh = make_mesh(devices=devices)
    global_batch = int(config.train.batch_size)
    layout = batch_layout(global_batch, mesh)
    shard = distributed.process_shard(global_batch)
    if dataset is None:
        dataset = load_dataset(config, "train")
    config = with_class_names(config, dataset.class_names)  # what the run stores; num_classes 0 settled
    pipeline = train_pipeline(config, dataset, num_shards=shard.num_shards, shard_index=shard.shard_index)
    num_steps, every = int(config.train.num_steps), int(config.train.checkpoint_every)
    if distributed.is_main_process():
        run_files.lock(workdir)  # one training per directory
    checkpoint_dir = run_files.output(run_files.checkpoint_dir(workdir))
    reporter = None
    # The manager is closed whatever happens: its threads would otherwise print after the error.
    with saving(checkpoint_dir, save_every=every, keep=int(config.train.keep_checkpoints)) as manager, \
            _Stop(checkpoint_dir) as stop:
        try:
            state, start = _starting_state(config, workdir, manager, resume=resume)
            main = distributed.is_main_process()
            if main:
                _save_run_files(config, workdir, dataset.class_names, start)
            reporter = reporting.TrainingReporter(
                workdir, start_step=start, total_steps=num_steps, images_per_step=global_batch,
                log_every=int(config.train.log_every), show_bar=show_progress, append=start > 0, enabled=main)
            state, step, first_step_seconds, train_seconds = _run_steps(
                replicate(state, mesh), pipeline, mesh, start=start, num_steps=num_steps, every=every,
                manager=manager, guard=_Guard(manager, checkpoint_dir, reporter), stop=stop)
        except BaseException as error:
            if reporter is not None:
                reporter.close(after_error=True)  # the run's error is the one to report
            user = None if isinstance(error, JaxdetError) else user_error(error, checkpointed=_has_checkpoint(manager))
            if user is not None and not isinstance(error, (FileNotFoundError, ValueError)):
                raise user from error  # out of memory, a full disk: the advice fits what was saved
            raise
        reporter.close()
    timed = step - start - 1
    rate = timed * global_batch / max(train_seconds - first_step_seconds, 1e-9) if timed > 0 else float("nan")
    return TrainResult(state=state, start_step=start, final_step=step, train_seconds=train_seconds,
                       first_step_seconds=first_step_seconds, images_per_second=rate,
                       layout=str(layout))
