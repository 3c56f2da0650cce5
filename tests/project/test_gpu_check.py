"""`make gpu-check` (experiments/gpu_check.sh) where there is no GPU: one line, a non-zero exit at
once, nothing written; and, with a GPU that nvidia-smi lists but no Python that sees it, the
failure recorded in the summary and the exit status."""

import os
import shutil
import stat
import subprocess
import time

import pytest

from helpers import REPO

SCRIPT = os.path.join(REPO, "experiments", "gpu_check.sh")


def fake_nvidia_smi(tmp_path, body):
    """A directory holding an `nvidia-smi` that runs the shell `body`, for the front of PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(bin_dir)


def run_check(command, tmp_path, path_front=None, **env):
    environ = dict(os.environ, OUT=str(tmp_path / "results"), **env)
    if path_front:
        environ["PATH"] = path_front + os.pathsep + environ["PATH"]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("nvidia_smi", [
    "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'; exit 9",
    "exit 0",  # a driver that lists no GPU
    None,  # no nvidia-smi at all (skipped where this machine has one)
])
def test_refuses_at_once_without_a_gpu(tmp_path, nvidia_smi):
    if nvidia_smi is None:
        if shutil.which("nvidia-smi"):
            pytest.skip("this machine has an nvidia-smi")
        front = None
    else:
        front = fake_nvidia_smi(tmp_path, nvidia_smi)
    proc, seconds = run_check(["bash", SCRIPT], tmp_path, front)
    assert proc.returncode != 0
    assert proc.stdout.splitlines() == [
        "gpu-check: no NVIDIA GPU here (nvidia-smi is missing or lists none); nothing was run."]
    assert seconds < 10
    assert not (tmp_path / "results").exists()


def test_make_gpu_check_refuses_without_a_gpu(tmp_path):
    front = fake_nvidia_smi(tmp_path, "exit 9")
    proc, seconds = run_check(["make", "-s", "gpu-check"], tmp_path, front)
    assert proc.returncode != 0 and seconds < 10
    assert proc.stdout.strip().startswith("gpu-check: no NVIDIA GPU here")


def test_a_failed_step_is_recorded_and_fails_the_run(tmp_path):
    # nvidia-smi lists an H200, but the only Python offered cannot run JAX on it; a budget too
    # short for any step: every step is skipped or fails, the summary says which, exit 1.
    front = fake_nvidia_smi(tmp_path, "echo 'NVIDIA H200, 9.0'")
    proc, seconds = run_check(["bash", SCRIPT], tmp_path, front, PY="false", GPU_CHECK_BUDGET="10")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert seconds < 60
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert "JAXDET_CUDA_ARCHS=90" in summary
    assert "| env | ok |" in summary
    assert "| python | FAILED: no Python whose JAX sees the GPU" in summary
    assert "| sanitize | SKIPPED: the 10 s budget is spent |" in summary
    assert "gpu-check: some steps did not succeed" in proc.stdout
