"""RoI pooling partitioned along the batch: each device pools its own images' RoIs.

XLA's partitioner knows nothing of a custom call, so inside a jitted program whose batch is
split over a mesh it replicates the call's operands: every device all-gathers every other
device's feature map (forward) and pooled cotangents (backward) and pools the whole batch.
RoI pooling is independent per image, so the batch can be split instead: `roi_pool` below
runs the op under `jax.shard_map`, each device on its [N / D] images and their RoIs, and
the gradient comes back split the same way. No feature map crosses devices.

The mesh is the one in context while tracing (`jax.set_mesh(mesh)` or
`jax.sharding.use_abstract_mesh(mesh.abstract_mesh)`; `jaxdet.training.parallel` sets it);
with no mesh, or a mesh of one device, this is exactly `xla_ops.roi_pool`.

    with jax.set_mesh(mesh):  # mesh axes ("data",); features [N, H, W, C] split along N
        pooled = jax.jit(roi_pool)(features, rois)  # rois [N, R, 4] -> [N, R, 7, 7, C]
"""

import functools
from typing import Optional, Sequence, Union

import jax
from jax.sharding import PartitionSpec

from xla_ops.ops import roi_pool as _roi_pool

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
        raise ValueError(f"roi_pool: batch_axes {unknown} are not axes of the mesh {mesh.axis_names}")
    return axes


def roi_pool(features, rois, output_size=(7, 7), spatial_scale=1 / 16, *, data_format="NHWC",
             rounding="none", impl="auto", deterministic=None, batch_axes: AxisNames = None):
    """`xla_ops.roi_pool` with the batch split over the mesh in context (see the module docstring).

    Args:
      features: [N, H, W, C] (or [N, C, H, W] with data_format="NCHW").
      rois: [N, R, 4] xyxy boxes per image, in input pixels. Under a mesh the [K, 5] form is
        refused: its batch indices are global, so its rows cannot be split with the images.
      output_size, spatial_scale, data_format, rounding, impl, deterministic: as `xla_ops.roi_pool`.
      batch_axes: the mesh axis (or axes) N is split over; None: every non-manual axis.

    Returns:
      [N, R, PH, PW, C] (NHWC) or [N, R, C, PH, PW] (NCHW), split along N like `features`.

    Raises:
      ValueError: under a mesh, rois not [N, R, 4] or N not divisible by the devices of
        `batch_axes`.
    """
    pool = functools.partial(_roi_pool, output_size=output_size, spatial_scale=spatial_scale,
                             data_format=data_format, rounding=rounding, impl=impl,
                             deterministic=deterministic)
    mesh = jax.sharding.get_abstract_mesh()
    axes = () if mesh.empty else resolve_batch_axes(mesh, batch_axes)
    num_shards = 1
    for name in axes:
        num_shards *= mesh.shape[name]
    if num_shards == 1:
        return pool(features, rois)
    if getattr(rois, "ndim", None) != 3 or rois.shape[-1] != 4:
        raise ValueError("roi_pool: under a mesh, rois must be [N, R, 4] boxes per image, got shape "
                         f"{getattr(rois, 'shape', None)}")
    if features.shape[0] % num_shards:
        raise ValueError(f"roi_pool: the batch N={features.shape[0]} does not split evenly over the "
                         f"{num_shards} devices of mesh axes {axes}")
    spec = PartitionSpec(axes)
    # check_vma=False: the op's ffi_call results carry no varying-manual-axes type, so with the
    # check on, its custom VJP's cotangent would not match the (varying) features it belongs to.
    return jax.shard_map(pool, in_specs=(spec, spec), out_specs=spec, check_vma=False)(features, rois)
