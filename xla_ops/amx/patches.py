"""Image patches in bfloat16 (im2col) as a native CPU custom call, with a pure jnp reference.

A stride-1 "same" convolution of x [N, H, W, C] with an odd k x k kernel is the matrix product
of x's patches [N * H * W, k * k * C] with the kernel reshaped to [k * k * C, O]. XLA's CPU
backend builds such patches slowly (a concatenation of shifted slices) while its bfloat16 dots
run on the CPU's matrix units, so the layers of `xla_ops.amx.layers` build them here
(experiments/results/peers.md has the measurements). The op is not differentiable itself: the
convolution that uses it defines its own gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np

from xla_ops.amx import _native
from xla_ops.sharding import vary_together


def image_patches(x: jax.Array, size: int = 3, *, transposed: bool = False) -> jax.Array:
    """The k x k patches of every pixel of x, zero outside the image, in bfloat16.

    Args:
      x: [N, H, W, C], float32 or bfloat16.
      size: the window side k, odd; the window of pixel (y, x) spans rows y - k // 2 ... y + k // 2.
      transposed: return the patches as columns instead of rows.

    Returns:
      [N * H * W, k * k * C] bfloat16 (rows of pixels in row-major (n, y, x) order; the element
      of tap (ty, tx) and channel c at column (ty * k + tx) * C + c, the order of an HWIO kernel
      reshaped to [k * k * C, O]), or its transpose [k * k * C, N * H * W]. Float32 elements are
      rounded to the nearest bfloat16 as `astype` does.

    On CPU with the extension built this is the native kernel; elsewhere the jnp reference. Under
    `jax.vmap` the custom call runs once per mapped element; inside `jax.shard_map` its result
    varies over the manual axes as x does.
    """
    if x.ndim != 4:
        raise ValueError(f"image_patches: x must be [N, H, W, C], got shape {x.shape}")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"image_patches: size must be a positive odd number, got {size}")
    if x.dtype not in (jnp.float32, jnp.bfloat16):
        raise TypeError(f"image_patches: x must be float32 or bfloat16, got {x.dtype}")
    if _native.current_platform() != "cpu" or not _native.patches_built():
        return image_patches_reference(x, size, transposed=transposed)
    n, h, w, c = x.shape
    if transposed:  # made from the image with its channels first: rows are shifted planes
        # Even for size 1 (a plain transpose) the custom call keeps the transposition out of
        # XLA's sight: XLA folds a transposed dot operand into the dot and then computes the
        # bfloat16 dot in float32, several times slower.
        x = x.transpose(3, 0, 1, 2).astype(jnp.bfloat16)
    shape = (size * size * c, n * h * w) if transposed else (n * h * w, size * size * c)
    patches = jax.ffi.ffi_call(_native.PATCHES_TARGET, jax.ShapeDtypeStruct(shape, jnp.bfloat16),
                               vmap_method="sequential")(x, size=np.int64(size), transposed=transposed)
    return vary_together(patches, like=(x,))[0]


def image_patches_reference(x: jax.Array, size: int = 3, *, transposed: bool = False) -> jax.Array:
    """`image_patches` as a concatenation of shifted slices of the zero-padded image."""
    n, h, w, c = x.shape
    pad = size // 2
    padded = jnp.pad(x.astype(jnp.bfloat16), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    taps = [padded[:, ty:ty + h, tx:tx + w] for ty in range(size) for tx in range(size)]
    patches = jnp.concatenate(taps, axis=-1).reshape(n * h * w, size * size * c)
    return patches.T if transposed else patches
