"""Which devices a run computes on, and how arrays are placed on them: a 1-D mesh (axis "data")
over 1 or N devices of 1 or M processes, the batch split along it, everything else replicated.

`select_devices` turns the commands' --device and --num-devices into devices (an error that says
what to do when they are not there); `make_mesh` lays them out, taking the same number from each
process; `replicate` and `shard_batch` place a train state or detector and a batch on the mesh,
and `batch_layout` says how a global batch is spread. Training (`jaxdet.training.parallel`) and
detection over a dataset (`jaxdet.inference.dataset`) both build on these.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxdet.errors import DeviceError, UsageError

DATA_AXIS = "data"


def select_devices(device: str = "auto", num_devices: int | None = None) -> list:
    """The jax devices to run on: the platform asked for ("auto": JAX's default, a GPU when it finds
    one; "cpu"; "gpu"), all of them or `num_devices` of them (the same number from each process).

    Raises:
      DeviceError: no GPU when one was asked for, or fewer devices than asked for.
      UsageError: num_devices below 1.
    """
    if device == "cpu":
        # Before any backend starts: a GPU JAX would otherwise initialise (and reserve memory on).
        jax.config.update("jax_platforms", "cpu")
    if device == "gpu":
        try:
            devices = jax.devices("gpu")
        except RuntimeError:
            found = ", ".join(sorted({d.platform for d in jax.devices()}))
            raise DeviceError(
                f"no GPU found: --device gpu asked for one, but JAX sees only {found} devices. Check that "
                "`nvidia-smi` lists the GPU and that JAX was installed with CUDA support (pip install "
                "\"jax[cuda12]\"), and that CUDA_VISIBLE_DEVICES does not hide it; or run on the CPU with "
                "--device cpu (the default, --device auto, uses a GPU whenever JAX finds one).") from None
    else:
        devices = jax.devices("cpu") if device == "cpu" else jax.devices()
    if num_devices is not None:
        if num_devices < 1:
            raise UsageError(f"--num-devices must be at least 1, got {num_devices}")
        if num_devices > len(devices):
            raise DeviceError(
                f"--num-devices {num_devices} asked for more devices than JAX sees ({len(devices)} "
                f"{devices[0].platform} device{'s' if len(devices) > 1 else ''}). Use at most {len(devices)}; "
                "to simulate several CPU devices set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                "before starting.")
    # make_mesh takes the same number of devices from each process of a multi-host run.
    return list(make_mesh(num_devices, devices=devices).devices.flat)


def make_mesh(num_devices: int | None = None, *, devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh (axis "data") over `devices` (default all of `jax.devices()`, every process's).

    Args:
      num_devices: use only this many; with several processes, the first num_devices / P
        devices of each of the P processes (every process must take part in every step).
      devices: the devices to choose from, in order.

    Raises:
      ValueError: num_devices < 1, more than there are, or not a multiple of the process count.
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is not None:
        if num_devices < 1 or num_devices > len(devices):
            raise ValueError(f"num_devices must be in [1, {len(devices)}] (the devices JAX sees), got {num_devices}")
        processes = sorted({d.process_index for d in devices})
        if num_devices % len(processes):
            raise ValueError(f"num_devices {num_devices} must be a multiple of the number of processes "
                             f"({len(processes)}): each process takes the same number of devices")
        per_process = num_devices // len(processes)
        devices = [d for p in processes for d in _of_process(devices, p)[:per_process]]
    # Each process's devices form one contiguous block, in process order, so that process p's rows
    # of the global batch are rows [p * B / P, (p + 1) * B / P), the order of the input pipeline's shards.
    devices.sort(key=lambda d: d.process_index)
    # Auto axes: the compiler propagates the shardings (the model's code is sharding-agnostic).
    return Mesh(np.array(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def _of_process(devices: Sequence[Any], process: int) -> list:
    return [d for d in devices if d.process_index == process]


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (the train state, keys, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def split_batch(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over the mesh, each device holding B / D consecutive rows."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How a global batch is spread: global = num_processes * per_process = num_devices * per_device."""

    global_batch: int
    per_process: int
    per_device: int
    num_devices: int
    num_processes: int

    def __str__(self) -> str:
        hosts = f" = {_count(self.num_processes, 'process')} x {_count(self.per_process, 'image')}"
        return (f"global batch {self.global_batch}{hosts if self.num_processes > 1 else ''} = "
                f"{_count(self.num_devices, 'device')} x {_count(self.per_device, 'image')}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 'es' if noun.endswith('s') else 's'}"


def batch_layout(global_batch: int, mesh: Mesh) -> BatchLayout:
    """The layout of `global_batch` images on `mesh`.

    Raises:
      ValueError: global_batch not divisible by the mesh's devices.
    """
    num_devices = mesh.devices.size
    num_processes = len({d.process_index for d in mesh.devices.flat})
    if global_batch < 1 or global_batch % num_devices:
        raise ValueError(f"global batch size {global_batch} must be a positive multiple of the {num_devices} "
                         "devices of the mesh (each device takes the same number of images)")
    return BatchLayout(global_batch=global_batch, per_process=global_batch // num_processes,
                       per_device=global_batch // num_devices, num_devices=num_devices,
                       num_processes=num_processes)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A copy of `tree` (e.g. a TrainState) on every device of the mesh. With several processes,
    every process must pass the same values (e.g. the state built from the same key).

    The result may share buffers with `tree` (one device's copy can be the original array):
    once it is donated to the train step, `tree` is deleted too. Replicate, then use only the
    result.
    """
    # Not jax.device_put: with several processes it would take a process's local array for a
    # cross-host transfer. Each process fills its own devices from its own copy instead.
    return jax.tree.map(lambda x: multihost_utils.host_local_array_to_global_array(x, mesh, PartitionSpec()), tree)


def shard_batch(local_batch: Mapping[str, Any], mesh: Mesh) -> dict:
    """This process's rows of a global batch -> global arrays split along the batch over the mesh.

    Args:
      local_batch: dict of arrays [b, ...] with b = global batch / number of processes (the whole
        batch with one process), e.g. an `InputPipeline` batch of this process's shard.
      mesh: from `make_mesh`.

    Returns:
      dict of jax.Arrays [global batch, ...]; 64-bit arrays become 32-bit unless x64 is enabled.

    Raises:
      ValueError: b not divisible by this process's devices in the mesh.
    """
    sharding = split_batch(mesh)
    local_devices = len(sharding.addressable_devices)
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        if value.ndim == 0 or value.shape[0] % local_devices:
            raise ValueError(f"batch[{name!r}] has shape {value.shape}: its leading axis must split evenly over "
                             f"this process's {local_devices} devices")
        value = value.astype(jax.dtypes.canonicalize_dtype(value.dtype), copy=False)
        out[name] = jax.make_array_from_process_local_data(sharding, value)
    return out
