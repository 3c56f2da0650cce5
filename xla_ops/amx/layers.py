"""Flax layers computing in bfloat16 on the CPU through the AMX kit: `Conv` and `Dense`, a layer
choice a model opts into (`layers_for`; jaxdet's `model.cpu_bf16_kernels`). Parameters, outputs
and everything around the products stay float32: only the operands of the convolutions and of
the fully connected layers are rounded to bfloat16, and their products are accumulated in float32.

On the CPU, XLA computes bfloat16 convolutions slowly, and bfloat16 dots with bfloat16 results in
float32, while its bfloat16 dots with float32 results reach the CPU's matrix units (AMX) through
YNNPACK (experiments/results/peers.md has the measurements). Hence:

`patch_conv` writes a k x k convolution with padding k // 2 as three matrix products over image
patches (im2col), bfloat16 operands accumulated in float32:

  forward          Y  [M, O]       = P(x)    [M, k*k*C] @ K    [k*k*C, O]
  input gradient   dX [M, C]       = P(dY)   [M, k*k*O] @ K'   [k*k*O, C]  (K' = K rotated 180
                                                                           degrees, C and O swapped)
  kernel gradient  dK [k*k*C, O]   = P(x)^T  [k*k*C, M] @ dY   [M, O]      (tile kernel), or
                   dK^T [O, k*k*C] = dY^T    [O, M]     . P(x)^T [k*k*C, M] (XLA's dot: both
                                                                           operands along rows)

where M = N * H * W. Where the CPU has AMX tiles (Intel Sapphire Rapids and later) the products,
and the kernel gradient of `bfloat16_matmul`, run on them: the forward and the input gradient
through `bf16_patch_dot`, which reads the patches from the image tile by tile (C a multiple of
32) instead of writing them out, the kernel gradients through `bf16_dot` over the patches
`image_patches` writes. Elsewhere they are XLA's dot over the written patches, in the forms it
computes fastest.

`Conv` is `flax.linen.Conv` with `conv_general_dilated` below, which decides per convolution:

  * on the CPU, in bfloat16, patches of at least `PATCH_DEPTH_FROM` elements (3x3 over 64
    channels and more: VGG16's conv1_2-conv5_3 and its RPN): `patch_conv`, float32 output;
  * on the CPU, in bfloat16, shallower ones (VGG16's conv1_1, 3x3 over 3 channels): XLA's
    float32 convolution of the bfloat16 values, float32 output;
  * everything else (float32, other platforms, strides, dilation, groups):
    `jax.lax.conv_general_dilated` unchanged.

The thresholds were chosen by timing VGG16's training step with each choice
(experiments/bench_mixed_precision.py; the results in experiments/results/peers.md).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from xla_ops.amx import _native, products
from xla_ops.amx.patches import image_patches
from xla_ops.amx.products import bf16_dot, bf16_dot_reference, bf16_patch_dot
from xla_ops.sharding import batch_shards, vary_together


def patch_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [N, H, W, C] convolved with kernel [k, k, C, O] (HWIO, k odd), stride 1, zero padding
    k // 2: [N, H, W, O] float32, from bfloat16 operands accumulated in float32. The gradients
    have the dtypes of x and the kernel. Inside `jax.shard_map` a kernel that does not vary over
    the manual axes while x does gets its gradient summed over them, as for XLA's convolution."""
    return _patch_conv(*vary_together(x, kernel))


@jax.custom_vjp
def _patch_conv(x, kernel):
    n, h, w, _ = x.shape
    y = bf16_patch_dot(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
    return y.reshape(n, h, w, kernel.shape[3])


def _patch_conv_fwd(x, kernel):
    return _patch_conv(x, kernel), (x, kernel)


def _patch_conv_bwd(residuals, grad):
    x, kernel = residuals
    n, h, w, c = x.shape
    k, _, _, o = kernel.shape
    # Rounded once, by XLA inside the fusion that makes the cotangent (the ReLU's mask), so that
    # both products below read bfloat16.
    grad = grad.astype(jnp.bfloat16)
    # K' [k, k, O, C]: tap (ty, tx) of the input gradient is tap (k-1-ty, k-1-tx) of the forward.
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2).astype(jnp.bfloat16)
    grad_x = bf16_patch_dot(grad, flipped)
    patches_t = image_patches(x, k, transposed=True)  # P(x)^T [k*k*C, M]
    if products.amx_usable():
        grad_kernel = bf16_dot(patches_t, grad.reshape(n * h * w, o)).reshape(k, k, c, o)
    else:  # XLA's dot is fastest with both operands read along their rows
        grad_t = image_patches(grad, 1, transposed=True)  # dY^T [O, M]
        grad_kernel = bf16_dot(grad_t, patches_t, b_transposed=True).reshape(o, k, k, c).transpose(1, 2, 3, 0)
    return grad_x.reshape(n, h, w, c).astype(x.dtype), grad_kernel.astype(kernel.dtype)


