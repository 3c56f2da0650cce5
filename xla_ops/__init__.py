"""xla_ops: RoI max pooling as a native XLA custom call (C++ on CPU, CUDA on NVIDIA GPUs).

    from xla_ops import roi_pool
    out = roi_pool(features, rois, output_size=(7, 7), spatial_scale=1 / 16)

See `xla_ops.roi_pool` for the semantics and `xla_ops.reference` for the pure jnp version.
`xla_ops.amx`, a subpackage of its own, holds the CPU bfloat16 kit: image patches (im2col) and
products of bfloat16 matrices on x86's AMX tiles as CPU custom calls, and the flax layers made
of them.
"""

from xla_ops._native import is_built
from xla_ops.reference import roi_pool_reference
from xla_ops.ops import roi_pool, roi_pool_with_argmax, rois_from_fractions
from xla_ops.align import roi_align
from xla_ops.roi_align_reference import roi_align_reference

__all__ = ["roi_pool", "roi_pool_with_argmax", "roi_pool_reference", "rois_from_fractions", "is_built"]
__all__ += ["roi_align", "roi_align_reference"]  # RoIAlign: xla_ops.align
