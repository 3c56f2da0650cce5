"""Checkpoints with orbax: every N steps and at the end, the last k kept, exact resume.

A checkpoint holds the TrainState's arrays (step, params, model_state, opt_state, rng) and a
small JSON dict of the input pipeline's position ("data_state"), so that a resumed run
continues the same loss curve: the same parameters and momentum, the same keys
(`step_key(state)` depends only on rng and step) and the same next batches.

Atomicity: orbax writes each checkpoint into a temporary directory and renames it into place
when complete, so a process killed while saving leaves the previous checkpoints intact and
`latest_step` never sees the partial one (which the next manager deletes in the background).

`restore_trained(config, workdir)` is the state of a run's checkpoint, for evaluation and prediction.
"""

import os
from typing import Any, Mapping, Optional, Tuple

import flax.serialization
import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxdet import workdir as run_files
from jaxdet.training.state import TrainState, create_train_state

STATE, DATA = "state", "data"


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
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=(STATE, DATA))


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
        state, _ = restore_checkpoint(manager, create_train_state(config, jax.random.key(0)), step=step)
    finally:
        manager.close()
    return state
