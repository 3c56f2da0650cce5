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

The files' form (the manager, the items, the shape check against a config, restoring arrays) is
`jaxdet.checkpoint_format`'s, shared with inference, which restores a trained model's variables
from the same checkpoints (`jaxdet.inference.restore_trained`) without a TrainState.
"""

import contextlib
import logging
import sys
from typing import Any, Iterator, Mapping, Optional, Tuple

import flax.serialization
import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxdet import checkpoint_format
from jaxdet.checkpoint_format import DATA, STATE, checkpoint_manager
from jaxdet.errors import write_fault
from jaxdet.training.state import TrainState


def _orbax_write_fault(record: logging.LogRecord) -> bool:
    """Whether `record` is orbax's report of an exception that is a failed write (`jaxdet.errors.write_fault`)."""
    return ("orbax" in record.pathname and record.exc_info is not None
            and write_fault(record.exc_info[1]) is not None)


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


def check_fits(manager: ocp.CheckpointManager, step: int, state: TrainState, config: ml_collections.ConfigDict,
               workdir: str) -> None:
    """`jaxdet.checkpoint_format.check_fits` for every array of `state`: CheckpointMismatch unless
    checkpoint `step` holds them with their shapes."""
    checkpoint_format.check_fits(manager, step, _arrays(state), config, workdir)


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
    arrays, data_state = checkpoint_format.restore_arrays(manager, step, _arrays(state))
    return flax.serialization.from_state_dict(state, arrays), data_state

