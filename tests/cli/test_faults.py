"""Faults a user meets (issue 14), each reproduced through the `jaxdet` command as the user meets it:
the message names the file or the config key, and no file the user made is touched.

Every run uses `shapes_demo:smoke` (4 steps on 16 images), in this process: one training program
and one detection program for the module; one trained run is shared by the tests that only read it.
"""

import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest

from jaxdet import cli, overrides
from jaxdet.errors import user_error
from helpers import assert_one_paragraph, run

SMOKE = "shapes_demo:smoke"  # test_cli.py's config: the session's shapes dataset (conftest.py) is shared


def snapshot(root) -> dict:
    """{relative path: content} of every file under `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def shapes_dir(shapes_dir_of):
    return shapes_dir_of(SMOKE)


@pytest.fixture(scope="module")
def trained(trained_run_of):
    """A finished 4-step training run (never modified by the tests: copy it with `run_copy`)."""
    return trained_run_of(SMOKE)


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


def test_make_shapes_refuses_a_folder_holding_a_dataset_of_the_users(tmp_path, capsys):
    # A VOC tree of the user's whose split list and annotation names make-shapes would write too.
    folder = tmp_path / "mine"
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    (folder / "ImageSets" / "Main" / "train.txt").write_text("s0_000000\n")
    (folder / "Annotations").mkdir()
    (folder / "Annotations" / "s0_000000.xml").write_text("<annotation>mine</annotation>")
    (folder / "notes.txt").write_text("keep me")
    (folder / "readme.md").write_text("keep me too")
    before = snapshot(folder)
    status, _, err = run(capsys, "make-shapes", "--config", SMOKE, "--out", folder)
    assert status == 2
    assert_one_paragraph(err, f"--out {folder} is not empty (it holds Annotations, ImageSets, notes.txt and 1 more)",
                         "never replaces files it did not write", "new or empty folder")
    assert snapshot(folder) == before
    (tmp_path / "a_file").write_text("x")
    status, _, err = run(capsys, "make-shapes", "--config", SMOKE, "--out", tmp_path / "a_file")
    assert status == 2
    assert_one_paragraph(err, f"--out {tmp_path / 'a_file'} is a file")
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, err = run(capsys, "make-shapes", "--config", SMOKE, "--out", empty)
    assert status == 0, err
    assert (empty / "ImageSets" / "Main" / "train.txt").is_file()


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


# ----------------------------------------------------------------------------------------------
# 3. A run trained with another config


def assert_clean(err: str) -> None:
    """Nothing follows the message: no traceback, no orbax thread's or coroutine's report."""
    assert "Traceback" not in err and "Exception ignored" not in err and "absl" not in err, err


def test_eval_with_another_model_names_the_differing_keys(trained, capsys):
    before = snapshot(trained)
    status, _, err = run(capsys, "eval", "--workdir", trained, "--config.model.head_hidden=64",
                         "--config.model.anchor_scales=2,4,8,16", "--no-progress")
    assert status == 2
    run_scales = json.loads((trained / "config.json").read_text())["model"]["anchor_scales"]
    text = assert_one_paragraph(err, "this run was trained with a different model config",
                                "--config.model.head_hidden=[64] given, [256, 256] in the run",
                                f"--config.model.anchor_scales=[2, 4, 8, 16] given, {run_scales} in the run",
                                str(trained / "config.json"))
    assert len(text) < 600 and "opt_state" not in text  # not orbax's tree
    assert_clean(err)
    assert snapshot(trained) == before


def test_resume_with_another_model_or_optimizer_is_refused_naming_the_keys(run_copy, capsys):
    before = snapshot(run_copy)
    status, _, err = run(capsys, "train", "--workdir", run_copy, "--resume", "--config.train.num_steps=6",
                         "--config.model.head_hidden=64", "--no-progress")
    assert status == 2
    assert_one_paragraph(err, "this run was trained with a different model config",
                         "--config.model.head_hidden=[64] given, [256, 256] in the run")
    assert_clean(err)
    run_config = json.loads((run_copy / "config.json").read_text())
    other = "sgd" if run_config["optimizer"]["name"] == "adam" else "adam"
    status, _, err = run(capsys, "train", "--workdir", run_copy, "--resume", "--config.train.num_steps=6",
                         f"--config.optimizer.name={other}", "--no-progress")
    assert status == 2
    text = assert_one_paragraph(err, "this run was trained with a different optimizer config",
                                f"--config.optimizer.name='{other}' given")
    assert "num_steps" not in text  # only what makes the checkpoint not fit
    assert_clean(err)
    assert snapshot(run_copy) == before


def test_resume_with_another_learning_rate_keeps_config_json_and_records_the_change(run_copy, capsys):
    original = (run_copy / "config.json").read_bytes()
    rate = json.loads(original)["optimizer"]["learning_rate"]
    with pytest.warns(UserWarning, match=rf"config.optimizer.learning_rate: {rate!r} -> 0.0005.*"
                                         r"config_changes.jsonl records the change"):
        status, _, err = run(capsys, "train", "--workdir", run_copy, "--resume", "--config.train.num_steps=6",
                             "--config.optimizer.learning_rate=0.0005", "--no-eval", "--no-progress")
    assert status == 0, err
    assert (run_copy / "config.json").read_bytes() == original
    changes = [json.loads(line) for line in (run_copy / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [{"step": 4, "changes": {"optimizer.learning_rate": [rate, 0.0005],
                                               "train.num_steps": [4, 6]}}]
    # The run's config is now the changed one: resuming again without the override keeps the new
    # rate, and neither warns nor records anything new.
    from jaxdet import workdir
    assert workdir.read_config(str(run_copy)).optimizer.learning_rate == 0.0005
    rows = [json.loads(line) for line in (run_copy / "train_log.jsonl").read_text().splitlines()]
    # Steps 5 and 6 ran at half the rate: lower than steps 3 and 4 although warm-up raises it each step.
    assert rows[-1]["step"] == 6 and rows[-1]["learning_rate"] < rows[-2]["learning_rate"]
    status, _, err = run(capsys, "train", "--workdir", run_copy, "--resume", "--config.train.num_steps=6",
                         "--no-eval", "--no-progress")
    assert status == 0 and "UserWarning" not in err, err
    assert len((run_copy / "config_changes.jsonl").read_text().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# 2. Disk and permission faults


def refuse_writes(monkeypatch, directory, code: int) -> None:
    """Every file opened for writing under `directory` fails with OSError `code` (a full disk, a
    read-only file system; as root, permissions cannot be taken away with chmod)."""
    import builtins
    import io

    def refused(path):
        return OSError(code, os.strerror(code), str(path))

    real_open, real_os_open = builtins.open, os.open

    def fake_open(path, mode="r", *args, **kwargs):
        if str(path).startswith(str(directory)) and any(c in mode for c in "wax+"):
            raise refused(path)
        return real_open(path, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(directory)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise refused(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)


def test_eval_of_a_read_only_run_fails_before_any_work_and_out_writes_elsewhere(trained, tmp_path, capsys,
                                                                                monkeypatch):
    import errno

    from jaxdet import experiment

    before = snapshot(trained)
    with monkeypatch.context() as patch:
        refuse_writes(patch, trained, errno.EROFS)
        patch.setattr(experiment, "restore_trained", lambda *a, **k: pytest.fail("restored before the check"))
        status, _, err = run(capsys, "eval", "--workdir", trained, "--no-progress")
    assert status == 1
    assert_one_paragraph(err, f"cannot write {trained}: its file system is read-only (EROFS)", "--out DIR")
    assert_clean(err)
    status, out, err = run(capsys, "eval", "--workdir", trained, "--out", tmp_path / "eval", "--no-progress")
    assert status == 0, err
    assert str(tmp_path / "eval" / "metrics.json") in out and (tmp_path / "eval" / "pr_curves.png").is_file()
    assert snapshot(trained) == before


def test_a_full_disk_during_training_is_named_not_out_of_memory(shapes_dir, tmp_path, capsys, monkeypatch):
    import errno

    workdir = tmp_path / "w"
    refuse_writes(monkeypatch, workdir / "train_log.jsonl", errno.ENOSPC)
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir",
                         workdir, "--no-eval", "--no-progress")
    assert status == 1
    text = assert_one_paragraph(err, f"cannot write {workdir}/train_log.jsonl: no space is left on its disk (ENOSPC)",
                                "No checkpoint had been written yet")
    assert "memory" not in text and "--resume" not in text  # nothing to resume from (issue 27)


def test_orbax_s_full_disk_error_is_named_not_out_of_memory():
    # As orbax raised it when a checkpoint filled a 300 kB tmpfs (TensorStore's RESOURCE_EXHAUSTED).
    path = "/data/run/checkpoints/2.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/d/724e359a"
    error = ValueError(f'RESOURCE_EXHAUSTED: Error writing "opt_state.2.0.count/0" in OCDBT database at local file '
                       f'"/data/run/checkpoints/2.orbax-checkpoint-tmp/": Failed writing: "{path}": Failed to write '
                       f"8146944 bytes to file 7: No space left on device [os_error_code='28']")
    fault = user_error(error)
    status, message = fault.exit_status, fault.message()
    assert status == 1 and message.startswith(f"cannot write {path}: no space is left on its disk (ENOSPC)")
    assert "memory" not in message


def test_an_older_demo_s_directory_is_still_the_demo_s(tmp_path):
    from jaxdet import workdir

    old = tmp_path / "demo"
    (old / "data").mkdir(parents=True)
    (old / "data" / "shapes.json").write_text("{}")  # what the demo stamped before demo.json
    (old / "checkpoints" / "2").mkdir(parents=True)
    workdir.claim_for_demo(str(old))
    workdir.clear_demo_run(str(old))
    assert not (old / "checkpoints").exists() and (old / "data" / "shapes.json").is_file()
    assert json.loads((old / "demo.json").read_text())["data_files"] == []  # its data: rewritten, never deleted


# ----------------------------------------------------------------------------------------------
# 4. Found when the dataset is read, not mid-run; every piece of advice names a key that exists


def copy_data(shapes_dir, tmp_path):
    """A copy of the shapes dataset to spoil (the session's stays as it is)."""
    return shutil.copytree(shapes_dir, tmp_path / "data")


def train_objects(data) -> dict:
    """{image file name: its objects} of the training split of a shapes dataset on disk."""
    from jaxdet.data import read_voc

    train = read_voc(str(data), "train", class_names=("circle", "square", "triangle"))
    return {os.path.basename(r.path): len(r.labels) for r in train.records}


def test_more_objects_than_max_boxes_is_found_before_training_or_skipped(shapes_dir, tmp_path, capsys):
    before = snapshot(shapes_dir)
    objects = train_objects(shapes_dir)
    most, limit = max(objects.values()), max(objects.values()) - 1
    crowded = sorted(name for name, count in objects.items() if count > limit)
    workdir = tmp_path / "w"
    common = ("train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir", workdir, "--no-progress",
              "--no-eval", f"--config.data.max_boxes={limit}")
    status, _, err = run(capsys, *common)
    assert status == 1
    assert_one_paragraph(err, f"{crowded[0]}: {most} boxes to train on, more than --config.data.max_boxes={limit}",
                         f"{len(crowded)} of the 16 training images", f"set --config.data.max_boxes={most}",
                         "--config.data.on_error=skip")
    assert not workdir.exists()  # found before anything was written
    with pytest.warns(UserWarning) as caught:
        status, _, err = run(capsys, *common, "--config.data.on_error=skip")
    assert status == 0, err
    warned = " ".join(str(w.message) for w in caught)
    assert all(name in warned for name in crowded)
    assert f"skipped {len(crowded)} of 16 images" in warned
    assert snapshot(shapes_dir) == before


def test_an_undecodable_image_is_skipped_while_training_without_check_images(shapes_dir, tmp_path, capsys):
    data = copy_data(shapes_dir, tmp_path)
    corrupt = data / "JPEGImages" / sorted(train_objects(data))[0]
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    before = snapshot(data)
    common = ("train", "--config", SMOKE, f"--config.data.root={data}", "--no-progress", "--no-eval")
    status, _, err = run(capsys, *common, "--workdir", tmp_path / "a")
    assert status == 1
    assert_one_paragraph(err, f"{corrupt}: image cannot be decoded", "--config.data.on_error=skip")
    with pytest.warns(UserWarning, match=rf"skipping: {corrupt}: image cannot be decoded.*on_error=skip.*blank image "
                                         r"with no objects \(1 unreadable image so far\)") as caught:
        status, _, err = run(capsys, *common, "--workdir", tmp_path / "b", "--config.data.on_error=skip")
    assert status == 0, err
    assert sum(str(corrupt) in str(w.message) for w in caught) == 1  # named once, however often it comes up
    assert (tmp_path / "b" / "checkpoints" / "4").is_dir()
    assert snapshot(data) == before


def config_keys_in_messages() -> dict:
    """{config key named in the strings of jaxdet's code, docstrings aside: the module and line}."""
    import ast
    import pathlib
    import re

    import jaxdet

    named = re.compile(r"(?<![\w.])(?:--)?config\.(?!json\b|py\b)([a-z_]\w*(?:\.[a-z_]\w*)*)")
    found = {}
    for path in sorted(pathlib.Path(jaxdet.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for key in named.findall(node.value):
                    found.setdefault(key, f"{path.name}:{node.lineno}")
    return found


def test_every_config_key_named_in_a_message_exists():
    from jaxdet.configs import NAMES, base

    known = set(overrides.config_keys(base.get_config()))
    for name in NAMES:
        known.update(overrides.config_keys(overrides.load_config(name)))
    named = config_keys_in_messages()
    assert {"data.max_boxes", "train.batch_size", "data.min_size", "data.on_error"} <= set(named)
    assert {key: where for key, where in named.items() if key not in known} == {}


def test_no_full_batch_advises_the_batch_size_key(shapes_dir, tmp_path, capsys):
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir",
                         tmp_path / "w", "--no-progress", "--config.train.batch_size=32")
    assert status == 2
    text = assert_one_paragraph(err, "no full batch of 32 images", "--config.train.batch_size")
    assert "drop_remainder" not in text


# ----------------------------------------------------------------------------------------------
# 7. Smaller ones


def test_a_training_split_without_objects_warns_naming_it(shapes_dir, tmp_path):
    import re

    from jaxdet.data.build import load_dataset, train_pipeline

    data = copy_data(shapes_dir, tmp_path)
    for xml in (data / "Annotations").glob("s0_*.xml"):
        xml.write_text(re.sub(r"<object>.*?</object>", "", xml.read_text(), flags=re.S))
    config = overrides.load_config(SMOKE)
    overrides.apply_override(config, "data.root", str(data))
    with pytest.warns(UserWarning, match=rf"the training split train of {data} has no object to train on: none of "
                                         r"its 16 images .* config.data.train_splits"):
        train_pipeline(config, load_dataset(config, "train"))


def test_an_image_too_large_for_a_batch_is_named_with_its_size(shapes_dir, tmp_path, capsys):
    data = copy_data(shapes_dir, tmp_path)
    xml = data / "Annotations" / "s0_000003.xml"
    xml.write_text(xml.read_text().replace("<width>128</width>", "<width>20000</width>")
                   .replace("<height>128</height>", "<height>20000</height>"))
    before = snapshot(data)
    workdir = tmp_path / "w"
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={data}", "--workdir", workdir,
                         "--no-progress")
    assert status == 2
    text = assert_one_paragraph(err, f"{data}/JPEGImages/s0_000003.png (20000x20000 pixels)",
                                "each batch of 8 images would hold 38.4 GB", "--config.data.min_size=600",
                                "--config.data.max_size=1000")
    assert "memory" not in text
    assert not workdir.exists() and snapshot(data) == before


def test_predict_skips_a_corrupt_image_and_reports_files_that_are_not_images(trained, shapes_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        shutil.copy(shapes_dir / "JPEGImages" / f"s1_{i:06d}.png", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (folder / "notes.txt").write_text("mine")
    (folder / "labels.csv").write_text("a,b")
    before = snapshot(folder)
    out = tmp_path / "out"
    status, printed, err = run(capsys, "predict", "--workdir", trained, folder, "--out", out, "--no-progress")
    assert status == 0, err
    text = " ".join(printed.split())
    assert "on 2 images" in text
    assert f"skipped 1 image file that cannot be read: {folder / 'broken.jpg'}: image cannot be decoded" in text
    assert "left out 2 files that are not images (.png, .jpg" in text and "labels.csv, notes.txt" in text
    found = json.loads((out / "detections.json").read_text())
    assert [os.path.basename(e["file"]) for e in found["images"]] == ["s1_000000.png", "s1_000001.png"]
    assert [e["file"] for e in found["skipped"]] == [str(folder / "broken.jpg")]
    assert snapshot(folder) == before
    # Nothing readable at all: one paragraph naming the file.
    status, _, err = run(capsys, "predict", "--workdir", trained, folder / "broken.jpg", "--out", out, "--no-progress")
    assert status == 2
    assert_one_paragraph(err, "none of the 1 image files can be read", "broken.jpg")


def test_a_value_of_the_wrong_type_for_a_field_that_is_none_names_the_key_and_type(shapes_dir, tmp_path, capsys):
    assert overrides.load_config(SMOKE).data.min_size is None  # no resize: typed by the base config's 600
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir",
                         tmp_path / "w", "--config.data.min_size=abc")
    assert status == 2
    assert_one_paragraph(err, "--config.data.min_size=abc: cannot read 'abc' as an int (or None)")
    assert not (tmp_path / "w").exists()
    config = overrides.load_config(SMOKE)
    overrides.apply_override(config, "data.min_size", "224")
    overrides.apply_override(config, "data.max_size", "None")
    assert (config.data.min_size, config.data.max_size) == (224, None)


def test_one_number_for_a_pair_is_a_square_size_or_refused_for_a_range(shapes_dir, tmp_path, capsys):
    import ml_collections

    from jaxdet.settings import InvalidSetting, RoISettings

    workdir = tmp_path / "w"
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir", workdir,
                         "--no-progress", "--no-eval", "--config.model.pooled_size=7")
    assert status == 0, err
    assert json.loads((workdir / "config.json").read_text())["model"]["pooled_size"] == [7, 7]
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir",
                         tmp_path / "v", "--config.roi.background_iou=0.3")
    assert status == 2
    assert_one_paragraph(err, "--config.roi.background_iou is a pair (lo, hi), got (0.3,)",
                         "--config.roi.background_iou=a,b")
    with pytest.raises(InvalidSetting, match=r"config.roi.background_iou is a pair \(lo, hi\), got \(0.3,\)"):
        RoISettings.from_section(ml_collections.ConfigDict({"background_iou": (0.3,)}))  # a config of one's own


