"""xla_ops.amx: the CPU bfloat16 kit, apart from the core and opt-in.

Native CPU custom calls, each an optional extension (a failed build leaves it out; `available()`
and `why_unavailable()` say so, and everything falls back to XLA's own operations):
  image_patches(x [N, H, W, C], k) -> [N * H * W, k * k * C] bfloat16, the im2col of a stride-1
      "same" k x k convolution (`patches`);
  bf16_dot(a [M, K], b [K, N]) -> [M, N] float32 and bf16_patch_dot(x [N, H, W, C],
      kernel [k, k, C, O]) -> [N * H * W, O] float32, products of bfloat16 matrices on the AMX
      tiles of x86 CPUs (Intel Sapphire Rapids and later) (`products`);
and the flax layers made of them (`layers`): `Conv` and `Dense` (flax's, computing bfloat16
products into float32 on the CPU), `patch_conv`, `bfloat16_matmul`, and `layers_for`, the choice a
model makes between them and flax's `nn.Conv` / `nn.Dense`:

    conv, dense = xla_ops.amx.layers_for(jnp.bfloat16, cpu_bf16_kernels=True)

(jaxdet sets it from `config.model.cpu_bf16_kernels`). The tile kernel also runs on any CPU,
slowly, through an emulation of the tile instructions built for the tests
(`_native.emulated_tiles()`, csrc/tile_emulation.h).
"""

from xla_ops.amx import _native
from xla_ops.amx.layers import Conv, Dense, bfloat16_matmul, layers_for, patch_conv
from xla_ops.amx.patches import image_patches
from xla_ops.amx.products import bf16_dot, bf16_patch_dot


def available() -> bool:
    """Whether the tile kernel runs here: the extensions built, on a CPU with AMX tiles that the
    OS lets this process use."""
    return _native.patches_built() and _native.amx_usable()


def why_unavailable() -> str:
    """Why `available()` is False ("" when it is True)."""
    if not _native.patches_built():
        return _native.why_patches_not_built()
    return "" if _native.amx_usable() else _native.why_amx_not_usable()


__all__ = ["image_patches", "bf16_dot", "bf16_patch_dot", "Conv", "Dense", "patch_conv", "bfloat16_matmul",
           "layers_for", "available", "why_unavailable"]
