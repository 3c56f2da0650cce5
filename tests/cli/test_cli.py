"""The `jaxdet` command end to end, in this process (so the compiled programs are shared):
make-shapes, train a few steps, resume, eval, predict on two images, the demo as the Makefile
runs it with a smaller step count, --help of each command, and each user error as one
paragraph (never a traceback).

Every run uses `shapes_demo:smoke` (the demo's model and image size, a handful of steps on 16
images): one training program and one detection program are compiled for the whole module.
"""

import json
import math
import os
import re
import shlex
import shutil
import struct
import subprocess

import jax
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxdet import cli, overrides, reporting
from jaxdet.configs.base import get_config
from jaxdet.data import dataset_to_coco, read_voc
from jaxdet.training import loop
from jaxdet.inference import restore_trained
from helpers import REPO, assert_one_paragraph, run

SMOKE = "shapes_demo:smoke"


def read_scalars(event_dir: str) -> dict:
    """tag -> [(step, value)] from TensorBoard event files, decoded from the TFRecord framing."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    for name in os.listdir(event_dir):
        with open(os.path.join(event_dir, name), "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.fixture(scope="module")
def shapes_dir(shapes_dir_of):
    return shapes_dir_of(SMOKE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_dir):
    workdir = tmp_path_factory.mktemp("run") / "w"
    status = cli.main(["train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir", str(workdir),
                       "--no-progress"])
    assert status == 0
    return workdir


def test_make_shapes_writes_voc_the_reader_takes(shapes_dir):
    train = read_voc(str(shapes_dir), "train", class_names=("circle", "square", "triangle"))
    test = read_voc(str(shapes_dir), "test", class_names=("circle", "square", "triangle"))
    assert (len(train), len(test)) == (16, 8)  # shapes_demo:smoke's num_train, num_test
    for record in train.records[:3] + test.records[:3]:
        image = np.asarray(Image.open(record.path))
        assert image.shape == (128, 128, 3)
        assert len(record.labels) >= 1 and np.all(record.boxes[:, 2:] > record.boxes[:, :2])
    # Held-out images come from another seed: no image is in both sets.
    assert not {r.path for r in train.records} & {r.path for r in test.records}


@pytest.mark.parametrize("format", ["voc", "coco"])
def test_make_shapes_prints_a_train_command_that_runs(format, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the printed command's --workdir is relative
    out_dir = tmp_path / "my shapes"  # a space: the command must quote it
    status, out, err = run(capsys, "make-shapes", "--out", out_dir, "--config", SMOKE, "--format", format,
                           "--config.data.num_test=4")
    assert status == 0, err
    lines = [line for line in out.splitlines() if line.startswith("train on them with: ")]
    assert len(lines) == 1, out
    command = lines[0][len("train on them with: "):]
    # Pasted into a shell, it is one valid command line (no stray notes in parentheses).
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0, command
    words = shlex.split(command)
    assert words[:2] == ["jaxdet", "train"] and "--config.data.num_test=4" not in words, command
    status, out, err = run(capsys, *words[1:], "--config.train.num_steps=1", "--no-eval", "--no-progress")
    assert status == 0, err
    workdir = tmp_path / words[words.index("--workdir") + 1]
    assert (workdir / "checkpoints" / "1").is_dir()
    assert json.loads((workdir / "class_names.json").read_text()) == ["circle", "square", "triangle"]
    assert json.loads((workdir / "config.json").read_text())["data"]["dataset"] == ("shapes" if format == "voc"
                                                                                     else "coco")


def test_train_writes_what_it_promises(trained):
    files = set(os.listdir(trained))
    for name in ("metrics.json", "pr_curves.png", "detections.png", "loss_curve.png", "train_log.jsonl",
                 "detections_coco.json", "config.json", "class_names.json", "checkpoints", "tensorboard"):
        assert name in files, name
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("voc07_map", "voc_map", "coco_ap", "coco_ap50", "train_seconds", "train_images_per_second"):
        assert isinstance(metrics[key], float), key
    assert 0.0 <= metrics["voc07_map"] <= 1.0 and -1.0 <= metrics["coco_ap"] <= 1.0
    assert metrics["steps"] == 4 and metrics["checkpoint_step"] == 4 and metrics["eval_images"] == 8
    assert metrics["train_seconds"] >= metrics["first_step_seconds"] > 0
    # Checkpoints every 2 steps (smoke) and at the end.
    assert sorted(int(d) for d in os.listdir(trained / "checkpoints") if d.isdigit()) == [2, 4]
    rows = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(math.isfinite(r["loss"]) and r["learning_rate"] > 0 for r in rows)
    scalars = read_scalars(trained / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == [2, 4]
    assert scalars["train/loss"][0][1] == pytest.approx(rows[0]["loss"], rel=1e-6)
    for name in ("pr_curves.png", "detections.png", "loss_curve.png"):
        with Image.open(trained / name) as picture:
            assert picture.format == "PNG" and min(picture.size) >= 200


def strict_json(text: str):
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON (JSON.parse, jq reject them)."""
    def refuse(constant):
        raise AssertionError(f"{constant} in metrics.json: not JSON")
    return json.loads(text, parse_constant=refuse)


