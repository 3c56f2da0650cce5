"""jaxdet as an installed package, not a checkout: a wheel built from this tree (the native RoI
pooling op compiled into it), installed into a fresh virtualenv, runs `jaxdet demo` and `jaxdet
train` with the named configs from a directory outside the checkout.

The fresh venv sees the test environment's site-packages through a .pth line (no network, no
dependency install) but not its editable jaxdet: only the wheel's copy can be imported. The CUDA
extension is not built (JAXDET_CUDA=0): the CPU one is what the demo runs.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from helpers import REPO


def _source_files() -> list:
    """The files of the tree as git sees it (tracked, and new ones not ignored): no build outputs."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split("\0") if name and os.path.isfile(os.path.join(REPO, name))]


def _run(command, *, cwd, env, timeout=600) -> str:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, command))}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh venv's bin directory, its environment, a working directory outside the checkout)."""
    if shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("needs the git checkout to list the source files")
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    for name in _source_files():
        os.makedirs(source / os.path.dirname(name), exist_ok=True)
        shutil.copy2(os.path.join(REPO, name), source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(JAXDET_CUDA="0", JAX_PLATFORMS="cpu")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
          str(source)], cwd=root, env=env)
    (wheel,) = (root / "dist").glob("jaxdet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("xla_ops/_roi_pool_cpu") and n.endswith(".so") for n in names), names
    assert {f"jaxdet/configs/{n}.py" for n in ("base", "shapes_demo", "tiny_shapes", "vgg16_voc07", "vgg16_coco",
                                              "fast_rcnn_vgg16")} <= set(names)

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # A plain path line: the dependencies are found, the .pth files there (the editable jaxdet) are not read.
    with open(os.path.join(purelib, "test_environment.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], cwd=root, env=env)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    where = _run([python, "-c", "import jaxdet, xla_ops; print(jaxdet.__file__); print(xla_ops.__file__)"],
                 cwd=elsewhere, env=env)
    assert all(line.startswith(purelib) for line in where.split()), where
    return venv / "bin", env, elsewhere


@pytest.mark.slow
def test_the_installed_demo_runs_outside_the_checkout(installed):
    bin_dir, env, elsewhere = installed
    out = _run([bin_dir / "jaxdet", "demo", "--config", "shapes_demo:smoke", "--no-progress"], cwd=elsewhere, env=env)
    assert "VOC07 mAP@0.5" in out
    metrics = json.loads((elsewhere / "runs" / "demo" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["eval_images"] == 8


@pytest.mark.slow
def test_the_installed_train_takes_a_config_by_name(installed):
    bin_dir, env, elsewhere = installed
    _run([bin_dir / "jaxdet", "train", "--config", "tiny_shapes:smoke", "--workdir", "tiny", "--no-eval",
          "--no-progress", "--config.train.num_steps=1"], cwd=elsewhere, env=env)
    config = json.loads((elsewhere / "tiny" / "config.json").read_text())
    assert config["data"]["dataset"] == "shapes" and config["train"]["num_steps"] == 1
    assert (elsewhere / "tiny" / "checkpoints" / "1").is_dir()