@pytest.fixture
def small_disk(tmp_path):
    """A 300 kB tmpfs: room for a run's small files, not for a checkpoint (needs root, as in a container)."""
    import subprocess

    mount = tmp_path / "small_disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    # Lazily: a file the test's process still holds there (orbax's threads) must not fail the teardown
    # with "target is busy" and leave the mount behind.
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


class _WriterFailingToFlush:
    """Stands in for tensorboardX's SummaryWriter: takes scalars, and its close meets a full disk
    the way tensorboardX's does (an OSError that names no file)."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        import errno
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_checkpoint_filling_the_disk_gives_one_message_and_nothing_else(shapes_dir, small_disk, capsys, caplog,
                                                                          monkeypatch):
    import logging
    import sys

    # Where orbax's reports would go: absl's log records (printed by the command) and unraisable errors.
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    workdir = small_disk / "w"
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir", workdir,
                         "--no-progress", "--no-eval")
    assert status == 1
    assert_one_paragraph(err, f"cannot write {workdir}/checkpoints/2.orbax-checkpoint-tmp",
                         "no space is left on its disk (ENOSPC)", "--resume")
    assert_clean(err)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [str(u.exc_value) for u in unraisable] == []


def test_tensorboard_meeting_the_full_disk_after_the_checkpoint_does_not_hide_it(shapes_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    # The order the small-disk test above can meet by chance: the checkpoint fails first, then the
    # reporter's last TensorBoard flush fails on the same full disk while the run's error is raised.
    import errno

    from jaxdet import reporting
    from jaxdet.training import loop

    workdir = tmp_path / "w"
    checkpoint = f"{workdir}/checkpoints/2.orbax-checkpoint-tmp"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", checkpoint)

    monkeypatch.setattr(loop, "save_checkpoint", disk_full)
    monkeypatch.setattr(reporting, "_summary_writer", lambda workdir: _WriterFailingToFlush())
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir", workdir,
                         "--no-progress", "--no-eval")
    assert status == 1
    text = assert_one_paragraph(err, f"cannot write {checkpoint}: no space is left on its disk (ENOSPC)",
                                "No checkpoint had been written yet")
    assert "--resume" not in text
    assert_clean(err)


def test_tensorboard_failing_alone_names_its_directory(shapes_dir, tmp_path, capsys, monkeypatch):
    from jaxdet import reporting

    monkeypatch.setattr(reporting, "_summary_writer", lambda workdir: _WriterFailingToFlush())
    workdir = tmp_path / "w"
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir", workdir,
                         "--no-progress", "--no-eval")
    assert status == 1
    assert_one_paragraph(err, f"cannot write {workdir}/tensorboard: no space is left on its disk (ENOSPC)",
                         "--resume")
    assert_clean(err)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]  # written before, intact


# ----------------------------------------------------------------------------------------------
# 8. Photographs as people take them, and no run or picture overwritten (issue 27)


def exif_photo(path, *, stored=(80, 64), orientation=6):
    """An image file whose pixels are stored `stored` (width, height) with an EXIF Orientation tag, as a
    phone camera writes a portrait photo; returns the pixels as a viewer shows them."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (stored[1], stored[0], 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def test_exif_orientation_images_are_read_as_displayed_everywhere(shapes_dir, tmp_path):
    from jaxdet.data import read_voc
    from jaxdet.data.records import load_image
    from jaxdet.inference.files import image_dataset

    data = copy_data(shapes_dir, tmp_path)
    xml = data / "Annotations" / "s0_000000.xml"
    text = re.sub(r"<object>.*?</object>", "", xml.read_text(), flags=re.S)  # the pixels are what is checked
    xml.write_text(text.replace("<width>128</width>", "<width>64</width>").replace("<height>128</height>",
                                                                                 "<height>80</height>"))
    shown = exif_photo(data / "JPEGImages" / "s0_000000.png")  # stored 80x64, shown 64 wide and 80 tall
    assert shown.shape == (80, 64, 3)
    classes = ("circle", "square", "triangle")
    for check_images in (False, True):  # the annotation's size is compared with the displayed one
        record = read_voc(str(data), "train", class_names=classes, check_images=check_images)[0]
        assert (record.height, record.width) == (80, 64)
        np.testing.assert_array_equal(load_image(record), shown)  # training and evaluation read these pixels
    config = overrides.load_config(SMOKE)
    dataset, skipped = image_dataset(config, [str(data / "JPEGImages" / "s0_000000.png")], classes)
    assert not skipped and (dataset[0].height, dataset[0].width) == (80, 64)  # predict's frame: the displayed one
    # An annotation of the stored frame is named as such, not as any size mismatch.
    xml.write_text(text.replace("<width>128</width>", "<width>80</width>").replace("<height>128</height>",
                                                                                 "<height>64</height>"))
    with pytest.raises(Exception, match=r"image is 64x80 but its annotation says 80x64 \(jaxdet reads images as "
                                        r"they are displayed: its EXIF orientation tag 6"):
        read_voc(str(data), "train", class_names=classes, check_images=True)


