"""Keeping the host memory XLA frees in the process, so that the next step reuses it.

XLA's CPU runtime mallocs each execution's temporary buffers and frees them when the execution
ends. glibc's malloc maps every buffer over its mmap threshold (at most 32 MiB) with mmap and
unmaps it on free, and a thread's own arena cannot hold a chunk over 64 MiB at all; so each
VGG16 600x1000 training step maps about 1.1 GB anew: 282k page faults, each page zeroed by the
kernel, 0.7-1.5 s of system time per 4-5 s step run back to back, and about 3 s when the machine
idled a few seconds before the step (experiments/results/peers.md, "Host memory").

`retain_freed_memory()` sets glibc's malloc to one arena (M_ARENA_MAX=1), no mmap (M_MMAP_MAX=0)
and no trimming (M_TRIM_THRESHOLD): freed buffers stay mapped for the next step, which then
takes no page faults (the VGG16 step: 0 against 282k). That pays when the process idled before
the step: 3.8 s against 6.4 s per step after 3 s of sleep. Back to back it gains nothing on the
clock, as one arena costs about as much user time as the faults cost system time. The other
costs: the process keeps its peak host memory until it exits, and XLA's compilation, which
mallocs from several threads, takes 0.8-4.6 s longer with one arena.

The settings must be made before any thread other than the main one has malloc'd, since a
thread keeps the arena it was given: before any thread starts, in practice before importing
numpy or jax (numpy's BLAS starts one). They are a choice, never a default: the `jaxdet` command
makes them first thing (`tune_for_command`, from `jaxdet.__main__`, before it imports the rest)
only when asked, with `--tune-malloc` or JAXDET_TUNE_MALLOC=1 in its environment, and then not
where a JAX GPU plugin is installed and the command is not given `--device cpu`. In your own
script, call `retain_freed_memory()` first, or set the same through the environment of the process:
    MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776 python train.py
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
from typing import Mapping, Sequence

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# Bytes free at the heap's top before free() returns memory to the system. mallopt takes an int
# and glibc stores it as a size_t: -1 is the largest size, never reached. (2**31 - 1, the largest
# positive int, is not enough: a batch-2 VGG16 step frees more than 2 GiB at once.)
NEVER_TRIM = -1

FLAG = "--tune-malloc"  # the `jaxdet` commands' option that asks for the settings
ENV_FLAG = "JAXDET_TUNE_MALLOC"  # ... and the environment variable: "1" asks for them

# The same through the environment, read when the process starts. 1 TiB stands for "never": newer
# glibc rejects a value at the edge of size_t's range and keeps its default.
ENVIRONMENT = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def gpu_plugin_installed() -> bool:
    """Whether a JAX CUDA plugin is installed (found, not imported): JAX then runs on a GPU, whose
    temporaries are not host memory, and one malloc arena would only slow compilation."""
    return any(importlib.util.find_spec(f"jax_cuda{version}_plugin") is not None for version in (12, 13))


def why_memory_not_retainable() -> str | None:
    """None when `retain_freed_memory()` can take effect in this process now, else why not."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"the allocator is not glibc's ({platform.system()}, {platform.libc_ver()[0] or 'no glibc'})"
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:
        return (f"the process already runs {threads} threads, which have their own malloc arenas "
                "(call it before importing numpy or jax, or set " + " ".join(f"{k}={v}" for k, v in ENVIRONMENT.items())
                + " in the environment)")
    return None


def retain_freed_memory() -> str | None:
    """Make glibc's malloc keep freed memory mapped in this process (see the module docstring).

    Returns None when the settings took effect, else why not: the allocator is not glibc's, or
    threads are already running (then nothing is changed)."""
    reason = why_memory_not_retainable()
    if reason is not None:
        return reason
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int  # overflow raises
    for parameter, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)):
        if libc.mallopt(parameter, value) != 1:
            return f"glibc's mallopt refused parameter {parameter} = {value}"
    return None


def retain_freed_memory_without_gpu(device: str = "auto") -> str | None:
    """`retain_freed_memory()` when JAX will compute on the CPU, as `tune_for_command` calls it:
    `device` "cpu", or no JAX GPU plugin installed; returns why not otherwise.

    Args:
      device: the `jaxdet` command's --device: "auto", "cpu" or "gpu"."""
    if device != "cpu" and gpu_plugin_installed():
        return "a JAX GPU plugin is installed: XLA's temporaries are GPU memory"
    return retain_freed_memory()


def requested_device(argv: Sequence[str]) -> str:
    """The --device of a command line ("--device cpu", "--device=cpu", or an abbreviation the
    parser accepts, such as "--d cpu"; the last one given), read before the parser runs;
    "auto" when there is none."""
    device = "auto"
    for i, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if len(flag) > len("--") and "--device".startswith(flag):
            if equals:
                device = value
            elif i + 1 < len(argv):
                device = argv[i + 1]
    return device


def tune_for_command(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> str | None:
    """`retain_freed_memory_without_gpu` for the command line `argv` when it asks for it (FLAG) or
    the environment does (ENV_FLAG=1); returns None when the settings took effect, else why not."""
    environ = os.environ if environ is None else environ
    if FLAG not in argv and environ.get(ENV_FLAG) != "1":
        return f"not asked for ({FLAG} or {ENV_FLAG}=1)"
    return retain_freed_memory_without_gpu(requested_device(argv))
