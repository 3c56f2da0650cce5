"""`jaxdet proposals` end to end on the shapes, in this process: a tiny Faster R-CNN trained a few
steps, its RPN proposals saved for the train and test images, a tiny Fast R-CNN trained and
evaluated on them (`--config.data.proposals=FILE`), and each user error as one paragraph with
nothing written.

Every model is `tiny_shapes:smoke`'s (64x64 images, 16 train and 8 test, 4 steps).
"""

import errno
import json
import os

import jax
import numpy as np
import pytest

from jaxdet import cli
from jaxdet.inference import proposals as inference_proposals
from jaxdet.data import read_voc
from jaxdet.proposals import rpn_proposals
from jaxdet.inference import restore_trained
from jaxdet.data.build import eval_pipeline, load_dataset
from jaxdet.workdir import read_config
from helpers import assert_one_paragraph, run

SMOKE = "tiny_shapes:smoke"
CLASSES = ("circle", "square", "triangle")
POST_NMS = 32  # tiny_shapes:smoke's rpn.test_post_nms

# A tiny Fast R-CNN: tiny_shapes' model without its RPN, on proposals given with the images.
FAST_RCNN_CONFIG = """
from jaxdet.configs import tiny_shapes


def get_config():
    config = tiny_shapes.get_config("smoke")
    config.model.kind = "fast_rcnn"
    config.data.proposals = ""
    config.data.max_proposals = 32
    return config
"""


@pytest.fixture(scope="module")
def shapes_dir(shapes_dir_of):
    return shapes_dir_of(SMOKE)


@pytest.fixture(scope="module")
def rpn_run(trained_run_of):
    return trained_run_of(SMOKE)


