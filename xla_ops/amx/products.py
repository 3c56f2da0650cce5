"""Products of bfloat16 matrices into float32 on the AMX tiles of x86 CPUs, as native CPU
custom calls, with XLA's dot as the reference and the fallback: `bf16_dot` of two matrices, and
`bf16_patch_dot` of an image's patches (im2col, never written out) and a convolution kernel.

The native kernel (csrc/bf16_dot_cpu.cc) packs b for the tiles once per call and reads a in
place; how it compares with XLA's dot is in experiments/results/peers.md. The tests also run it
through an emulation of the tile instructions (`_native.emulated_tiles()`), on any CPU. Not
differentiable itself: the layers that use it (`xla_ops.amx.layers`) define their own gradients.
Under `jax.vmap` a custom call runs once per mapped element; inside `jax.shard_map` its result
varies over the manual axes as its operands do.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from xla_ops.amx import _native
from xla_ops.amx.patches import image_patches
from xla_ops.sharding import vary_together


def bf16_dot(a: jax.Array, b: jax.Array, *, b_transposed: bool = False) -> jax.Array:
    """a [M, K] @ b [K, N] (b given as [N, K] when `b_transposed`): [M, N] float32.

    Both operands are bfloat16 (others are an error: round them first, where the rounding can
    fuse with the work that makes them). Products and sums are float32, inputs below float32's
    normal range (denormals) count as zero, as in XLA's CPU dot; the AMX kernel sums in another
    order than XLA's, so the two agree to float32 rounding, not bit for bit.

    On a CPU with AMX tiles that the OS lets the process use (`amx_usable()`) the native kernel
    (or its emulation, `_native.emulated_tiles()`); elsewhere `bf16_dot_reference`.
    """
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"bf16_dot: a and b must be matrices, got shapes {a.shape} and {b.shape}")
    if a.dtype != jnp.bfloat16 or b.dtype != jnp.bfloat16:
        raise TypeError(f"bf16_dot: a and b must be bfloat16, got {a.dtype} and {b.dtype}")
    n, k = b.shape if b_transposed else b.shape[::-1]
    if a.shape[1] != k:
        raise ValueError(f"bf16_dot: a {a.shape} and b {b.shape}{' (transposed)' if b_transposed else ''} "
                         "do not chain: a's columns must equal b's rows")
    kernel = _native.kernel()
    if kernel is None:
        return bf16_dot_reference(a, b, b_transposed=b_transposed)
    return _call(_native.TARGETS[kernel][0], (a.shape[0], n), a, b, b_transposed=b_transposed)


def bf16_patch_dot(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The stride-1 "same" convolution of x with an odd k x k kernel as one product of bfloat16
    matrices: `image_patches(x, k) @ kernel.reshape(k * k * C, O)`, [N * H * W, O] float32.

    Args:
      x: [N, H, W, C] bfloat16.
      kernel: [k, k, C, O] (HWIO) bfloat16, k odd.

    On the AMX tiles with C a multiple of 32, the patches are read from x tile by tile, never
    written out (implicit im2col; VGG16's conv1_2 would write 691 MB of them), and the result is
    the same as `bf16_dot` of the written patches, bit for bit (the same products summed in the
    same order). Elsewhere `bf16_patch_dot_reference`.
    """
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise ValueError(f"bf16_patch_dot: x must be [N, H, W, C] and kernel [k, k, C, O] with k odd, got "
                         f"shapes {x.shape} and {kernel.shape}")
    if x.dtype != jnp.bfloat16 or kernel.dtype != jnp.bfloat16:
        raise TypeError(f"bf16_patch_dot: x and kernel must be bfloat16, got {x.dtype} and {kernel.dtype}")
    if kernel.shape[2] != x.shape[3]:
        raise ValueError(f"bf16_patch_dot: the kernel's input channels ({kernel.shape[2]}) are not x's ({x.shape[3]})")
    n, h, w, c = x.shape
    k, o = kernel.shape[0], kernel.shape[3]
    native = _native.kernel()
    if native is None or c % 32 != 0:
        return bf16_patch_dot_reference(x, kernel)
    return _call(_native.TARGETS[native][1], (n * h * w, o), x, kernel.reshape(k * k * c, o), size=np.int64(k))


def _call(target, shape, *operands, **attributes):
    """The custom call `target` with a float32 result of `shape`: run once per element under
    `jax.vmap` (both operands mapped, or the unmapped one broadcast), and typed inside
    `jax.shard_map` as varying over the manual axes its operands vary over."""
    operands = vary_together(*operands)
    result = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method="sequential")(
        *operands, **attributes)
    return vary_together(result, like=operands)[0]


def bf16_patch_dot_reference(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`bf16_patch_dot` as `bf16_dot` of the patches `image_patches` writes out."""
    k, _, c, o = kernel.shape
    return bf16_dot(image_patches(x, k), kernel.reshape(k * k * c, o))


def bf16_dot_reference(a: jax.Array, b: jax.Array, *, b_transposed: bool = False) -> jax.Array:
    """`bf16_dot` as XLA's dot_general with a float32 result."""
    contracting = 1 if b_transposed else 0
    return lax.dot_general(a, b, (((1,), (contracting,)), ((), ())), preferred_element_type=jnp.float32)


def amx_usable() -> bool:
    """Whether `bf16_dot` runs the tile kernel where it is called: on the CPU, with the extension
    built, on a CPU with AMX tiles the OS lets this process use (or inside
    `_native.emulated_tiles()`)."""
    return _native.kernel() is not None
