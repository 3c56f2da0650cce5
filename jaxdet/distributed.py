"""Several processes (hosts) training one model: JAX's distributed runtime, data shards, gathering.

Each process runs the same program on its own devices; `jax.distributed.initialize` connects
them through a coordinator (process 0's address), after which `jax.devices()` lists every
process's devices and `jaxdet.devices` builds one mesh over all of them. Every process
reads only its own shard of each global batch (`process_shard`), and evaluation, done on each
process's shard of the test set, gathers the detections of all processes (`gather_detections`)
before computing mAP. Checkpoints need nothing more: orbax writes each replicated array once,
from one process, and restores into whatever devices the target state lives on.

Settings come from flags (`add_arguments`) or, where a flag is not given, the environment:
  JAX_COORDINATOR_ADDRESS  host:port of process 0's coordinator service
  JAX_NUM_PROCESSES        number of processes P
  JAX_PROCESS_ID           this process's index in [0, P)
With none of them set there is one process and nothing to initialise. JAX itself reads the
first; the other two are jaxdet's, so that a launcher only sets variables (under SLURM, for
example, JAX_NUM_PROCESSES=$SLURM_NTASKS JAX_PROCESS_ID=$SLURM_PROCID).

    settings = settings_from_args(parser.parse_args())
    initialize(settings)                     # before anything else touches JAX's devices
    shard = process_shard(global_batch)      # InputPipeline(..., **shard._asdict())
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxdet.errors import UsageError

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

# The per-image detections gathered, as `jaxdet.inference.detections_to_lists` makes them:
# name -> (shape after the leading detection axis, dtype).
DETECTION_FIELDS = {"boxes": ((4,), np.float32), "scores": ((), np.float32), "labels": ((), np.int32)}


class ProcessesError(UsageError, ValueError):
    """The processes of a run, as the flags or the environment give them, do not add up."""


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """Where this process stands among the processes of a run (one process: all defaults).

    coordinator_address: "host:port" of the coordinator (process 0 runs it); None with one process.
    num_processes: P.
    process_id: this process's index in [0, P).
    bind_address: "host:port" the coordinator listens on; None: JAX's default, every interface
      at the coordinator's port ("127.0.0.1:port" keeps a single-machine run off the network).
    timeout_s: how long to wait for every process to join before failing.
    """

    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0
    bind_address: str | None = None
    timeout_s: int = 300

    def __post_init__(self):
        if self.num_processes < 1:
            raise ValueError(f"num_processes must be at least 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"process_id must be in [0, {self.num_processes}), got {self.process_id}")
        if self.num_processes > 1:
            _check_address("coordinator_address", self.coordinator_address)
        if self.bind_address is not None:
            _check_address("bind_address", self.bind_address)
        if self.timeout_s < 1:
            raise ValueError(f"timeout_s must be at least 1, got {self.timeout_s}")

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1


def _check_address(name: str, address: str | None) -> None:
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{name} must be 'host:port' with a port in [1, 65535], got {address!r}"
                         + (" (needed with more than one process)" if address is None else ""))


def _int_setting(name: str, value: int | None, env_name: str, environ: Mapping[str, str]) -> int | None:
    if value is not None:
        return int(value)
    text = environ.get(env_name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: environment variable {env_name}={text!r} is not an integer") from None


def distributed_settings(*, coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None, bind_address: str | None = None, timeout_s: int = 300,
                         environ: Mapping[str, str] | None = None) -> DistributedSettings:
    """Settings from explicit values, each missing one read from the environment (see the module docstring).

    Args:
      coordinator_address, num_processes, process_id, bind_address, timeout_s: see DistributedSettings.
      environ: the environment to read (default os.environ).

    Raises:
      ValueError: a value out of range, an unparsable environment variable, or several processes
        without a coordinator address or process id.
    """
    environ = os.environ if environ is None else environ
    coordinator_address = coordinator_address or environ.get(ENV_COORDINATOR) or None
    num_processes = _int_setting("num_processes", num_processes, ENV_NUM_PROCESSES, environ)
    process_id = _int_setting("process_id", process_id, ENV_PROCESS_ID, environ)
    if num_processes is None:
        if coordinator_address is not None or process_id is not None:
            raise ValueError(f"a coordinator address or process id was given but not the number of processes "
                             f"(--num-processes or {ENV_NUM_PROCESSES})")
        num_processes = 1
    if num_processes > 1 and process_id is None:
        raise ValueError(f"{num_processes} processes but no process id (--process-id or {ENV_PROCESS_ID})")
    return DistributedSettings(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=0 if process_id is None else process_id, bind_address=bind_address,
                               timeout_s=timeout_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --coordinator-address, --num-processes, --process-id, --coordinator-bind-address and
    --distributed-timeout to a command's parser (read back with `settings_from_args`)."""
    group = parser.add_argument_group("several processes (hosts)")
    group.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help=f"process 0's coordinator service (default: ${ENV_COORDINATOR})")
    group.add_argument("--num-processes", type=int, metavar="P",
                       help=f"number of processes of the run (default: ${ENV_NUM_PROCESSES}, else 1)")
    group.add_argument("--process-id", type=int, metavar="I",
                       help=f"this process's index in [0, P) (default: ${ENV_PROCESS_ID})")
    group.add_argument("--coordinator-bind-address", metavar="HOST:PORT",
                       help="where process 0's coordinator listens (default: every interface, the port of "
                            "--coordinator-address)")
    group.add_argument("--distributed-timeout", type=int, default=300, metavar="SECONDS",
                       help="how long to wait for all processes to join (default: %(default)s)")


