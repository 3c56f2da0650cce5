"""jaxdet.host_memory: with `retain_freed_memory()`, an XLA program's calls reuse the host memory
earlier calls freed (no page faults), through one malloc arena; called too late, it
changes nothing and says why. Each case runs in a fresh Python process, as the settings must be
made before any thread starts."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from jaxdet import host_memory

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

# Counts malloc arenas (malloc_info's <heap> entries) and the buffers' worth of page faults that
# calls 11-20 of a program take, whose 96 MiB temporary buffer is over glibc's mmap threshold.
# (With the settings, the heap still grows now and then over the first calls: memalign's chunks
# fragment it until freed neighbours coalesce.)
MEASURE = """
import ctypes, json, os, resource, tempfile
import jax, jax.numpy as jnp

def arenas():
    libc = ctypes.CDLL(None)
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "malloc_info.xml")
        stream = libc.fopen(path.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        return open(path).read().count("<heap nr=")

@jax.jit
def sampled_cumsum(a):  # the cumulative sum is a temporary buffer the size of `a`
    return jnp.cumsum(a)[::7].sum()

a = jnp.ones((24 << 20,), jnp.float32)
for _ in range(10):
    sampled_cumsum(a).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    sampled_cumsum(a).block_until_ready()
buffers = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / ((96 << 20) // 4096)
print(json.dumps({"reason": reason, "buffers_faulted": buffers, "arenas": arenas()}))
"""


def measured(setup, env=None):
    """{"reason", "buffers_faulted", "arenas"} of MEASURE run after `setup` (which sets `reason`) in
    a new process, with `env` added to its environment."""
    program = textwrap.dedent(setup) + MEASURE
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    assert "invalid" not in done.stderr, done.stderr  # glibc ignoring a MALLOC_* value says so
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default_malloc():
    """The control: glibc's defaults. Without its page faults the other tests would prove nothing."""
    found = measured("reason = 'not asked'")
    if found["buffers_faulted"] < 5:
        pytest.skip(f"{found}: the kernel maps the buffer with huge pages (transparent_hugepage=always?)")
    return found


def test_without_it_each_call_faults_in_its_buffer_anew(default_malloc):
    """The problem, shown: each call maps its freed buffer again."""
    assert default_malloc["buffers_faulted"] >= 8
    assert default_malloc["arenas"] > 1


def test_retained_memory_is_reused_without_page_faults(default_malloc):
    retained = measured("""
        from jaxdet import host_memory
        reason = host_memory.retain_freed_memory()
    """)
    assert retained["reason"] is None
    assert retained["arenas"] == 1
    assert retained["buffers_faulted"] <= 3, (retained, default_malloc)


def test_the_environment_form_retains_it_too(default_malloc):
    """`ENVIRONMENT`, as bench_peers starts a process with it: glibc accepts every value."""
    retained = measured("reason = None", env=host_memory.ENVIRONMENT)
    assert retained["arenas"] == 1
    assert retained["buffers_faulted"] <= 3, (retained, default_malloc)


def test_too_late_once_threads_run_changes_nothing():
    late = measured("""
        import jax
        jax.devices()
        from jaxdet import host_memory
        reason = host_memory.retain_freed_memory()
    """)
    assert "threads" in late["reason"] and "before importing numpy or jax" in late["reason"]
    assert late["arenas"] > 1


def test_the_jaxdet_command_leaves_malloc_alone_unless_asked(tmp_path):
    """Off by default: `jaxdet.__main__.main` changes nothing without --tune-malloc or the variable."""
    command = measured(f"""
        from jaxdet.__main__ import main
        assert main(["eval", "--workdir", {str(tmp_path / 'missing')!r}]) != 0
        reason = None
    """, env={host_memory.ENV_FLAG: ""})
    assert command["arenas"] > 1


@pytest.mark.skipif(host_memory.gpu_plugin_installed(),
                    reason="the command leaves malloc alone where a JAX GPU plugin is installed")
@pytest.mark.parametrize("flag, env", [(["--tune-malloc"], {}), ([], {host_memory.ENV_FLAG: "1"})],
                         ids=["flag", "environment"])
def test_the_jaxdet_command_retains_freed_memory_when_asked(tmp_path, flag, env):
    """`jaxdet.__main__.main` makes the settings before it imports jax (here for a command that fails
    at once: a missing run directory), when the flag or the environment variable asks for them."""
    command = measured(f"""
        from jaxdet.__main__ import main
        assert main(["eval", *{flag!r}, "--workdir", {str(tmp_path / 'missing')!r}]) != 0
        reason = None
    """, env=env)
    assert command["arenas"] == 1


def test_with_a_gpu_plugin_the_command_leaves_malloc_alone(monkeypatch):
    monkeypatch.setattr(host_memory, "gpu_plugin_installed", lambda: True)
    monkeypatch.setattr(host_memory, "retain_freed_memory", lambda: pytest.fail("malloc settings made"))
    assert "GPU plugin" in host_memory.retain_freed_memory_without_gpu()
    assert "GPU plugin" in host_memory.tune_for_command(["train", "--tune-malloc"], environ={})


def test_not_asked_the_command_leaves_malloc_alone(monkeypatch):
    monkeypatch.setattr(host_memory, "retain_freed_memory", lambda: pytest.fail("malloc settings made"))
    assert "not asked" in host_memory.tune_for_command(["train", "--device", "cpu"], environ={})
    assert "not asked" in host_memory.tune_for_command(["train"], environ={host_memory.ENV_FLAG: "0"})


def test_with_a_gpu_plugin_the_command_still_retains_freed_memory_for_the_cpu(tmp_path):
    """`--device cpu` computes on the CPU whatever is installed: the settings are made."""
    command = measured(f"""
        from jaxdet import host_memory
        host_memory.gpu_plugin_installed = lambda: True
        from jaxdet.__main__ import main
        assert main(["eval", "--tune-malloc", "--device=cpu", "--workdir", {str(tmp_path / 'missing')!r}]) != 0
        reason = None
    """)
    assert command["arenas"] == 1


@pytest.mark.parametrize("argv, device", [(["train"], "auto"), (["train", "--device", "cpu"], "cpu"),
                                          (["eval", "--device=gpu", "--workdir", "w"], "gpu"),
                                          (["train", "--device", "gpu", "--device=cpu"], "cpu"),
                                          (["train", "--device"], "auto"),
                                          (["train", "--dev", "cpu"], "cpu"), (["train", "--devi=cpu"], "cpu"),
                                          (["train", "--d", "cpu"], "cpu"), (["train", "--", "cpu"], "auto")])
def test_the_device_is_read_before_the_parser(argv, device):
    assert host_memory.requested_device(argv) == device