def test_metrics_json_is_strict_json_with_null_for_what_is_not_a_number(tmp_path):
    from jaxdet import workdir

    (tmp_path / "metrics.json").write_text('{"train_images_per_second": NaN, "steps": 1}')  # an older file
    returned = workdir.update_metrics_file(str(tmp_path), {
        "voc07_map": 0.5, "coco_ap": np.float64(0.25), "eval_seconds": float("inf"), "first": np.float32("nan"),
        "per_class_ap": {"circle": 1.0, "square": float("nan")}, "devices": ("cpu:0",)})
    written = strict_json((tmp_path / "metrics.json").read_text())
    assert written == returned == {
        "train_images_per_second": None, "steps": 1, "voc07_map": 0.5, "coco_ap": 0.25, "eval_seconds": None,
        "first": None, "per_class_ap": {"circle": 1.0, "square": None}, "devices": ["cpu:0"]}


def test_a_one_step_run_has_no_training_rate_and_says_so(shapes_dir, tmp_path, capsys):
    # One step is all compilation: there is no rate after it (NaN inside, null in metrics.json).
    workdir = tmp_path / "w"
    status, out, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir",
                           workdir, "--config.train.num_steps=1", "--no-progress")
    assert status == 0, err
    metrics = strict_json((workdir / "metrics.json").read_text())
    assert metrics["train_images_per_second"] is None and metrics["steps"] == 1
    assert isinstance(metrics["voc07_map"], float)
    assert re.search(r"\| training images/s +\| +n/a \|", out), out


def test_trains_and_evaluates_with_roi_align_on_the_shapes_set(shapes_dir, tmp_path, capsys):
    workdir = tmp_path / "align"
    status, out, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir",
                           workdir, "--config.model.roi_op=align", "--config.model.roi_sampling_ratio=0",
                           "--no-progress")
    assert status == 0, err
    saved = json.loads((workdir / "config.json").read_text())["model"]
    assert (saved["roi_op"], saved["roi_sampling_ratio"]) == ("align", 0)
    metrics = strict_json((workdir / "metrics.json").read_text())
    assert metrics["steps"] == 4 and isinstance(metrics["voc07_map"], float)


def test_a_run_saved_before_a_field_existed_reads_it_from_the_base_config(trained, tmp_path, capsys):
    # config.json of a run started before model.roi_op existed (RoI pooling then): eval reads the
    # base config's values, so it scores as the same run saved with those values written out.
    def evaluated_copy(name, edit):
        copy = tmp_path / name
        shutil.copytree(trained, copy)
        saved = json.loads((copy / "config.json").read_text())
        edit(saved["model"])
        (copy / "config.json").write_text(json.dumps(saved))
        status, _, err = run(capsys, "eval", "--workdir", copy, "--no-progress")
        assert status == 0, err
        return json.loads((copy / "metrics.json").read_text())["voc07_map"]

    base_model = get_config().model
    written = evaluated_copy("written", lambda m: m.update(roi_op=base_model.roi_op, roi_aligned=base_model.roi_aligned))
    assert evaluated_copy("old", lambda m: [m.pop("roi_op"), m.pop("roi_aligned")]) == written