def test_predict_out_into_the_input_folder_never_replaces_an_image(trained, shapes_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        shutil.copy(shapes_dir / "JPEGImages" / f"s1_{i:06d}.png", folder)
    before = snapshot(folder)
    status, _, err = run(capsys, "predict", "--workdir", trained, folder, "--out", folder, "--no-progress")
    assert status == 2
    assert_one_paragraph(err, f"would write {folder / 's1_000000.png'}, which is one of this command's inputs",
                         "never replaces a file it did not write", "--out DIR")
    assert snapshot(folder) == before
    # Nor a file of the user's in an input folder that is not an image (its own detections.json).
    from PIL import Image

    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    Image.open(folder / "s1_000000.png").convert("RGB").save(jpegs / "s1_000000.jpg")
    (jpegs / "detections.json").write_text("mine")
    status, _, err = run(capsys, "predict", "--workdir", trained, jpegs, "--out", jpegs, "--no-progress")
    assert status == 2 and (jpegs / "detections.json").read_text() == "mine"
    assert_one_paragraph(err, f"{jpegs / 'detections.json'}, which is a file in the input folder {jpegs}")
    assert not (jpegs / "s1_000000.png").exists()  # refused before anything was written


def test_a_run_s_log_without_checkpoints_is_never_trained_over(run_copy, shapes_dir, capsys):
    shutil.rmtree(run_copy / "checkpoints")
    before = snapshot(run_copy)
    for resume in ((), ("--resume",)):
        status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir",
                             run_copy, "--no-progress", "--no-eval", *resume)
        assert status == 1
        assert_one_paragraph(err, f"{run_copy} holds a run's files (config.json, train_log.jsonl",
                             "logged up to step 4) but no checkpoint",
                             "--resume has nothing to continue from" if resume else "would replace its log",
                             "another --workdir")
        assert snapshot(run_copy) == before


