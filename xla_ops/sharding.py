"""Per-image work partitioned along the batch: each device computes its own images.

XLA's partitioner knows nothing of a custom call, so inside a jitted program whose batch is
split over a mesh it replicates the call's operands: every device would all-gather every other
device's feature map (forward) and pooled cotangents (backward) and pool the whole batch.
Work that is independent per image (RoI pooling, and in `jaxdet` anchor targets, proposals
with their NMS, RoI sampling, detection post-processing) can be split instead:
`batch_partitioned(fn)` runs `fn` under `jax.shard_map`, each device on its [N / D] images,
and the gradient comes back split the same way. Nothing crosses devices.

The mesh is the one in context while tracing (`jax.set_mesh(mesh)` or
`jax.sharding.use_abstract_mesh(mesh.abstract_mesh)`; `jaxdet.training.parallel` sets it);
with no mesh, or a mesh of one device, `batch_partitioned(fn)` is `fn`.

    with jax.set_mesh(mesh):  # mesh axes ("data",); features [N, H, W, C] split along N
        pooled = jax.jit(xla_ops.roi_pool)(features, rois)  # rois [N, R, 4] -> [N, R, 7, 7, C]
"""

import functools
import warnings
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

AxisNames = Union[str, Sequence[str], None]


def resolve_batch_axes(mesh, axes: AxisNames = None) -> tuple:
    """The mesh axes the batch is split over: `axes` as a tuple, or every axis of `mesh` not
    already manual (inside a `shard_map`), the layout of a data-parallel mesh.

    Raises:
      ValueError: an axis of `axes` is not in the mesh.
    """
    if axes is None:
        return tuple(name for name in mesh.axis_names if name not in mesh.manual_axes)
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    unknown = [name for name in axes if name not in mesh.axis_names]
    if unknown:
        raise ValueError(f"batch_axes {unknown} are not axes of the mesh {mesh.axis_names}")
    return axes


def batch_shards(batch_axes: AxisNames = None) -> tuple:
    """(axes, number of shards) the batch is split into under the mesh in context; ((), 1)
    without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return (), 1
    axes = resolve_batch_axes(mesh, batch_axes)
    count = 1
    for name in axes:
        count *= mesh.shape[name]
    return axes, count


def batch_partitioned(fn: Callable, *, batch_axes: AxisNames = None, name: Optional[str] = None) -> Callable:
    """`fn` run per shard of the batch under the mesh in context (see the module docstring).

    Args:
      fn: (*args, **kwargs) -> outputs, where every array of the arguments and of the outputs
        has the batch as its leading axis and `fn` treats the images independently (e.g. a
        `jax.vmap` of a per-image function; no collectives). Values closed over are shared by
        every shard and get no gradient through `fn`.
      batch_axes: the mesh axis (or axes) the batch is split over; None: every non-manual axis.
      name: what to call `fn` in the warning below (default its __name__).

    Returns:
      A function of the same arguments and outputs. When the batch does not split evenly over
      the devices it warns (once per name and shapes) and calls `fn` unpartitioned, which
      computes the same values with every device holding the whole batch.
    """
    label = name or getattr(fn, "__name__", "fn")

    @functools.wraps(fn)
    def partitioned(*args, **kwargs):
        axes, count = batch_shards(batch_axes)
        if count == 1:
            return fn(*args, **kwargs)
        sizes = {leaf.shape[0] if getattr(leaf, "ndim", 0) else None
                 for leaf in jax.tree.leaves((args, kwargs))}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(f"{label}: every argument must have the batch as its leading axis to be split "
                             f"over the mesh, got leading sizes {sorted(sizes, key=str)}")
        (size,) = sizes
        if size % count:
            warn_unpartitioned(label, f"the batch N={size} does not split evenly over the {count} devices "
                                       f"of mesh axes {axes}")
            return fn(*args, **kwargs)
        spec = PartitionSpec(axes)
        # check_vma=False: shard_map's type check guards collectives, and per-image code has none;
        # it would instead reject common per-image code, e.g. a while_loop whose carry starts
        # from a constant (NMS) and becomes varying through the shard's data.
        return jax.shard_map(lambda a, k: fn(*a, **k), in_specs=(spec, spec), out_specs=spec,
                             check_vma=False)(args, kwargs)

    return partitioned


def vary_together(*arrays, like=None) -> list:
    """`arrays` typed as varying over every manual mesh axis (inside `jax.shard_map`) over which
    any of `like` (default `arrays`) varies; values are unchanged, and outside shard_map this is
    the identity. shard_map's type check (check_vma) needs a custom call's operands to agree and
    its results to vary as its operands do (each device computes on its own shard), which
    `jax.ffi.ffi_call` leaves to the caller: without it a custom VJP's cotangent would not match
    its primal and a psum of the output would count it as replicated. Where an operand that does
    not vary is made varying, its gradient is summed over the axes (the transpose), as JAX does
    for its own operations."""
    like = arrays if like is None else like
    # full_like takes on its argument's varying axes; the select joins them (XLA folds it away).
    flag = functools.reduce(jnp.logical_and, [jax.lax.full_like(x, True, jnp.bool_, shape=()) for x in like])
    return [jnp.where(flag, x, x) for x in arrays]


@functools.cache
def warn_unpartitioned(label: str, reason: str) -> None:
    """Warns, once per (label, reason), that `label` runs unpartitioned under the mesh and why."""
    warnings.warn(f"{label}: {reason}; it runs unpartitioned, each device gathering the whole batch",
                  RuntimeWarning, stacklevel=4)