_patch_conv.defvjp(_patch_conv_fwd, _patch_conv_bwd)


# The patch length k * k * C from which `patch_conv` beats XLA's float32 convolution on the CPU.
PATCH_DEPTH_FROM = 3 * 3 * 64


def _on_cpu_in_bfloat16(lhs, rhs) -> bool:
    return lhs.dtype == jnp.bfloat16 and rhs.dtype == jnp.bfloat16 and _native.current_platform() == "cpu"


def takes_patch_path(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                     dimension_numbers, feature_group_count) -> bool:
    """Whether `conv_general_dilated` computes this convolution with `patch_conv`: on the CPU
    with the patches op built, bfloat16 NHWC input and HWIO kernel, an odd square window whose
    patches hold at least `PATCH_DEPTH_FROM` elements, stride 1, "same" zero padding, no dilation
    or groups, and no batch split over a mesh in context (XLA's partitioner would gather the
    custom call's operands onto every device; XLA partitions its own convolution)."""
    k = rhs.shape[0]
    same = ((k // 2, k // 2),) * 2
    return (_on_cpu_in_bfloat16(lhs, rhs) and lhs.ndim == 4 and rhs.shape[0] == rhs.shape[1]
            and k % 2 == 1 and k * k * rhs.shape[2] >= PATCH_DEPTH_FROM
            and tuple(window_strides) == (1, 1)
            and (padding == "SAME" or tuple(map(tuple, padding)) == same)
            and tuple(lhs_dilation or (1, 1)) == (1, 1) and tuple(rhs_dilation or (1, 1)) == (1, 1)
            and _is_nhwc_hwio(dimension_numbers) and feature_group_count == 1
            and batch_shards()[1] == 1 and _native.patches_built())


def _is_nhwc_hwio(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
    """`jax.lax.conv_general_dilated` with its arguments, computed as the module docstring says."""
    conv = functools.partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                             lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                             dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                             batch_group_count=batch_group_count, precision=precision)
    if batch_group_count == 1 and takes_patch_path(lhs, rhs, window_strides, padding, lhs_dilation,
                                                   rhs_dilation, dimension_numbers, feature_group_count):
        return patch_conv(lhs, rhs)
    if _on_cpu_in_bfloat16(lhs, rhs):
        return conv(lhs.astype(jnp.float32), rhs.astype(jnp.float32))
    return conv(lhs, rhs, preferred_element_type=preferred_element_type)


# flax.linen.Conv computing through `conv_general_dilated`; the same parameters and checkpoints.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def bfloat16_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [M, K] @ kernel [K, N]: [M, N] float32, from bfloat16 operands accumulated in float32. The
    gradients have the dtypes of x and the kernel (inside `jax.shard_map`, that of a kernel that
    does not vary over the manual axes while x does is summed over them).

    The three products run as XLA's CPU computes bfloat16 dots fastest (on the matrix units):

      forward          Y  [M, N] = x  [M, K] @ kernel [K, N]
      input gradient   dx [M, K] = dY [M, N] . kernel [K, N]  (contracting both second axes)
      kernel gradient  dK [K, N] = x^T [K, M] @ dY [M, N]      (x^T made by `image_patches`;
                                                               with a batch split over a mesh in
                                                               context, XLA's transpose, which
                                                               XLA partitions)

    The rounded operands are kept for the backward pass: rounding VGG16's fc6 (103M weights) again
    would cost as much as its input gradient.
    """
    return _bfloat16_matmul(*vary_together(x, kernel))


@jax.custom_vjp
def _bfloat16_matmul(x, kernel):
    return bf16_dot_reference(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))


def _bfloat16_matmul_fwd(x, kernel):
    x_bf16, kernel_bf16 = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    y = bf16_dot_reference(x_bf16, kernel_bf16)  # XLA's dot: the AMX kernel would pack fc6's weights per call
    # Zeros of the operands' dtypes, which the gradients take (residuals are arrays).
    return y, (x_bf16, kernel_bf16, jnp.zeros((), x.dtype), jnp.zeros((), kernel.dtype))


def _bfloat16_matmul_bwd(residuals, grad):
    x_bf16, kernel_bf16, x_zero, kernel_zero = residuals
    m, k = x_bf16.shape
    grad_bf16 = grad.astype(jnp.bfloat16)
    grad_x = bf16_dot_reference(grad_bf16, kernel_bf16, b_transposed=True)  # XLA's dot, as the forward
    if batch_shards()[1] == 1:
        # x^T through the custom call: XLA folds a transposed operand into the dot, then computes it in float32.
        x_t = image_patches(x_bf16.reshape(1, 1, m, k), 1, transposed=True)  # [K, M]
        grad_kernel = bf16_dot(x_t, grad_bf16)
    else:  # XLA partitions these; it would gather the custom calls' operands onto every device
        grad_kernel = bf16_dot_reference(x_bf16.T, grad_bf16)
    return grad_x.astype(x_zero.dtype), grad_kernel.astype(kernel_zero.dtype)


_bfloat16_matmul.defvjp(_bfloat16_matmul_fwd, _bfloat16_matmul_bwd)


def bfloat16_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`jax.lax.dot_general` for `flax.linen.Dense`: its product lhs [..., K] @ rhs [K, N] through
    `bfloat16_matmul` (float32 result); any other contraction unchanged."""
    (lhs_contracting, rhs_contracting), batch = dimension_numbers
    if (tuple(lhs_contracting) == (lhs.ndim - 1,) and tuple(rhs_contracting) == (0,) and batch == ((), ())
            and rhs.ndim == 2):
        y = bfloat16_matmul(lhs.reshape(-1, lhs.shape[-1]), rhs)
        return y.reshape(*lhs.shape[:-1], rhs.shape[1])
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)


def Dense(features: int, *, dtype, **kwargs) -> nn.Dense:  # noqa: N802 (a layer, named as flax's)
    """`flax.linen.Dense(features, dtype=dtype, **kwargs)`, except on the CPU in bfloat16: float32
    parameters, inputs and outputs, the product computed by `bfloat16_matmul` (float32 throughout
    where the patches op is not built: its x^T is what makes the kernel gradient fast). There XLA
    computes a bfloat16 dot with a bfloat16 result in float32, and flax's own bfloat16 layer would
    round the weights and their gradients in passes of their own: VGG16's fc6 holds 103M weights."""
    if dtype == jnp.bfloat16 and _native.current_platform() == "cpu":
        if not _native.patches_built():
            return nn.Dense(features, dtype=jnp.float32, **kwargs)
        return nn.Dense(features, dtype=jnp.float32, dot_general=bfloat16_dot_general, **kwargs)
    return nn.Dense(features, dtype=dtype, **kwargs)


def layers_for(dtype, *, cpu_bf16_kernels: bool) -> tuple:
    """(conv, dense): the layer classes for a model computing in `dtype`, called as flax's are
    (`conv(features, kernel_size, ..., dtype=dtype)`, `dense(features, dtype=dtype, ...)`).

    This module's `Conv` and `Dense` only where `cpu_bf16_kernels` asks for them, `dtype` is
    bfloat16, the platform (that of `jax.default_device`, else the default backend) is the CPU
    and the CPU has AMX tiles this process may use (with the kit's extensions built); flax's `nn.Conv` and `nn.Dense` otherwise,
    which compute in `dtype` as flax means it."""
    if (cpu_bf16_kernels and jnp.dtype(dtype) == jnp.bfloat16 and _native.current_platform() == "cpu"
            and _native.amx_usable() and _native.patches_built()):
        return Conv, Dense
    return nn.Conv, nn.Dense
