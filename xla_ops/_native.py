"""Loading the compiled extensions and registering their FFI targets with XLA.

Registration happens on first use, not at import, so that importing xla_ops never initialises
a JAX backend (jax.distributed.initialize must come before that in multi-host programs).
"""

import functools
import importlib
import warnings

import jax

FORWARD_TARGET = "jaxdet_roi_pool_fwd"
BACKWARD_TARGET = "jaxdet_roi_pool_bwd"

# JAX platform name -> (extension module, XLA platform name used for registration).
_EXTENSIONS = {"cpu": ("xla_ops._roi_pool_cpu", "cpu"), "cuda": ("xla_ops._roi_pool_cuda", "CUDA")}


@functools.cache
def _load_module(module_name, xla_platform):
    """Returns (True, "") when the extension is built and its targets registered, else
    (False, reason)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        return False, f"{module_name} is not built ({err})"
    try:
        for name, capsule in module.registrations().items():
            jax.ffi.register_ffi_target(name, capsule, platform=xla_platform)
    except Exception as err:  # e.g. a JAX without the CUDA plugin
        return False, f"registering {module_name} with XLA failed: {err}"
    return True, ""


def _load(platform):
    return _load_module(*_EXTENSIONS[platform])


def is_built(platform):
    """Whether the native RoI pooling op is built and registered for a JAX platform ("cpu", "cuda")."""
    return platform in _EXTENSIONS and _load(platform)[0]


def why_not_built(platform):
    if platform not in _EXTENSIONS:
        return f"no native RoI pooling kernel exists for platform {platform!r}"
    return _load(platform)[1]


def current_platform():
    """The platform a call runs on unless its inputs are committed elsewhere: that of the device
    set by `jax.default_device` (a device or a platform name), else the default backend's. So
    `with jax.default_device(jax.devices("cpu")[0])` on a GPU machine takes the CPU kernel."""
    device = jax.config.jax_default_device
    if device is None:
        platform = jax.default_backend()
    else:
        platform = device if isinstance(device, str) else device.platform
    return "cuda" if platform == "gpu" else platform


IMPLS = ("auto", "ffi", "reference")


def resolve_impl(op: str, impl: str, is_built, why_not_built) -> str:
    """"ffi" or "reference" for an op's `impl` argument ("auto", "ffi", "reference") on the current
    platform: "auto" takes the custom call where `is_built(platform)`, else the reference with a
    warning (once per op, platform and reason).

    Raises:
      ValueError: `impl` is none of IMPLS.
      RuntimeError: impl="ffi" where the custom call is not built, saying why (`why_not_built`).
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return impl
    platform = current_platform()
    if is_built(platform):
        return "ffi"
    reason = why_not_built(platform)
    if impl == "ffi":
        raise RuntimeError(f"{op}: impl='ffi' but the native op is unavailable on {platform}: {reason}. Rebuild "
                           "with `make build` (or `pip install -e .`), or use impl='reference'.")
    _warn_fallback(op, platform, reason)
    return "reference"


@functools.cache
def _warn_fallback(op, platform, reason):
    warnings.warn(f"{op}: native op unavailable on {platform} ({reason}); using the slower jnp reference.",
                  RuntimeWarning, stacklevel=5)
