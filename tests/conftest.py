"""tests/ mirrors the code: xla_ops/ (amx/), ops/, data/, models/, targets/ (with jaxdet.proposals
and jaxdet.losses, their layer), training/ (with distributed and compiler_options), inference/,
evaluation/, cli/ (the command, its faults, host_memory) and project/ (the README, the install,
make gpu-check, experiments' report code). references/ holds the independent implementations
checked against (numpy, the VOC devkit, torch's .pth layout); helpers.py what test files share.
No test file imports another; test basenames are unique (no __init__.py: pytest's default
import mode, with tests/ on sys.path by pyproject's pythonpath).

The fixtures: datasets and trained runs for the command-line tests, made once per session.
"""

import pytest

from jaxdet import cli

# Assertion messages with values for the helpers' asserts too (before any test imports them).
pytest.register_assert_rewrite("helpers", "references")


@pytest.fixture(scope="session")
def shapes_dir_of(tmp_path_factory):
    """config name -> the config's synthetic shapes dataset, written to disk (VOC layout) once
    per session by `jaxdet make-shapes`; tests only read it."""
    made = {}

    def make(config):
        if config not in made:
            out = tmp_path_factory.mktemp("shapes")
            assert cli.main(["make-shapes", "--out", str(out), "--config", config]) == 0
            made[config] = out
        return made[config]

    return make


@pytest.fixture(scope="session")
def trained_run_of(tmp_path_factory, shapes_dir_of):
    """config name -> the directory of a finished `jaxdet train` of the config on its shapes dataset
    (`shapes_dir_of`), without the final evaluation, once per session; tests only read it."""
    trained = {}

    def train(config):
        if config not in trained:
            workdir = tmp_path_factory.mktemp("run") / "w"
            assert cli.main(["train", "--config", config, f"--config.data.root={shapes_dir_of(config)}",
                             "--workdir", str(workdir), "--no-progress", "--no-eval"]) == 0
            trained[config] = workdir
        return trained[config]

    return train
