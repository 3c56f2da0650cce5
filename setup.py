"""Build of the native ops (metadata lives in pyproject.toml).

Extension modules, each exposing `registrations()` (a dict of FFI handler capsules):
  xla_ops._roi_pool_cpu   C++ RoI pooling kernels, always built.
  xla_ops.amx._patches_cpu   C++ image patches in bfloat16 and products of bfloat16
  xla_ops.amx._bf16_dot_cpu  matrices on x86's AMX tiles (xla_ops.amx, the opt-in CPU bfloat16
                          layers), optional: a failed build of either leaves the package
                          without it (xla_ops.amx.why_unavailable() says so), never fails the
                          install; the products report at run time whether the CPU has the tiles.
  xla_ops._roi_align_cpu  C++ RoIAlign kernels (xla_ops.roi_align), always built.
  xla_ops._roi_pool_cuda  CUDA kernels, built when nvcc is found. JAXDET_CUDA=1 forces it
                          (and fails loudly without nvcc), JAXDET_CUDA=0 skips it.
and, for the tests only (`make build` asks for it; a wheel does not ship it):
  xla_ops._roi_pool_cuda_emulated  the same CUDA kernels compiled as host C++ against the CUDA
                          runtime emulation in xla_ops/csrc/testing/ (JAXDET_CUDA_EMULATION=1).
  xla_ops.amx._bf16_dot_emulated  the AMX tile kernel compiled against the tile emulation of
                          xla_ops/amx/csrc/tile_emulation.h (JAXDET_AMX_EMULATION=1; optional).

Environment knobs:
  JAXDET_CUDA        "auto" (default), "1" or "0".
  JAXDET_CUDA_ARCHS  semicolon-separated SM versions, default "90": sm_90 machine code plus
                     compute_90 PTX, which the driver JIT-compiles for newer GPUs.
  JAXDET_CUDA_EMULATION  "1" builds xla_ops._roi_pool_cuda_emulated (tests only).
  JAXDET_AMX_EMULATION   "1" builds xla_ops.amx._bf16_dot_emulated (tests only).
  JAXDET_SANITIZE    "address" builds the CPU extension and the emulation with AddressSanitizer
                     (tests only, experiments/sanitize_roi_pool.sh).
  CUDA_HOME          where nvcc lives, if not on PATH.
"""

import os
import shutil
import subprocess
import sys

import pybind11
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = os.path.join("xla_ops", "csrc")
HEADERS = [os.path.join(CSRC, name) for name in ("roi_pool_bins.h", "roi_pool_ffi.h", "cpu_common.h")]
# RoIAlign (xla_ops.roi_align) shares roi_pool_bins.h's element types and batch-index rule.
ALIGN_HEADERS = HEADERS + [os.path.join(CSRC, name) for name in ("roi_align_bins.h", "roi_align_ffi.h")]
EMULATION = os.path.join(CSRC, "testing")
AMX_CSRC = os.path.join("xla_ops", "amx", "csrc")


def _ffi_include_dir():
    # Import lazily: jax is a build requirement (pyproject.toml), not needed to read this file.
    import jax.ffi

    return jax.ffi.include_dir()


