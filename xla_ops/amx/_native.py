"""Loading the AMX kit's extensions and registering their FFI targets with XLA, on first use.

Three optional extensions (setup.py): `_patches_cpu` (image patches), `_bf16_dot_cpu` (the tile
kernel on the CPU's AMX tiles) and, for the tests, `_bf16_dot_emulated` (the same kernel compiled
against the C++ tile emulation of csrc/tile_emulation.h, on any CPU). Each may be missing: the
functions below then say so, and the products fall back to XLA's dot.
"""

import contextlib
import functools
import importlib

from xla_ops._native import _load_module, current_platform  # noqa: F401 (current_platform: re-exported)

PATCHES_TARGET = "jaxdet_image_patches"
# The tile kernel's targets: (the product of two matrices, the product of an image's patches).
TARGETS = {"amx": ("jaxdet_bf16_dot", "jaxdet_bf16_patch_dot"),
           "emulated": ("jaxdet_bf16_dot_emulated", "jaxdet_bf16_patch_dot_emulated")}

_PATCHES_EXTENSION = ("xla_ops.amx._patches_cpu", "cpu")
_KERNEL_EXTENSIONS = {"amx": ("xla_ops.amx._bf16_dot_cpu", "cpu"),
                      "emulated": ("xla_ops.amx._bf16_dot_emulated", "cpu")}

_emulating = False


def patches_built() -> bool:
    """Whether the CPU image-patches op (`xla_ops.amx.image_patches`) is built and registered."""
    return _load_module(*_PATCHES_EXTENSION)[0]


def why_patches_not_built() -> str:
    return _load_module(*_PATCHES_EXTENSION)[1]


@functools.cache
def amx_usable() -> bool:
    """Whether the tile kernel is built and registered, and this CPU has AMX tiles that the OS lets
    the process use."""
    built, _ = _load_module(*_KERNEL_EXTENSIONS["amx"])
    return built and importlib.import_module(_KERNEL_EXTENSIONS["amx"][0]).amx_available()


def why_amx_not_usable() -> str:
    built, reason = _load_module(*_KERNEL_EXTENSIONS["amx"])
    return reason if not built else "this CPU has no AMX tiles, or the OS does not let the process use them"


def emulation_built() -> bool:
    """Whether the tile kernel compiled against the tile emulation is built and registered."""
    return _load_module(*_KERNEL_EXTENSIONS["emulated"])[0]


def why_emulation_not_built() -> str:
    return (_load_module(*_KERNEL_EXTENSIONS["emulated"])[1]
            + " (`make build` builds it: JAXDET_AMX_EMULATION=1 setup.py build_ext --inplace)")


@contextlib.contextmanager
def emulated_tiles():
    """Within the context, the products trace the tile kernel compiled against the tile emulation
    (`emulation_built()` must hold): the same kernel code as on AMX, on any CPU, slowly. For
    tests; the choice is made when a function is traced, so jit a fresh function inside."""
    if not emulation_built():
        raise RuntimeError(f"the emulated tile kernel is not available: {why_emulation_not_built()}")
    global _emulating
    previous, _emulating = _emulating, True
    try:
        yield
    finally:
        _emulating = previous


def kernel():
    """Which tile kernel the products call where they are traced: "emulated" inside
    `emulated_tiles()`, "amx" on a CPU whose tiles the process may use, else None (XLA's dot)."""
    if current_platform() != "cpu":
        return None
    if _emulating:
        return "emulated"
    return "amx" if amx_usable() else None