def test_coco_ap_matches_pycocotools_on_the_written_results(trained, shapes_dir):
    metrics = json.loads((trained / "metrics.json").read_text())
    results = json.loads((trained / "detections_coco.json").read_text())
    test = read_voc(str(shapes_dir), "test", class_names=("circle", "square", "triangle"))
    gt = COCO()
    gt.dataset = dataset_to_coco(test)
    gt.createIndex()
    evaluator = COCOeval(gt, gt.loadRes(results) if results else COCO(), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert metrics["coco_ap"] == pytest.approx(evaluator.stats[0], abs=1e-9)
    assert metrics["coco_ap50"] == pytest.approx(evaluator.stats[1], abs=1e-9)


def test_eval_of_the_checkpoint_reproduces_the_final_evaluation(trained, capsys):
    before = json.loads((trained / "metrics.json").read_text())
    status, out, _ = run(capsys, "eval", "--workdir", trained, "--no-progress")
    assert status == 0
    after = json.loads((trained / "metrics.json").read_text())
    # Restored from the checkpoint with the run's own config.json: the very same detections.
    for key in ("voc07_map", "voc_map", "coco_ap", "coco_ap50"):
        assert after[key] == pytest.approx(before[key], abs=1e-12), key
    assert after["train_seconds"] == before["train_seconds"]  # training figures are kept
    assert "VOC07 mAP@0.5" in out and str(trained / "metrics.json") in out


def test_eval_of_a_missing_run_or_step_says_which(trained, tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    for command in (("eval",), ("predict", trained / "loss_curve.png")):
        status, _, err = run(capsys, *command, "--workdir", missing, "--no-progress")
        assert status == 2
        text = assert_one_paragraph(err, f"--workdir {missing} does not exist", "jaxdet train --workdir")
        assert "config.json" not in text.split("does not exist")[0]
    assert not missing.exists()
    steps = sorted(int(d) for d in os.listdir(trained / "checkpoints") if d.isdigit())
    status, _, err = run(capsys, "eval", "--workdir", trained, "--step", 99, "--no-progress")
    assert status == 1
    assert_one_paragraph(err, "no checkpoint of step 99", f"of steps {', '.join(map(str, steps))}",
                         "train.keep_checkpoints", "--step")


def test_predict_two_images_matches_the_evaluation_detections(trained, shapes_dir, tmp_path, capsys):
    images = [shapes_dir / "JPEGImages" / f"s1_{i:06d}.png" for i in range(2)]  # held-out images 0 and 1
    status, out, _ = run(capsys, "predict", "--workdir", trained, *images, "--out", tmp_path,
                         "--score-threshold", "0.05", "--no-progress")
    assert status == 0 and str(tmp_path) in out
    found = json.loads((tmp_path / "detections.json").read_text())
    assert [e["file"] for e in found["images"]] == [str(p) for p in images]
    coco = json.loads((trained / "detections_coco.json").read_text())
    for image_id, entry in enumerate(found["images"]):
        with Image.open(tmp_path / f"s1_{image_id:06d}.png") as picture:
            assert picture.size == (128, 128)
        ours = sorted((d["score"], d["label"], *d["box"]) for d in entry["detections"])
        theirs = sorted((r["score"], r["category_id"] - 1, r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],
                         r["bbox"][1] + r["bbox"][3]) for r in coco if r["image_id"] == image_id)
        assert len(ours) == len(theirs) > 0
        np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-5, atol=1e-3)
        for d in entry["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 128 and 0 <= y1 <= y2 <= 128
            assert d["class"] == ("circle", "square", "triangle")[d["label"]]


def test_resume_continues_and_a_second_run_needs_resume(trained, capsys):
    status, _, err = run(capsys, "train", "--workdir", trained, "--config.train.num_steps=6", "--no-eval",
                         "--no-progress")
    assert status == 1
    assert_one_paragraph(err, "already holds the checkpoints", "step 4", "--resume")
    status, out, _ = run(capsys, "train", "--workdir", trained, "--config.train.num_steps=6", "--no-eval",
                         "--resume", "--no-progress")
    assert status == 0 and "step 6" in out
    assert 6 in [int(d) for d in os.listdir(trained / "checkpoints") if d.isdigit()]
    rows = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]


