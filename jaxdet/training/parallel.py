"""Data parallelism over a device mesh: the same `train_step` on 1 or N devices, on 1 or M hosts.

The global batch is split along its leading axis over a 1-D mesh (axis "data") and the train
state is replicated. `train_step` is not rewritten: `make_parallel_train_step` jits it with
these shardings and XLA partitions the program. The loss is the mean over the *global* batch,
so its gradient is the global batch's gradient; the partitioner computes each device's part
and sums the parts with an all-reduce, the averaging of data parallelism, and one step on N
devices equals one step on a single device given the same global batch (up to the order of
float additions).

RoI pooling is a custom call, which the partitioner would replicate (gathering every device's
feature map), and it would gather the RPN scores to run top-k on the whole batch; the step is
traced with the mesh in context, so that `xla_ops.roi_pool` and the per-image stages of
`jaxdet.targets` (`jaxdet.ops.per_image.map_images`) split themselves along the batch instead:
the compiled step's only collective is the all-reduce of the gradient and metrics. Any jitted
function traced under `jax.set_mesh(mesh)` with inputs from `shard_batch` and `replicate` (e.g.
`jaxdet.inference.predict`) runs the same way.

Across hosts (after `jaxdet.training.distributed.initialize`), `jax.devices()` lists every
process's devices; each process feeds its own rows of the global batch to `shard_batch`.

    mesh = make_mesh()                       # all devices, or make_mesh(num_devices=2)
    print(batch_layout(global_batch, mesh))  # "global batch 16 = 4 devices x 4 images ..."
    state = replicate(create_train_state(config, key), mesh)
    step = make_parallel_train_step(mesh)
    state, metrics = step(state, shard_batch(local_batch, mesh), step_key(state))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxdet import compiler_options
from jaxdet.training.step import train_step

DATA_AXIS = "data"


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


def make_parallel_train_step(mesh: Mesh, step_fn: Callable = train_step, *,
                             donate_state: bool = True) -> Callable:
    """`step_fn` compiled for data parallelism on `mesh`.

    Args:
      mesh: from `make_mesh` (one device works too: the same program, unpartitioned).
      step_fn: (state, batch, key) -> outputs; default `jaxdet.training.step.train_step`. Any
        function of that form whose outputs are the same on every device (e.g. `eval_step`).
      donate_state: reuse the state's buffers for the output (a train step's new state); False
        for a function that does not return a new state.

    Returns:
      A jitted (state, batch, key) -> outputs taking `state` and `key` replicated (`replicate`),
      `batch` from `shard_batch`, and returning replicated outputs. Lower it as any jitted
      function (`.lower(state, batch, key).compile().as_text()` is the partitioned program).
    """

    def step(state, batch, key):
        # The mesh in context while tracing: RoI pooling splits itself along the batch with it.
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return step_fn(state, batch, key)

    return compiler_options.jit(step, in_shardings=(replicated(mesh), split_batch(mesh), replicated(mesh)),
                   out_shardings=replicated(mesh), donate_argnums=(0,) if donate_state else ())