@pytest.fixture(scope="module")
def proposals_file(tmp_path_factory, rpn_run):
    out = tmp_path_factory.mktemp("proposals") / "shapes_proposals.npz"
    assert cli.main(["proposals", "--workdir", str(rpn_run), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, shapes_dir, proposals_file):
    config_file = tmp_path_factory.mktemp("config") / "tiny_fast_rcnn.py"
    config_file.write_text(FAST_RCNN_CONFIG)
    workdir = tmp_path_factory.mktemp("fast") / "w"
    status = cli.main(["train", "--config", str(config_file), f"--config.data.root={shapes_dir}",
                       f"--config.data.proposals={proposals_file}", "--workdir", str(workdir), "--no-progress"])
    assert status == 0
    return workdir


def test_the_file_holds_each_images_rpn_proposals(shapes_dir, rpn_run, proposals_file):
    stems = {split: [r.source_id for r in read_voc(str(shapes_dir), split, class_names=CLASSES).records]
             for split in ("train", "test")}
    with np.load(proposals_file) as archive:
        found = {key: archive[key] for key in archive.files}
    assert sorted(found) == sorted(stems["train"] + stems["test"])  # one entry per image, keyed by file stem
    for key, boxes in found.items():
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4, key
        assert 1 <= len(boxes) <= POST_NMS, key
        assert np.all(boxes >= 0) and np.all(boxes <= 64), key  # inside the 64x64 image
        assert np.all(boxes[:, 2:] > boxes[:, :2]), key

    # The first held-out image's proposals are what the RPN and `rpn_proposals` give directly.
    config = read_config(str(rpn_run))
    state = restore_trained(config, str(rpn_run))
    test = load_dataset(config, "test")
    batch = next(iter(eval_pipeline(config, test).epoch()))
    first = int(batch["image_id"][0])

    @jax.jit
    def direct(variables, images, image_hw, scale):
        features = state.model.apply(variables, images, method=state.model.extract)
        rpn = state.model.apply(variables, features, method=state.model.rpn_outputs)
        return rpn_proposals(rpn, anchors=state.model.anchors(features.shape[1:3]), image_hw=image_hw,
                             image_scale=scale, pre_nms=config.rpn.test_pre_nms, post_nms=config.rpn.test_post_nms,
                             nms_iou=config.rpn.nms_iou, min_size=config.rpn.min_proposal_size)

    expected = jax.device_get(direct(state.variables, batch["images"], batch["image_hw"], batch["scale"]))
    assert float(batch["scale"][0]) == 1.0  # the shapes are not resized: input pixels are original pixels
    np.testing.assert_allclose(found[str(test.records[first].source_id)], expected.boxes[0][expected.valid[0]],
                               rtol=1e-5, atol=1e-4)


def test_summary_and_one_split(rpn_run, tmp_path, capsys):
    out = tmp_path / "test_only.npz"
    status, stdout, err = run(capsys, "proposals", "--workdir", rpn_run, "--out", out, "--split", "test",
                              "--no-progress")
    assert status == 0, err
    text = " ".join(stdout.split())
    assert "wrote the RPN proposals of 8 images (test 8)" in text and str(out) in text
    assert f"at most rpn.test_post_nms = {POST_NMS}" in text and "--config.data.proposals=" in text
    with np.load(out) as archive:
        assert len(archive.files) == 8 and all(key.startswith("s1_") for key in archive.files)


def test_fast_rcnn_trains_and_evaluates_on_the_proposals(fast_run):
    config = json.loads((fast_run / "config.json").read_text())
    assert config["model"]["kind"] == "fast_rcnn"
    metrics = json.loads((fast_run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["eval_images"] == 8
    assert 0.0 <= metrics["voc07_map"] <= 1.0
    rows = [json.loads(line) for line in (fast_run / "train_log.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(row["roi_cls_loss"]) for row in rows) and "rpn_cls_loss" not in rows[-1]


def assert_usage_error(status, err, *phrases):
    """Exit status 2 and one paragraph (`test_cli.assert_one_paragraph`) reporting a config or
    command-line error that contains each phrase."""
    assert status == 2
    assert assert_one_paragraph(err, *phrases).startswith("jaxdet: error: config or command-line error:"), err


def test_a_fast_rcnn_run_has_no_rpn(fast_run, tmp_path, capsys):
    out = tmp_path / "p.npz"
    status, _, err = run(capsys, "proposals", "--workdir", fast_run, "--out", out)
    assert_usage_error(status, err, str(fast_run), "model.kind is 'fast_rcnn'", "'faster_rcnn'")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("where", ["missing folder", "folder is a file", "a directory"])
def test_an_output_that_cannot_be_written_is_named(where, rpn_run, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    out, named = {"missing folder": (tmp_path / "nowhere" / "p.npz", f"{tmp_path / 'nowhere'} does not exist"),
                  "folder is a file": (tmp_path / "file" / "p.npz", f"{tmp_path / 'file'} is not a directory"),
                  "a directory": (tmp_path / "dir", f"{tmp_path / 'dir'} is a directory")}[where]
    status, _, err = run(capsys, "proposals", "--workdir", rpn_run, "--out", out)
    assert_usage_error(status, err, named)
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"] and not os.listdir(tmp_path / "dir")


def test_a_folder_that_is_not_writable_is_named(rpn_run, tmp_path, capsys, monkeypatch):
    def refuse(**kwargs):  # what a read-only folder does (root may write anywhere, so simulated)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(inference_proposals.tempfile, "mkstemp", refuse)
    status, _, err = run(capsys, "proposals", "--workdir", rpn_run, "--out", tmp_path / "p.npz")
    assert_usage_error(status, err, f"{tmp_path} is not writable (Permission denied)")
    assert not os.listdir(tmp_path)


def test_another_dataset_in_coco_format(rpn_run, tmp_path, capsys):
    coco = tmp_path / "coco"
    assert cli.main(["make-shapes", "--out", str(coco), "--config", SMOKE, "--format", "coco"]) == 0
    on_coco = ["proposals", "--workdir", rpn_run, "--config.data.dataset=coco", f"--config.data.root={coco}",
               "--no-progress"]
    # Its train and test JSON number their images alike: one file cannot hold both.
    status, _, err = run(capsys, *on_coco, "--out", tmp_path / "both.npz")
    assert_usage_error(status, err, "two images have the source id '0'", "--split train, then --split test")
    assert not (tmp_path / "both.npz").exists()
    status, _, err = run(capsys, *on_coco, "--out", tmp_path / "test.npz", "--split", "test")
    assert status == 0, err
    with np.load(tmp_path / "test.npz") as archive:
        assert sorted(archive.files) == [str(i) for i in range(8)]  # keyed by COCO image id


def test_help(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["proposals", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jaxdet proposals") and "example:" in out and "--split" in out
