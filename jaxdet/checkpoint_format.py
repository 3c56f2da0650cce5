"""A run's checkpoints on disk, as orbax keeps them: what training writes and resumes from, and what
inference restores a trained model from, without either knowing the other.

Each checkpoint is a step directory under `workdir/checkpoints` (`jaxdet.workdir.checkpoint_dir`)
with two items: STATE, the train state's arrays as a nested dict (`flax.serialization.to_state_dict`
of `jaxdet.training.TrainState`: "step" [] int32, "params", "model_state", "opt_state", "rng"
[2] uint32), and DATA, a small JSON dict of the input pipeline's position. The handlers are
named up front, so that a checkpoint's shapes are read from orbax's metadata without restoring
it (`check_fits`): a checkpoint of another model or optimizer is reported by the config keys that
differ from the run's `config.json` (`CheckpointMismatch`), not by orbax's tree dump.

    manager = checkpoint_manager(checkpoint_dir(workdir))
    check_fits(manager, step, {"params": ..., "model_state": ...}, config, workdir)
    arrays, data_state = restore_arrays(manager, step, target)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxdet import workdir as run_files
from jaxdet.errors import JaxdetError

STATE, DATA = "state", "data"


class CheckpointMismatch(JaxdetError, RuntimeError):
    """A run's checkpoint does not fit the arrays of the config given (another model or optimizer)."""

    exit_status = 2


def checkpoint_manager(directory: str, *, save_every: int = 1000, keep: int = 3,
                       async_save: bool = True) -> ocp.CheckpointManager:
    """A manager for checkpoints in `directory` (created if absent).

    Args:
      directory: where step directories go (made absolute: orbax needs that).
      save_every: a save goes ahead only when step % save_every == 0, unless forced.
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


def _shapes(tree) -> dict:
    return {jax.tree_util.keystr(path, simple=True, separator="."): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def check_fits(manager: ocp.CheckpointManager, step: int, arrays: Mapping[str, Any],
               config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises CheckpointMismatch unless checkpoint `step` holds every array of `arrays` (a part of the
    STATE item: all of it, or e.g. only "params" and "model_state") with its shape, naming the keys
    in which `config` differs from the run's `config.json` (the model's when any)."""
    stored = {name: shape for name, shape in _shapes(manager.item_metadata(step)[STATE]).items()
              if name.split(".", 1)[0] in arrays}
    wanted = _shapes(dict(arrays))
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
    listed = ", ".join(f"{name} {stored.get(name, 'missing')} in it, {wanted.get(name, 'missing')} here"
                       for name in differ[:3])
    raise CheckpointMismatch(
        f"the checkpoint of step {step} in {manager.directory} does not fit the model of this config ({listed}"
        f"{'; ' + str(len(differ) - 3) + ' more' if len(differ) > 3 else ''}): this run was trained with a "
        f"different model config, and {workdir} has no {run_files.CONFIG} to say which. Give the config it was "
        f"trained with (--config and its overrides).")


def restore_arrays(manager: ocp.CheckpointManager, step: int | None, target: Mapping[str, Any]) -> tuple:
    """The STATE arrays of checkpoint `step` (the latest if None) in the structure, shapes, dtypes and
    shardings of `target` (arrays or `jax.ShapeDtypeStruct`s), and its DATA dict.

    Raises:
      FileNotFoundError: no checkpoint (or not that step) in the manager's directory.
    """
    manager.wait_until_finished()
    if step is None:
        step = manager.latest_step()
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(f"no checkpoint{'' if step is None else f' for step {step}'} in {manager.directory}")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, dict(target))
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(target),
        DATA: ocp.args.JsonRestore(),
    }))
    return restored[STATE], dict(restored[DATA] or {})


def stored_arrays(manager: ocp.CheckpointManager, step: int, sharding: jax.sharding.Sharding) -> dict:
    """The STATE item of checkpoint `step` as `jax.ShapeDtypeStruct`s placed by `sharding` (its
    metadata: nothing is read but the shapes and dtypes)."""
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        dict(manager.item_metadata(step)[STATE]))


def open_run(workdir: str, step: int | None = None) -> tuple:
    """(a manager of the checkpoints of the run in `workdir`, the step to read: `step`, else the
    latest); close the manager when done.

    Raises:
      FileNotFoundError: workdir has no checkpoint (or not that step: the message lists those there).
    """
    directory = run_files.checkpoint_dir(workdir)
    no_checkpoints = f"no checkpoints in {workdir}: train there first (jaxdet train --workdir {workdir})"
    if not os.path.isdir(directory):
        raise FileNotFoundError(no_checkpoints)
    manager = checkpoint_manager(directory, keep=1000)
    steps = sorted(manager.all_steps())
    if not steps:
        manager.close()
        raise FileNotFoundError(no_checkpoints)
    if step is not None and step not in steps:
        manager.close()
        raise FileNotFoundError(
            f"no checkpoint of step {step} in {directory}; the run's checkpoints are of step"
            f"{'s' if len(steps) > 1 else ''} {', '.join(str(s) for s in steps)} (a run keeps only its last "
            f"config.train.keep_checkpoints): pass --step with one of them, or no --step for the latest")
    return manager, steps[-1] if step is None else step
