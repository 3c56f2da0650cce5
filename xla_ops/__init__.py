"""xla_ops: RoI max pooling as a native XLA custom call (C++ on CPU, CUDA on NVIDIA GPUs), and
image patches in bfloat16 (im2col) and products of bfloat16 matrices on x86's AMX tiles as CPU
custom calls.

    from xla_ops import roi_pool
    out = roi_pool(features, rois, output_size=(7, 7), spatial_scale=1 / 16)

See `xla_ops.roi_pool` for the semantics and `xla_ops.reference` for the pure jnp version;
`xla_ops.image_patches` (`xla_ops.patches`) for the patches, `xla_ops.bf16_dot` (`xla_ops.matmul`)
for the products.
"""

from xla_ops._native import is_built
from xla_ops.reference import roi_pool_reference
from xla_ops.ops import roi_pool, roi_pool_with_argmax, rois_from_fractions
from xla_ops.align import roi_align
from xla_ops.roi_align_reference import roi_align_reference
from xla_ops.patches import image_patches
from xla_ops.matmul import bf16_dot

__all__ = ["roi_pool", "roi_pool_with_argmax", "roi_pool_reference", "rois_from_fractions", "is_built",
           "image_patches", "bf16_dot"]
__all__ += ["roi_align", "roi_align_reference"]  # RoIAlign: xla_ops.align