def test_a_resumed_run_continues_the_same_loss_curve(trained, shapes_dir, tmp_path, capsys):
    # After the test above, `trained` went 4 steps, stopped, and resumed to 6. A run of 6 steps
    # in one go must log the same losses and end with the same parameters.
    if not (trained / "checkpoints" / "6").is_dir():
        status, _, _ = run(capsys, "train", "--workdir", trained, "--config.train.num_steps=6", "--no-eval",
                           "--resume", "--no-progress")
        assert status == 0
    straight = tmp_path / "straight"
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir",
                         straight, "--config.train.num_steps=6", "--no-eval", "--no-progress")
    assert status == 0, err
    logs = [[json.loads(line) for line in (w / "train_log.jsonl").read_text().splitlines()] for w in (trained, straight)]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [2, 4, 6]
    for resumed, one_go in zip(*logs):
        assert resumed["loss"] == one_go["loss"], (resumed, one_go)
    config = overrides.load_config(SMOKE)
    config.data.root = str(shapes_dir)
    params = [jax.tree.leaves(restore_trained(config, str(w), step=6).params) for w in (trained, straight)]
    for a, b in zip(*params):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_demo_as_the_makefile_runs_it(tmp_path, capsys):
    with open(os.path.join(REPO, "Makefile")) as f:
        recipe = re.search(r"^demo:.*\n\t(.+)$", f.read(), re.MULTILINE).group(1)
    words = shlex.split(recipe)
    assert words[:3] == ["$(PY)", "-m", "jaxdet"], recipe  # the README's first command runs this CLI
    arguments = [w for w in words[3:] if not w.startswith("$(")]  # make variables (extra flags) are empty here
    assert arguments[:1] == ["demo"], recipe
    workdir = tmp_path / "demo"
    status, out, _ = run(capsys, *arguments, "--config", SMOKE, "--workdir", workdir, "--no-progress")
    assert status == 0
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert {"voc07_map", "coco_ap", "train_seconds"} <= set(metrics)
    for name in ("metrics.json", "detections.png", "pr_curves.png", "loss_curve.png"):
        assert str(workdir / name) in out  # the demo says where each result is
        assert (workdir / name).is_file()
    assert len((workdir / "data" / "ImageSets" / "Main" / "test.txt").read_text().split()) == 8
    assert "VOC07 mAP@0.5" in out and "COCO AP" in out


