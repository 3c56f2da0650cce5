"""Checkpoints with orbax: every N steps and at the end, the last k kept, exact resume.

A checkpoint holds the TrainState's arrays (step, params, model_state, opt_state, rng) and a
small JSON dict of the input pipeline's position ("data_state"), so that a resumed run
continues the same loss curve: the same parameters and momentum, the same keys
(`step_key(state)` depends only on rng and step) and the same next batches.

Atomicity: orbax writes each checkpoint into a temporary directory and renames it into place
when complete, so a process killed while saving leaves the previous checkpoints intact and
`latest_step` never sees the partial one (which the next manager deletes in the background).

A save that fails in orbax's background threads (a full disk) is raised by the manager's next save,
wait or close; `saving` keeps that the only report of it (orbax would also log it from each of its
threads, with TensorStore's complaints about the closed event loop of the failed write).

`restore_trained(config, workdir)` is the state of a run's checkpoint, for evaluation and prediction.
Before restoring, the checkpoint's array shapes (orbax's metadata) are compared with the config's
(`check_fits`): a checkpoint of another model or optimizer is named by the config keys that differ
from the run's `config.json` (`CheckpointMismatch`), not by orbax's tree dump.
"""

import contextlib
import logging
import os
import sys
from typing import Any, Iterator, Mapping, Optional, Tuple

import flax.serialization
import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxdet import workdir as run_files
from jaxdet.training.state import TrainState, create_train_state

STATE, DATA = "state", "data"


class CheckpointMismatch(RuntimeError):
    """A run's checkpoint does not fit the train state of the config given (another model or optimizer)."""


def checkpoint_manager(directory: str, *, save_every: int = 1000, keep: int = 3,
                       async_save: bool = True) -> ocp.CheckpointManager:
    """A manager for checkpoints in `directory` (created if absent).

    Args:
      directory: where step directories go (made absolute: orbax needs that).
      save_every: `save_checkpoint` saves only when step % save_every == 0, unless forced.
      keep: how many of the most recent checkpoints are kept.
      async_save: write in a background thread (training continues; `manager.wait_until_finished()`
        or `manager.close()` before exiting).
    """
    if save_every < 1 or keep < 1:
        raise ValueError(f"save_every and keep must be >= 1, got {save_every} and {keep}")
    # Multiples of save_every only (orbax's own interval would also save the first step seen).
    options = ocp.CheckpointManagerOptions(should_save_fn=lambda step, _: step % save_every == 0, max_to_keep=keep,
                                           create=True, cleanup_tmp_directories=True,
                                           enable_async_checkpointing=async_save)
    # Handlers named up front: item_metadata can then read a checkpoint's shapes without restoring it.
    handlers = {STATE: ocp.StandardCheckpointHandler(), DATA: ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


def _orbax_write_fault(record: logging.LogRecord) -> bool:
    """Whether `record` is orbax's report of an exception that is a failed write (`jaxdet.workdir.write_fault`)."""
    return ("orbax" in record.pathname and record.exc_info is not None
            and run_files.write_fault(record.exc_info[1]) is not None)


@contextlib.contextmanager
def saving(directory: str, **options) -> Iterator[ocp.CheckpointManager]:
    """A `checkpoint_manager(directory, **options)` for the `with` block, its saves finished and the
    manager closed at its end whatever happens. Meanwhile orbax's absl reports of a failed write and
    the "Event loop is closed" errors TensorStore's callbacks raise after it (unraisable, printed by
    default) are left out: the manager raises the failure itself."""
    absl = logging.getLogger("absl")
    unraisable = sys.unraisablehook

    def hook(report):
        if not (report.object is None and isinstance(report.exc_value, RuntimeError)
                and str(report.exc_value) == "Event loop is closed"):
            unraisable(report)

    def keep(record: logging.LogRecord) -> bool:
        return not _orbax_write_fault(record)

    absl.addFilter(keep)
    sys.unraisablehook = hook
    try:
        manager = checkpoint_manager(directory, **options)
        try:
            yield manager
        finally:
            try:
                manager.wait_until_finished()
            finally:
                manager.close()
    finally:
        sys.unraisablehook = unraisable
        absl.removeFilter(keep)


def _arrays(state: TrainState) -> dict:
    # A dict of dicts: optax's NamedTuples and flax's struct become plain, portable keys.
    return flax.serialization.to_state_dict(state)


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, *,
                    data_state: Optional[Mapping[str, Any]] = None, force: bool = False) -> bool:
    """Saves `state` at its step if the manager's interval says so (or `force`, e.g. at the end).

    Args:
      manager: from `checkpoint_manager`.
      state: the TrainState after `state.step` updates.
      data_state: JSON-serialisable position of the input pipeline (e.g. {"position": 1234}).
      force: save whatever the interval.

    Returns:
      Whether a save was started.
    """
    step = int(jax.device_get(state.step))
    return manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(_arrays(state)),
        DATA: ocp.args.JsonSave(dict(data_state or {})),
    }), force=force)