def test_a_second_training_in_a_locked_workdir_is_refused_naming_the_pid(shapes_dir, tmp_path, capsys):
    import subprocess
    import sys

    workdir = tmp_path / "w"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jaxdet import workdir; "
                               f"workdir.lock({str(workdir)!r}); print('locked', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir",
                             workdir, "--no-progress", "--no-eval")
        assert status == 1
        assert_one_paragraph(err, f"{workdir} is in use: another jaxdet process (pid {holder.pid})",
                             "another --workdir")
        assert not (workdir / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # The lock ends with its process, however it ends: nothing is left stuck.
    from jaxdet import workdir as run_files

    run_files.lock(str(workdir))


def test_a_huge_image_is_refused_up_front_naming_it(shapes_dir, tmp_path, capsys):
    from jaxdet.errors import OutOfMemory

    data = copy_data(shapes_dir, tmp_path)
    xml = data / "Annotations" / "s0_000003.xml"
    xml.write_text(xml.read_text().replace("<width>128</width>", "<width>12000</width>")
                   .replace("<height>128</height>", "<height>9000</height>"))
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={data}", "--workdir",
                         tmp_path / "w", "--no-progress", "--config.train.batch_size=2")
    assert status == 2
    assert_one_paragraph(err, f"{data}/JPEGImages/s0_000003.png (12000x9000 pixels)", "108.0 million pixels",
                         "--config.data.min_size=600")
    assert not (tmp_path / "w").exists()
    # Pillow's decompression-bomb warning is not shown: jaxdet checks sizes itself.
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from jaxdet.data import records

        Image.new("L", (10, 10)).save(tmp_path / "big.png")
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, 60
        try:
            assert records.check_image_file(str(tmp_path / "big.png"), height=None, width=None, decode=True)
            Image.MAX_IMAGE_PIXELS = 40  # more than twice: Pillow refuses; the image is named
            with pytest.raises(records.DataError, match=r"big.png: image too large to read"):
                records.check_image_file(str(tmp_path / "big.png"), height=None, width=None, decode=True)
        finally:
            Image.MAX_IMAGE_PIXELS = old
    # Out of memory before any checkpoint: no advice to --resume.
    assert "--resume" not in OutOfMemory(MemoryError("x"), checkpointed=False).message()


