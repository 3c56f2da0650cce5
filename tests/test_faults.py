"""Faults a user meets (issue 14), each reproduced through the `jaxdet` command as the user meets it:
the message names the file or the config key, and no file the user made is touched.

Every run uses `shapes_demo:smoke` (4 steps on 16 images), in this process: one training program
and one detection program for the module; one trained run is shared by the tests that only read it.
"""

import json
import os
import shutil

import pytest

from jaxdet import cli
from test_cli import SMOKE, assert_one_paragraph, run


def snapshot(root) -> dict:
    """{relative path: content} of every file under `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    assert cli.main(["make-shapes", "--out", str(out), "--config", SMOKE]) == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_dir):
    """A finished 4-step training run (never modified by the tests: copy it with `copy_run`)."""
    workdir = tmp_path_factory.mktemp("run") / "w"
    assert cli.main(["train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir", str(workdir),
                     "--no-progress", "--no-eval"]) == 0
    return workdir


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained run, for a test that changes it."""
    return shutil.copytree(trained, tmp_path / "run")


# ----------------------------------------------------------------------------------------------
# 1. The demo deletes only what it wrote


def test_demo_refuses_a_training_run_and_touches_nothing(run_copy, capsys):
    (run_copy / "data").mkdir()
    (run_copy / "data" / "mine.txt").write_text("the user's notes")
    before = snapshot(run_copy)
    for resume in ((), ("--resume",)):
        status, _, err = run(capsys, "demo", "--config", SMOKE, "--workdir", run_copy, "--no-progress", *resume)
        assert status == 1
        assert_one_paragraph(err, f"{run_copy} already holds the checkpoints of a run", "step 4",
                             "did not make", f"jaxdet train --workdir {run_copy} --resume", "--workdir")
        assert snapshot(run_copy) == before


def test_demo_refuses_a_folder_of_user_files(tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "data").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    (folder / "data" / "photo.png").write_bytes(b"not really a png")
    before = snapshot(folder)
    status, _, err = run(capsys, "demo", "--config", SMOKE, "--workdir", folder, "--no-progress")
    assert status == 1
    assert_one_paragraph(err, f"{folder} holds files `jaxdet demo` did not write (data, notes.txt)",
                         "new or empty --workdir")
    assert snapshot(folder) == before


def test_demo_replaces_only_its_own_files_in_its_own_directory(tmp_path, capsys):
    workdir = tmp_path / "demo"
    status, _, err = run(capsys, "demo", "--config", SMOKE, "--workdir", workdir, "--no-progress")
    assert status == 0, err
    written = snapshot(workdir / "data")
    (workdir / "notes.txt").write_text("the user's")
    (workdir / "data" / "mine.txt").write_text("the user's too")
    (workdir / "data" / "JPEGImages" / "my_photo.png").write_bytes(b"mine")
    # Another dataset: the demo's images are replaced, the user's files stay.
    status, out, err = run(capsys, "demo", "--config", SMOKE, "--workdir", workdir, "--no-progress",
                           "--config.data.num_test=4")
    assert status == 0, err
    assert "wrote the shapes dataset" in out
    assert (workdir / "notes.txt").read_text() == "the user's"
    assert (workdir / "data" / "mine.txt").read_text() == "the user's too"
    assert (workdir / "data" / "JPEGImages" / "my_photo.png").read_bytes() == b"mine"
    now = snapshot(workdir / "data")
    assert len((workdir / "data" / "ImageSets" / "Main" / "test.txt").read_text().split()) == 4
    assert set(written) - set(now) == {f"JPEGImages/s1_{i:06d}.png" for i in range(4, 8)} | {
        f"Annotations/s1_{i:06d}.xml" for i in range(4, 8)}
    stamp = json.loads((workdir / "demo.json").read_text())
    assert "mine.txt" not in stamp["data_files"] and "JPEGImages/my_photo.png" not in stamp["data_files"]
    # The second demo's own run replaced the first's.
    assert (workdir / "checkpoints" / "4").is_dir() and os.path.isfile(workdir / "metrics.json")


# ----------------------------------------------------------------------------------------------
# 6. A broken train log


def test_resume_after_a_partial_log_line_cuts_the_log_back_to_the_checkpoint(run_copy, capsys):
    # The run logged step 4 and died writing the next row, before checkpoint 4 was complete.
    shutil.rmtree(run_copy / "checkpoints" / "4")
    log = run_copy / "train_log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    with open(log, "a") as f:
        f.write('{"step": 6, "loss": 0.')
    with pytest.warns(UserWarning, match=r"train_log.jsonl: line 3 not a whole JSON row"):
        status, out, err = run(capsys, "train", "--workdir", run_copy, "--config.train.num_steps=6", "--resume",
                               "--no-progress")
    assert status == 0, err
    resumed = [json.loads(line) for line in log.read_text().splitlines()]
    # Resumed from step 2: its rows from step 4 on are new, once each, in order (no zig-zag).
    assert [r["step"] for r in resumed] == [2, 4, 6]
    assert resumed[0] == rows[0] and resumed[1]["loss"] == rows[1]["loss"]  # the same batches, the same loss
    assert (run_copy / "loss_curve.png").is_file() and "VOC07 mAP@0.5" in out
    assert json.loads((run_copy / "metrics.json").read_text())["start_step"] == 2