def settings_from_args(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None) -> DistributedSettings:
    """DistributedSettings from the flags of `add_arguments`, the environment filling the gaps.

    Raises:
      ProcessesError: as `distributed_settings`' ValueError, naming the flag or variable.
    """
    try:
        return distributed_settings(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                                    process_id=args.process_id, bind_address=args.coordinator_bind_address,
                                    timeout_s=args.distributed_timeout, environ=environ)
    except ValueError as e:
        raise ProcessesError(str(e)) from None


def initialize(settings: DistributedSettings) -> None:
    """Joins the run's processes (nothing to do with one). Call once, before JAX first lists devices."""
    if not settings.multi_process:
        return
    jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                               num_processes=settings.num_processes, process_id=settings.process_id,
                               coordinator_bind_address=settings.bind_address,
                               initialization_timeout=settings.timeout_s)


class ProcessShard(NamedTuple):
    """This process's part of every global batch: `InputPipeline(dataset, **shard._asdict(), ...)`."""

    batch_size: int  # images per step on this process
    num_shards: int  # the number of processes
    shard_index: int  # this process's index


def is_main_process() -> bool:
    """Whether this process writes the run's files (the first of several, or the only one)."""
    return jax.process_index() == 0


def process_shard(global_batch: int) -> ProcessShard:
    """The shard of `global_batch` this process reads (all of it with one process).

    Raises:
      ValueError: global_batch not divisible by the number of processes.
    """
    count, index = jax.process_count(), jax.process_index()
    if global_batch < 1 or global_batch % count:
        raise ValueError(f"global batch size {global_batch} must be a positive multiple of the {count} processes")
    return ProcessShard(batch_size=global_batch // count, num_shards=count, shard_index=index)


def gather_detections(local: Mapping[int, Mapping[str, np.ndarray]]) -> dict:
    """The detections of every process, on every process (a collective: all processes call it).

    Args:
      local: this process's images, image_id -> {"boxes" [n, 4] float32, "scores" [n] float32,
        "labels" [n] int32} (what `jaxdet.inference.detections_to_lists` gives; other keys are
        ignored). A process may have no images.

    Returns:
      image_id -> the same dict, for the images of all processes (numpy arrays).

    Raises:
      ValueError: an image id negative or held by two processes, or a field of the wrong shape.
    """
    ids = np.array(sorted(int(i) for i in local), np.int64).reshape(-1)
    if ids.size and ids[0] < 0:
        raise ValueError(f"gather_detections: image ids must be non-negative, got {ids[0]}")
    counts = np.zeros(ids.shape, np.int32)
    fields = {name: [] for name in DETECTION_FIELDS}
    for k, image_id in enumerate(ids):
        found = local[int(image_id)]
        counts[k] = len(found["boxes"])
        for name, (shape, dtype) in DETECTION_FIELDS.items():
            value = np.asarray(found[name], dtype)
            if value.shape != (counts[k], *shape):
                raise ValueError(f"gather_detections: image {image_id}: {name} has shape {value.shape}, "
                                 f"expected {(int(counts[k]), *shape)} (n = len(boxes))")
            fields[name].append(value)

    # Collectives need one shape everywhere: pad to the largest process's numbers, then cut.
    sizes = multihost_utils.process_allgather(np.array([ids.size, counts.sum()], np.int32))  # [P, 2]
    max_images, max_detections = (int(n) for n in np.max(sizes, axis=0))
    if max_images == 0:
        return {}
    padded = {"ids": _pad(ids.astype(np.int32), max_images), "counts": _pad(counts, max_images)}
    for name, (shape, dtype) in DETECTION_FIELDS.items():
        flat = np.concatenate(fields[name]) if fields[name] else np.zeros((0, *shape), dtype)
        padded[name] = _pad(flat, max(max_detections, 1))  # no zero-size collectives
    everyone = multihost_utils.process_allgather(padded)  # each [P, ...]

    gathered = {}
    for p, (num_images, _) in enumerate(sizes):
        offsets = np.concatenate([[0], np.cumsum(everyone["counts"][p][:num_images])])
        for k in range(num_images):
            image_id = int(everyone["ids"][p][k])
            if image_id in gathered:
                raise ValueError(f"gather_detections: image {image_id} was evaluated by two processes")
            gathered[image_id] = {name: np.asarray(everyone[name][p][offsets[k]:offsets[k + 1]], dtype)
                                  for name, (_, dtype) in DETECTION_FIELDS.items()}
    return gathered


def _pad(array: np.ndarray, length: int) -> np.ndarray:
    """array [n, ...] -> [length, ...] with zeros after row n."""
    return np.concatenate([array, np.zeros((length - len(array), *array.shape[1:]), array.dtype)])
