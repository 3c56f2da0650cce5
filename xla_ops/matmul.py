"""Products of bfloat16 matrices into float32 on the AMX tiles of x86 CPUs, as native CPU
custom calls, with XLA's dot as the reference and the fallback: `bf16_dot` of two matrices, and
`bf16_patch_dot` of an image's patches (im2col, never written out) and a convolution kernel.

XLA's CPU backend (through YNNPACK) computed the bfloat16 products of VGG16's convolutions at
140-280 GFLOP/s inside its training step (380-740 GFLOP/s measured alone) on the 2-core machine
of experiments/results/, where the CPU's AMX tiles reach about 2 TFLOP/s per core; the native
kernel packs b for the tiles once per call and reads a in place (xla_ops/csrc/bf16_dot_cpu.cc).
Not differentiable itself: the layers that use it (`jaxdet.models.mixed_precision`) define their
own gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from xla_ops import _native
from xla_ops.patches import image_patches


def bf16_dot(a: jax.Array, b: jax.Array, *, b_transposed: bool = False) -> jax.Array:
    """a [M, K] @ b [K, N] (b given as [N, K] when `b_transposed`): [M, N] float32.

    Both operands are bfloat16 (others are an error: round them first, where the rounding can
    fuse with the work that makes them). Products and sums are float32, inputs below float32's
    normal range (denormals) count as zero, as in XLA's CPU dot; the AMX kernel sums in another
    order than XLA's, so the two agree to float32 rounding, not bit for bit.

    On a CPU with AMX tiles that the OS lets the process use (`amx_usable()`) the native kernel;
    elsewhere `bf16_dot_reference`.
    """
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"bf16_dot: a and b must be matrices, got shapes {a.shape} and {b.shape}")
    if a.dtype != jnp.bfloat16 or b.dtype != jnp.bfloat16:
        raise TypeError(f"bf16_dot: a and b must be bfloat16, got {a.dtype} and {b.dtype}")
    n, k = b.shape if b_transposed else b.shape[::-1]
    if a.shape[1] != k:
        raise ValueError(f"bf16_dot: a {a.shape} and b {b.shape}{' (transposed)' if b_transposed else ''} "
                         "do not chain: a's columns must equal b's rows")
    if not amx_usable():
        return bf16_dot_reference(a, b, b_transposed=b_transposed)
    return jax.ffi.ffi_call(_native.BF16_DOT_TARGET, jax.ShapeDtypeStruct((a.shape[0], n), jnp.float32))(
        a, b, b_transposed=b_transposed)


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
    if not amx_usable() or c % 32 != 0:
        return bf16_patch_dot_reference(x, kernel)
    return jax.ffi.ffi_call(_native.BF16_PATCH_DOT_TARGET, jax.ShapeDtypeStruct((n * h * w, o), jnp.float32))(
        x, kernel.reshape(k * k * c, o), size=np.int64(k))


def bf16_patch_dot_reference(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`bf16_patch_dot` as `bf16_dot` of the patches `xla_ops.image_patches` writes out."""
    k, _, c, o = kernel.shape
    return bf16_dot(image_patches(x, k), kernel.reshape(k * k * c, o))


def bf16_dot_reference(a: jax.Array, b: jax.Array, *, b_transposed: bool = False) -> jax.Array:
    """`bf16_dot` as XLA's dot_general with a float32 result."""
    contracting = 1 if b_transposed else 0
    return lax.dot_general(a, b, (((1,), (contracting,)), ((), ())), preferred_element_type=jnp.float32)


def amx_usable() -> bool:
    """Whether `bf16_dot` runs the native kernel where it is called: on the CPU, with the
    extension built, on a CPU with AMX tiles the OS lets this process use."""
    return _native.current_platform() == "cpu" and _native.bf16_dot_usable()
