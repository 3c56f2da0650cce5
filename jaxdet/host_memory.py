"""Keeping the host memory XLA frees in the process, so that the next step reuses it.

XLA's CPU runtime mallocs each execution's temporary buffers and frees them when the execution
ends. glibc's malloc maps every buffer over its mmap threshold (at most 32 MiB) with mmap and
unmaps it on free, and a thread's own arena cannot hold a chunk over 64 MiB at all; so each
VGG16 600x1000 training step maps about 1.1 GB anew: 282k page faults, each page zeroed by the
kernel, 0.7-1.5 s of system time per 4-5 s step run back to back, and about 3 s when the machine
idled a few seconds before the step (experiments/results/peers.md, "Host memory").

`retain_freed_memory()` sets glibc's malloc to one arena (M_ARENA_MAX=1), no mmap (M_MMAP_MAX=0)
and no trimming (M_TRIM_THRESHOLD): freed buffers stay mapped for the next step, which then
takes no page faults (the VGG16 step back to back: 0 against 282k). The costs: the process keeps
its peak host memory until it exits, higher than before as the heap fragments (4.1 GB against
3.7 GB for that step), and XLA's compilation, which mallocs from several threads, takes about
1.5 s longer with one arena (the tiny config's training step: 10.0-10.3 s against 8.3-8.9 s).

The settings must be made before any thread other than the main one has malloc'd, since a
thread keeps the arena it was given: in practice before `import jax`. The `jaxdet` command
calls it first thing, unless a JAX GPU plugin is installed. In your own script, call it before
importing jax, or set the same through the environment of the process:
    MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=18446744073709551615 python train.py
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# Bytes free at the heap's top before free() returns memory to the system. mallopt takes an int
# and glibc stores it as a size_t: -1 is the largest size, never reached. (2**31 - 1, the largest
# positive int, is not enough: a batch-2 VGG16 step frees more than 2 GiB at once.)
NEVER_TRIM = -1

ENVIRONMENT = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**64 - 1)}


def gpu_plugin_installed() -> bool:
    """Whether a JAX CUDA plugin is installed (found, not imported): JAX then runs on a GPU, whose
    temporaries are not host memory, and one malloc arena would only slow compilation."""
    return any(importlib.util.find_spec(f"jax_cuda{version}_plugin") is not None for version in (12, 13))


def why_memory_not_retainable() -> str | None:
    """None when `retain_freed_memory()` can take effect in this process now, else why not."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"the allocator is not glibc's ({platform.system()} {' '.join(platform.libc_ver()) or 'without glibc'})"
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:
        return (f"the process already runs {threads} threads, which have their own malloc arenas "
                "(call it before importing jax, or set " + " ".join(f"{k}={v}" for k, v in ENVIRONMENT.items())
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
    for parameter, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)):
        if libc.mallopt(parameter, value) != 1:
            return f"glibc's mallopt refused parameter {parameter} = {value}"
    return None


def retain_freed_memory_without_gpu() -> str | None:
    """`retain_freed_memory()` when no JAX GPU plugin is installed, as the `jaxdet` command
    calls it; returns why not otherwise."""
    if gpu_plugin_installed():
        return "a JAX GPU plugin is installed: XLA's temporaries are GPU memory"
    return retain_freed_memory()