def test_list_lines_are_whole_names_with_spaces_or_voc_name_flag_lines(shapes_dir, tmp_path):
    from jaxdet.data import read_voc

    data = copy_data(shapes_dir, tmp_path)
    for suffix, folder in ((".xml", "Annotations"), (".png", "JPEGImages")):
        (data / folder / f"s0_000000{suffix}").rename(data / folder / f"IMG 0003{suffix}")
    xml = data / "Annotations" / "IMG 0003.xml"
    xml.write_text(xml.read_text().replace("s0_000000.png", "IMG 0003.png"))
    lines = (data / "ImageSets" / "Main" / "train.txt").read_text().splitlines()
    lines[0] = "IMG 0003"
    lines[1] += "  -1"  # VOC's per-class lists: a name and a flag
    (data / "ImageSets" / "Main" / "train.txt").write_text("\n".join(lines) + "\n")
    train = read_voc(str(data), "train", class_names=("circle", "square", "triangle"))
    assert [r.source_id for r in train.records[:2]] == ["IMG 0003", lines[1].split()[0]]


def test_an_empty_split_list_is_named_as_empty(shapes_dir, tmp_path, capsys):
    data = copy_data(shapes_dir, tmp_path)
    (data / "ImageSets" / "Main" / "train.txt").write_text("\n")
    for skip in ((), ("--config.data.on_error=skip",)):
        status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={data}", "--workdir",
                             tmp_path / "w", "--no-progress", *skip)
        assert status == 1
        text = assert_one_paragraph(err, f"the split list {data}/ImageSets/Main/train.txt is empty")
        assert "<name>" not in text


