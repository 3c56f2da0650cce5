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

Across hosts (after `jaxdet.distributed.initialize`), `jax.devices()` lists every process's
devices; each process feeds its own rows of the global batch to `shard_batch`. The mesh and the
placements (`make_mesh`, `replicate`, `shard_batch`, `batch_layout`) are `jaxdet.devices`', which
detection shares.

    mesh = make_mesh()                       # all devices, or make_mesh(num_devices=2)
    print(batch_layout(global_batch, mesh))  # "global batch 16 = 4 devices x 4 images ..."
    state = replicate(create_train_state(config, key), mesh)
    step = make_parallel_train_step(mesh)
    state, metrics = step(state, shard_batch(local_batch, mesh), step_key(state))
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import Mesh

from jaxdet import compiler_options
from jaxdet.devices import replicated, split_batch
from jaxdet.training.step import train_step


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
