"""Fixtures shared by the command-line tests."""

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