def test_coco_images_without_a_size_take_the_file_s(shapes_dir, tmp_path):
    from jaxdet.data import read_coco, read_voc, write_coco

    train = read_voc(str(shapes_dir), "train", class_names=("circle", "square", "triangle"))
    annotations = tmp_path / "instances.json"
    write_coco(train, str(annotations), str(tmp_path / "images"))
    content = json.loads(annotations.read_text())
    for image in content["images"]:
        del image["width"], image["height"]
    annotations.write_text(json.dumps(content))
    read = read_coco(str(annotations), str(tmp_path / "images"))
    assert [(r.height, r.width) for r in read.records] == [(r.height, r.width) for r in train.records]


def test_resume_where_there_is_nothing_to_resume_says_so(tmp_path):
    from jaxdet import workdir as run_files

    for workdir in (tmp_path / "missing", tmp_path):
        with pytest.warns(UserWarning, match=rf"--resume: {workdir} (does not exist|holds no checkpoint), so nothing "
                                             "was resumed: training starts at step 0"):
            run_files.check_start(str(workdir), resume=True, latest=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_files.check_start(str(tmp_path), resume=False, latest=None)


def test_eval_or_predict_on_a_directory_without_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    for command in (("eval",), ("predict", tmp_path / "notes.txt"), ("proposals", "--out", tmp_path / "p.npz")):
        status, _, err = run(capsys, *command, "--workdir", tmp_path, "--no-progress")
        assert status == 2
        assert_one_paragraph(err, f"no trained run in {tmp_path}: it holds no checkpoint")


def test_a_workdir_that_is_a_file_is_one_paragraph(shapes_dir, tmp_path, capsys):
    file = tmp_path / "run.txt"
    file.write_text("mine")
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir", file,
                         "--no-progress")
    assert status == 2
    assert_one_paragraph(err, f"--workdir {file} is a file, not a directory")
    assert file.read_text() == "mine"


