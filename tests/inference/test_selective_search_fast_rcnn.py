"""`jaxdet proposals --method selective-search` end to end on the shapes, in this process: no trained
run, the selective search proposals (Uijlings et al. 2013) of every train and test image written in
the precomputed-proposals format, and a tiny Fast R-CNN (Girshick 2015; `tiny_shapes:fast_rcnn_smoke`:
64x64 images, 16 train and 8 test, 4 steps) trained and evaluated on them."""

import contextlib
import io
import json

import numpy as np
import pytest

from jaxdet import cli
from jaxdet.data import read_voc
from helpers import run

FAST_RCNN = "tiny_shapes:fast_rcnn_smoke"
CLASSES = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def shapes_dir(shapes_dir_of):
    return shapes_dir_of("tiny_shapes:smoke")  # the same images as the fast_rcnn_smoke variant's


@pytest.fixture(scope="module")
def proposals_file(tmp_path_factory, shapes_dir):
    out = tmp_path_factory.mktemp("ss") / "selective_search.npz"
    # No --workdir: selective search is the method; the Fast R-CNN config names the data (its
    # data.proposals, the file being made, is not read).
    with contextlib.redirect_stdout(stdout := io.StringIO()):
        assert cli.main(["proposals", "--config", FAST_RCNN, f"--config.data.root={shapes_dir}", "--out", str(out),
                         "--no-progress"]) == 0
    text = " ".join(stdout.getvalue().split())
    assert "wrote the selective search (fast mode) proposals of 24 images (train 16, test 8)" in text, text
    assert "at most --max-proposals = 2000" in text
    return out


def test_the_file_holds_each_images_boxes_in_its_pixels(shapes_dir, proposals_file):
    records = [r for split in ("train", "test")
               for r in read_voc(str(shapes_dir), split, class_names=CLASSES).records]
    with np.load(proposals_file) as archive:
        found = {key: archive[key] for key in archive.files}
    assert sorted(found) == sorted(r.source_id for r in records)
    recalled = total = 0
    for record in records:
        boxes = found[record.source_id]
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and 1 <= len(boxes) <= 2000, record.source_id
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= record.width).all()
        assert (boxes[:, 3] <= record.height).all()
        assert np.array_equal(boxes, np.round(boxes))  # OpenCV's integer pixel rectangles
        for gt in record.boxes:
            x1, y1 = np.maximum(boxes[:, :2], gt[:2]).T
            x2, y2 = np.minimum(boxes[:, 2:], gt[2:]).T
            inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            union = area + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
            recalled += (inter / union).max() >= 0.5
            total += 1
    assert recalled / total >= 0.9, (recalled, total)  # the shapes' objects are found


def test_quality_mode_and_a_cap(shapes_dir, tmp_path, capsys):
    out = tmp_path / "quality.npz"
    status, stdout, err = run(capsys, "proposals", "--method", "selective-search", "--quality", "--max-proposals", 5,
                              "--split", "test", "--config", "tiny_shapes:smoke", f"--config.data.root={shapes_dir}",
                              "--out", out, "--no-progress")
    assert status == 0, err
    assert "selective search (quality mode) proposals of 8 images (test 8)" in " ".join(stdout.split())
    with np.load(out) as archive:
        assert len(archive.files) == 8 and all(1 <= len(archive[key]) <= 5 for key in archive.files)


def test_fast_rcnn_trains_and_evaluates_on_them(shapes_dir, proposals_file, tmp_path, capsys):
    workdir = tmp_path / "fast"
    status, _, err = run(capsys, "train", "--config", FAST_RCNN, f"--config.data.root={shapes_dir}",
                         f"--config.data.proposals={proposals_file}", "--workdir", workdir, "--no-progress")
    assert status == 0, err
    assert json.loads((workdir / "config.json").read_text())["model"]["kind"] == "fast_rcnn"
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["eval_images"] == 8
    assert 0.0 <= metrics["voc07_map"] <= 1.0
    rows = [json.loads(line) for line in (workdir / "train_log.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(row["roi_cls_loss"]) for row in rows) and "rpn_cls_loss" not in rows[-1]


@pytest.mark.parametrize("argv, phrase", [
    (("--method", "rpn"), "--method rpn proposes with a trained Faster R-CNN: give its run's directory"),
    (("--max-proposals", 0), "--max-proposals must be at least 1, got 0"),
])
def test_usage_errors_are_one_paragraph(argv, phrase, shapes_dir, tmp_path, capsys):
    out = tmp_path / "p.npz"
    status, _, err = run(capsys, "proposals", *argv, "--config", "tiny_shapes:smoke",
                         f"--config.data.root={shapes_dir}", "--out", out, "--no-progress")
    assert status == 2 and not out.exists()
    assert phrase in " ".join(err.split()) and "Traceback" not in err
