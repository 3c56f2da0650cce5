"""Fixtures shared by the command-line tests: datasets and trained runs, made once per session."""

import pytest

from jaxdet import cli


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