@pytest.mark.parametrize("body, phrases", [
    ("def get_config(:\n    pass\n", ("line 1: SyntaxError",)),
    ("import ml_collections\nimport not_a_module_jaxdet\n", ("line 2: ModuleNotFoundError", "not_a_module_jaxdet")),
    ("def get_config():\n    config = 1\n", ("get_config() returned NoneType", "ml_collections.ConfigDict",
                                             "return config")),
    ("def get_config():\n    return {}['x']\n", ("line 2: KeyError", "calling get_config()")),
])
def test_a_broken_config_file_names_its_line_or_what_get_config_must_return(tmp_path, capsys, body, phrases):
    config = tmp_path / "my_config.py"
    config.write_text(body)
    status, _, err = run(capsys, "train", "--config", config, "--workdir", tmp_path / "w", "--no-progress")
    assert status == 2
    assert_one_paragraph(err, f"config file {config}", *phrases)


def test_sigterm_during_training_saves_the_step_reached_and_says_so(shapes_dir, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    workdir = tmp_path / "w"
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxdet", "train", "--config", SMOKE, f"--config.data.root={shapes_dir}",
         "--workdir", str(workdir), "--no-progress", "--no-eval", "--config.train.num_steps=100000",
         "--config.train.checkpoint_every=100000", "--config.train.log_every=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ((workdir / "train_log.jsonl").is_file() and (workdir / "train_log.jsonl").read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    saved = [int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit()]
    assert len(saved) == 1 and saved[0] >= 1
    text = " ".join(err.split())
    assert f"training stopped by SIGTERM at step {saved[0]}: saved a checkpoint of step {saved[0]}" in text
    assert "--resume" in text and "Traceback" not in text