def _find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return os.path.join(cuda_home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = "/usr/local/cuda/bin/nvcc"
    return default if os.path.exists(default) else None


def _cuda_home(nvcc):
    # /usr/local/bin/nvcc may be a wrapper script, so prefer the conventional locations.
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _want_cuda():
    mode = os.environ.get("JAXDET_CUDA", "auto").lower()
    if mode not in ("auto", "1", "0", "on", "off", "true", "false"):
        sys.exit(f"JAXDET_CUDA must be auto, 1 or 0, got {mode!r}")
    nvcc = _find_nvcc()
    if mode in ("0", "off", "false"):
        return None
    if mode in ("1", "on", "true") and nvcc is None:
        sys.exit("JAXDET_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    return nvcc


CXX_FLAGS = [
    "-std=c++17",
    "-O3",
    # Bin edges must round exactly as the CUDA kernel and the jnp reference do: no FMA.
    "-ffp-contract=off",
    "-fvisibility=hidden",
]


class BuildExt(build_ext):
    """Compiles .cu sources with nvcc, everything else with the platform C++ compiler."""

    def build_extension(self, ext):
        cu_sources = [s for s in ext.sources if s.endswith(".cu")]
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        if cu_sources:
            ext.extra_objects = [self._nvcc(src, ext) for src in cu_sources]
        super().build_extension(ext)

    def _nvcc(self, source, ext):
        nvcc = ext.nvcc
        obj = os.path.join(self.build_temp, os.path.basename(source) + ".o")
        os.makedirs(self.build_temp, exist_ok=True)
        deps = [source] + ext.depends
        if not self.force and os.path.exists(obj) and all(
            os.path.getmtime(obj) >= os.path.getmtime(d) for d in deps
        ):
            return obj
        archs = os.environ.get("JAXDET_CUDA_ARCHS", "90").split(";")
        gencode = []
        for arch in archs:
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        # PTX of the newest listed architecture so later GPUs can JIT it.
        gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
        cmd = [
            nvcc, "-c", source, "-o", obj,
            "-std=c++17", "-O3", "--fmad=false",
            "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
            *gencode,
            *[f"-I{d}" for d in ext.include_dirs],
        ]
        self.announce(" ".join(cmd), level=2)
        print(" ".join(cmd), flush=True)
        subprocess.check_call(cmd)
        return obj


# The op family: each op's name (its sources are {op}_cpu.cc, {op}_cuda.cu, {op}_cuda_module.cc and
# testing/{op}_cuda_emulated.cc) and the headers they include.
OPS = (("roi_pool", HEADERS), ("roi_align", ALIGN_HEADERS))


def extensions():
    include_dirs = [CSRC, pybind11.get_include(), _ffi_include_dir()]
    sanitize = os.environ.get("JAXDET_SANITIZE")
    cpu_flags = list(CXX_FLAGS)
    cpu_link = []
    if sanitize:
        cpu_flags = [f for f in cpu_flags if f != "-O3"] + ["-O1", "-g", f"-fsanitize={sanitize}",
                                                             "-fno-omit-frame-pointer"]
        cpu_link = [f"-fsanitize={sanitize}"]
    def cpu_extension(name, source, depends, csrc=CSRC, optional=False, defines=()):
        return Extension(name, sources=[os.path.join(csrc, source)], depends=depends, include_dirs=include_dirs,
                         extra_compile_args=cpu_flags + [f"-D{d}" for d in defines], extra_link_args=cpu_link,
                         language="c++", optional=optional)

    common = [os.path.join(CSRC, "cpu_common.h")]
    exts = [
        *[cpu_extension(f"xla_ops._{op}_cpu", f"{op}_cpu.cc", headers) for op, headers in OPS],
        cpu_extension("xla_ops.amx._patches_cpu", "patches_cpu.cc", common, AMX_CSRC, optional=True),
        cpu_extension("xla_ops.amx._bf16_dot_cpu", "bf16_dot_cpu.cc", common, AMX_CSRC, optional=True),
    ]
    if os.environ.get("JAXDET_AMX_EMULATION") == "1":
        exts.append(cpu_extension("xla_ops.amx._bf16_dot_emulated", "bf16_dot_cpu.cc",
                                  common + [os.path.join(AMX_CSRC, "tile_emulation.h")], AMX_CSRC,
                                  optional=True, defines=["JAXDET_AMX_EMULATION"]))
    if os.environ.get("JAXDET_CUDA_EMULATION") == "1":
        for op, headers in OPS:
            exts.append(Extension(
                f"xla_ops._{op}_cuda_emulated",
                sources=[os.path.join(EMULATION, f"{op}_cuda_emulated.cc")],
                depends=headers + [os.path.join(CSRC, f"{op}_cuda.cu"), os.path.join(EMULATION, "cuda_runtime.h")],
                # testing/ first: its cuda_runtime.h stands in for the real one.
                include_dirs=[EMULATION] + include_dirs,
                # C++20 for std::atomic_ref (atomicAdd); -O2 keeps the build short.
                extra_compile_args=[f.replace("c++17", "c++20") for f in cpu_flags if f != "-O3"]
                + ([] if sanitize else ["-O2"]) + ["-pthread"],
                extra_link_args=cpu_link + ["-pthread"],
                language="c++",
            ))
    nvcc = _want_cuda()
    if nvcc is not None:
        cuda_home = _cuda_home(nvcc)
        lib_dirs = [d for d in (os.path.join(cuda_home, "lib64"), os.path.join(cuda_home, "lib"))
                    if os.path.isdir(d)]
        for op, headers in OPS:
            cuda = Extension(
                f"xla_ops._{op}_cuda",
                sources=[os.path.join(CSRC, f"{op}_cuda_module.cc"), os.path.join(CSRC, f"{op}_cuda.cu")],
                depends=headers,
                include_dirs=include_dirs + [os.path.join(cuda_home, "include")],
                library_dirs=lib_dirs,
                # Static runtime: the module then needs only the driver on the GPU machine.
                libraries=["cudart_static", "dl", "rt", "pthread"],
                extra_compile_args=CXX_FLAGS,
                language="c++",
            )
            cuda.nvcc = nvcc
            exts.append(cuda)
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