@pytest.mark.parametrize("command", ["demo", "train", "eval", "predict", "make-shapes"])
def test_help_of_each_command(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: jaxdet {command}")
    assert "example:" in out and "--config" in out


def test_top_level_help_starts_with_the_demo(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "python -m jaxdet demo" in out
    for command in ("demo", "train", "eval", "predict", "make-shapes"):
        assert re.search(rf"^\s+{command}\b", out, re.MULTILINE), command


def test_config_typo_names_the_key_and_close_matches(tmp_path, capsys):
    status, _, err = run(capsys, "train", "--config", SMOKE, "--config.optimizer.lerning_rate=1e-3",
                         "--workdir", tmp_path)
    assert status == 2
    assert_one_paragraph(err, "unknown config key 'optimizer.lerning_rate'", "'optimizer.learning_rate'")
    status, _, err = run(capsys, "train", "--config", SMOKE, "--config.train.num_stepz", "5", "--workdir", tmp_path)
    assert status == 2
    assert_one_paragraph(err, "'train.num_stepz'", "'train.num_steps'")
    status, _, err = run(capsys, "train", "--config", SMOKE, "--config.train.num_steps=many", "--workdir", tmp_path)
    assert status == 2
    assert_one_paragraph(err, "--config.train.num_steps=many", "int")
    status, _, err = run(capsys, "train", "--config", "no_such_config.py", "--workdir", tmp_path)
    assert status == 2
    assert_one_paragraph(err, "'no_such_config.py' not found", "tiny_shapes")
    assert not os.listdir(tmp_path)  # nothing written by a run that never started


@pytest.mark.parametrize("command, override", [
    ("train", "train.num_steps=-1"), ("train", "train.num_steps=0"), ("train", "train.batch_size=0"),
    ("train", "train.log_every=0"), ("train", "train.checkpoint_every=-2"), ("demo", "train.num_steps=0"),
])
def test_counts_below_one_are_rejected_naming_the_key(command, override, shapes_dir, tmp_path, capsys):
    key, value = override.split("=")
    workdir = tmp_path / "w"
    data = [] if command == "demo" else [f"--config.data.root={shapes_dir}"]
    status, out, err = run(capsys, command, "--config", SMOKE, *data, f"--config.{override}", "--workdir", workdir,
                           "--no-progress")
    assert status == 2, out
    assert_one_paragraph(err, f"{key} must be a whole number of at least 1, got {value}", f"--config.{key}=N")
    assert not workdir.exists()  # refused before anything was written
    config = overrides.load_config(SMOKE)
    overrides.apply_override(config, key, value)
    with pytest.raises(loop.InvalidSetting, match=key):
        loop.train(config, str(workdir))


@pytest.mark.parametrize("text, current, expected", [
    ("3e-4", 1e-3, 3e-4), ("7", 1.0, 7.0), ("12", 5, 12), ("false", True, False), ("1", False, True),
    ("4,8,16", (2, 4, 8), (4, 8, 16)), ("(0.5, 1.0)", (1.0,), (0.5, 1.0)), ("", (1500,), ()),
    ("circle,ring", ("circle",), ("circle", "ring")), ("/data/VOC", "", "/data/VOC"), ("600", None, 600),
])
def test_overrides_are_typed_like_the_field(text, current, expected):
    import ml_collections

    config = ml_collections.ConfigDict({"section": {"field": current}})
    overrides.apply_override(config, "section.field", text)
    assert config.section.field == expected and type(config.section.field) is type(expected)


def test_dataset_path_missing(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={missing}",
                         "--workdir", tmp_path / "w", "--no-progress")
    assert status == 1
    assert_one_paragraph(err, "shapes dataset was not found", str(missing), "--config.data.root", "make-shapes")
    status, _, err = run(capsys, "train", "--config", "vgg16_voc07", "--workdir", tmp_path / "w", "--no-progress")
    assert status == 1
    assert_one_paragraph(err, "voc dataset needs a location", "--config.data.root")


@pytest.mark.skipif(any(d.platform == "gpu" for d in jax.devices()), reason="a GPU is present")
def test_no_gpu_when_one_is_asked_for(tmp_path, shapes_dir, capsys):
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}",
                         "--workdir", tmp_path, "--device", "gpu")
    assert status == 1
    assert_one_paragraph(err, "no GPU found", "--device gpu", "--device cpu")
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}",
                         "--workdir", tmp_path, "--num-devices", len(jax.devices()) + 1)
    assert status == 1
    assert_one_paragraph(err, "--num-devices", "xla_force_host_platform_device_count")