def _shapes(tree) -> dict:
    return {jax.tree_util.keystr(path, simple=True, separator="."): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def check_fits(manager: ocp.CheckpointManager, step: int, state: TrainState, config: ml_collections.ConfigDict,
               workdir: str) -> None:
    """Raises CheckpointMismatch unless checkpoint `step` holds every array of `state` with its shape,
    naming the keys in which `config` differs from the run's `config.json` (the model's when any)."""
    stored, wanted = _shapes(manager.item_metadata(step)[STATE]), _shapes(_arrays(state))
    if stored == wanted:
        return
    run = run_files.read_config(workdir)
    changed = run_files.config_differences(run, config) if run is not None else {}
    changed.pop("model.pretrained", None)  # initial weights: the checkpoint replaces them
    # The sections that shape the arrays: the model's first, then the optimizer's (its state).
    model, optimizer = ({k: v for k, v in changed.items() if k.startswith(section)} for section in ("model.", "optimizer."))
    shown = model or optimizer or changed
    if shown:
        sections = sorted({key.split(".")[0] for key in shown})
        keys = "; ".join(f"config.{key}={now!r} given, {was!r} in the run" for key, (was, now) in shown.items())
        raise CheckpointMismatch(
            f"this run was trained with a different {' and '.join(sections)} config: {keys} (the run's own "
            f"config is {os.path.join(workdir, run_files.CONFIG)}, which eval and --resume read when no --config "
            f"is given). Leave those settings out to use the run's, or train a new run with them in another "
            f"--workdir.")
    differ = sorted(name for name in set(stored) | set(wanted) if stored.get(name) != wanted.get(name))
    arrays = ", ".join(f"{name} {stored.get(name, 'missing')} in it, {wanted.get(name, 'missing')} here"
                       for name in differ[:3])
    raise CheckpointMismatch(
        f"the checkpoint of step {step} in {manager.directory} does not fit the model of this config ({arrays}"
        f"{'; ' + str(len(differ) - 3) + ' more' if len(differ) > 3 else ''}): this run was trained with a "
        f"different model config, and {workdir} has no {run_files.CONFIG} to say which. Give the config it was "
        f"trained with (--config and its overrides).")


def restore_checkpoint(manager: ocp.CheckpointManager, state: TrainState, *,
                       step: Optional[int] = None) -> Tuple[TrainState, dict]:
    """Restores a checkpoint into the structure of `state`.

    Args:
      manager: from `checkpoint_manager`.
      state: a TrainState of the same config (e.g. `create_train_state(config, key)`): gives
        the static fields and the shapes, dtypes and shardings of the arrays.
      step: which checkpoint; the latest if None.

    Returns:
      (restored state, data_state dict).

    Raises:
      FileNotFoundError: no checkpoint (or not that step) in the manager's directory.
    """
    manager.wait_until_finished()
    if step is None:
        step = manager.latest_step()
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(f"no checkpoint{'' if step is None else f' for step {step}'} in {manager.directory}")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(state))
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(target),
        DATA: ocp.args.JsonRestore(),
    }))
    return flax.serialization.from_state_dict(state, restored[STATE]), dict(restored[DATA] or {})


def restore_trained(config: ml_collections.ConfigDict, workdir: str, *, step: Optional[int] = None) -> TrainState:
    """The TrainState of the checkpoint of a run in `workdir` (the latest if `step` is None).

    Raises:
      FileNotFoundError: workdir has no checkpoint (or not that step: the message lists those there).
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.pretrained = ""  # the checkpoint holds every weight
    directory = run_files.checkpoint_dir(workdir)
    no_checkpoints = f"no checkpoints in {workdir}: train there first (jaxdet train --workdir {workdir})"
    if not os.path.isdir(directory):
        raise FileNotFoundError(no_checkpoints)
    manager = checkpoint_manager(directory, keep=1000)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise FileNotFoundError(no_checkpoints)
        if step is not None and step not in steps:
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {directory}; the run's checkpoints are of step"
                f"{'s' if len(steps) > 1 else ''} {', '.join(str(s) for s in steps)} (a run keeps only its last "
                f"config.train.keep_checkpoints): pass --step with one of them, or no --step for the latest")
        state = create_train_state(config, jax.random.key(0))
        check_fits(manager, steps[-1] if step is None else step, state, config, workdir)
        state, _ = restore_checkpoint(manager, state, step=step)
    finally:
        manager.close()
    return state