def test_out_of_memory(tmp_path, shapes_dir, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        # What XLA raises when an allocation fails on the device.
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                                         "17179869184 bytes.")

    monkeypatch.setattr(loop, "train_step", exhausted)
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}",
                         "--workdir", tmp_path, "--no-progress")
    assert status == 1
    assert_one_paragraph(err, "out of memory", "--config.train.batch_size", "bfloat16", "17179869184 bytes")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, shapes_dir, capsys):
    # The learning rate turns NaN at step 2 (decay_factor ** 0 is 1 before, NaN after): two good
    # updates, then a NaN update; checkpoints every step.
    workdir = tmp_path / "w"
    status, _, err = run(capsys, "train", "--config", SMOKE, f"--config.data.root={shapes_dir}", "--workdir", workdir,
                         "--config.optimizer.decay_steps=2", "--config.optimizer.decay_factor=nan",
                         "--config.train.num_steps=6", "--config.train.checkpoint_every=1", "--no-progress")
    assert status == 3
    text = assert_one_paragraph(err, "stopped at step 3", "NaN or infinite", "last finite losses, at step 2",
                                "checkpoint, step 2", "--resume", "learning rate")
    losses = dict(re.findall(r"(\w*loss)=([^,\s]+)", text.split("last finite losses")[1].split("checkpoint")[0]))
    assert {"loss", "rpn_cls_loss", "roi_cls_loss"} <= set(losses)
    assert all(math.isfinite(float(v.rstrip("."))) for v in losses.values())
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [1, 2]
    config = overrides.load_config(SMOKE)
    state = restore_trained(config, str(workdir))
    assert int(state.step) == 2
    assert all(bool(np.all(np.isfinite(leaf))) for leaf in jax.tree.leaves(state.params))


def test_bad_images_stop_with_their_name_or_are_skipped_by_the_policy(tmp_path, shapes_dir, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    train = read_voc(str(data), "train", class_names=("circle", "square", "triangle"))
    corrupt, malformed = train.records[0].path, train.records[1].path
    with open(corrupt, "wb") as f:
        f.write(b"not a PNG")
    xml = os.path.join(data, "Annotations", os.path.splitext(os.path.basename(malformed))[0] + ".xml")
    with open(xml, "w") as f:
        f.write("<annotation><object>")
    common = ("train", "--config", SMOKE, f"--config.data.root={data}", "--no-progress", "--no-eval",
              "--config.train.num_steps=2")
    # Stop (the default): the malformed XML, named, with the way to skip.
    status, _, err = run(capsys, *common, "--workdir", tmp_path / "a")
    assert status == 1
    assert_one_paragraph(err, "bad data", os.path.basename(xml), "--config.data.on_error=skip",
                         "--config.data.check_images=true")
    # Skip, images decoded first: both bad images are dropped, named and counted, and training runs.
    with pytest.warns(UserWarning) as caught:
        status, _, err = run(capsys, *common, "--workdir", tmp_path / "b", "--config.data.on_error=skip",
                             "--config.data.check_images=true")
    assert status == 0, err
    warned = " ".join(str(w.message) for w in caught)
    assert os.path.basename(corrupt) in warned and os.path.basename(xml) in warned
    assert "skipped 2 of 16 images" in warned


def test_frozen_stages_without_pretrained_weights_warn():
    import warnings

    import ml_collections

    def warned(**model):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loop._warn_if_frozen_without_weights(ml_collections.ConfigDict(model))
        return [str(w.message) for w in caught]

    (message,) = warned(frozen_stages=2, pretrained="")
    # The library names the config key; the command shows it as the flag that sets it.
    assert "frozen_stages=2" in message and "config.model.pretrained=FILE" in message
    shown = reporting.format_warning(message, UserWarning, "loop.py", 1)
    assert "frozen_stages=2" in shown and "--config.model.pretrained=FILE" in shown
    assert warned(frozen_stages=2, pretrained="vgg16.pth") == []
    assert warned(frozen_stages=0, pretrained="") == []
    # The paper's recipe without weights is the case this is for.
    assert warned(**overrides.load_config("vgg16_voc07").model.to_dict())


def test_resuming_below_the_runs_step_says_there_is_nothing_to_train(trained, capsys):
    status, _, err = run(capsys, "train", "--workdir", trained, "--config.train.num_steps=1", "--resume",
                         "--no-progress")
    assert status == 2
    assert_one_paragraph(err, "train.num_steps=1", "already at step", "nothing to train", "jaxdet eval --workdir")
