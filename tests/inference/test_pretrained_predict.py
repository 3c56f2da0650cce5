"""`jaxdet predict` with torchvision's detection weights and no training run: a .pth written without torch
(references/pth_writer) in torchvision's names and layouts, a real photograph (matplotlib's sample
photograph of Grace Hopper, 512x600), the pictures and detections.json labelled with COCO's names in
torchvision's order; against the model run by hand on the canvas torchvision would make."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_one_paragraph, run, write_torchvision_fpn
from PIL import Image

from jaxdet.configs import fasterrcnn_resnet50_fpn_coco
from jaxdet.models import fpn_transform
from jaxdet.models.fpn_detector import model_from_config, predict, settings_from_config

CONFIG = "fasterrcnn_resnet50_fpn_coco:tiny"


def photograph():
    from matplotlib import cbook

    return cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(.pth path, model, variables): the tiny config's v1 model with spread-out class scores."""
    config = fasterrcnn_resnet50_fpn_coco.get_config("tiny")
    model = model_from_config(config.model)
    variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 1, 4)))
    variables = jax.tree_util.tree_map(np.asarray, jax.device_get(variables))
    kernel = variables["params"]["box_predictor"]["cls_score"]["kernel"]
    variables["params"]["box_predictor"]["cls_score"]["kernel"] = np.random.default_rng(4).normal(
        0, 1, kernel.shape).astype(np.float32)
    path = tmp_path_factory.mktemp("weights") / "tiny_fpn.pth"
    write_torchvision_fpn(path, variables, model)
    return str(path), model, variables


def test_predict_a_photograph_with_imported_weights_and_no_run(weights, tmp_path, capsys):
    pth, model, variables = weights
    out = tmp_path / "out"
    status, stdout, err = run(capsys, "predict", "--config", CONFIG, f"--config.model.pretrained={pth}",
                              "--out", out, "--score-threshold", "0.0", "--no-progress", "--device", "cpu",
                              photograph())
    assert status == 0, err
    found = json.load(open(out / "detections.json"))
    (entry,) = found["images"]
    assert (entry["height"], entry["width"]) == (600, 512)
    assert os.path.isfile(entry["picture"]) and Image.open(entry["picture"]).size == (512, 600)

    # By hand: torchvision's resize (scale min(128 / 512, 192 / 600) = 1 / 4: 150 x 128) on its canvas,
    # the next multiples of 32 (160 x 128), then boxes x (original / resized) per axis.
    image = np.asarray(Image.open(photograph()).convert("RGB"))
    batch, image_hw = fpn_transform.transform_batch([image], min_size=128, max_size=192)
    assert batch.shape == (1, 160, 128, 3) and image_hw.tolist() == [[150, 128]]
    config = fasterrcnn_resnet50_fpn_coco.get_config("tiny")
    want = jax.device_get(predict(model, variables, jnp.asarray(batch), jnp.asarray(image_hw),
                                  settings=settings_from_config(config)).detections)
    keep = want.valid[0]
    assert keep.sum() > 0 and len(entry["detections"]) == keep.sum()
    ratio = np.array([512 / 128, 600 / 150] * 2, np.float32)
    got_boxes = np.array([d["box"] for d in entry["detections"]])
    np.testing.assert_allclose(got_boxes, want.boxes[0][keep] * ratio, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose([d["score"] for d in entry["detections"]], want.scores[0][keep], rtol=1e-5)
    names = fasterrcnn_resnet50_fpn_coco.COCO_CATEGORIES_TORCHVISION
    assert [d["label"] for d in entry["detections"]] == want.labels[0][keep].tolist()
    assert [d["class"] for d in entry["detections"]] == [names[k] for k in want.labels[0][keep]]
    assert names[0] == "person" and names[11] == "N/A" and names[-1] == "toothbrush"  # torchvision's ids 1, 12, 90


def test_predict_without_run_or_weights_says_what_to_give(tmp_path, capsys):
    status, _, err = run(capsys, "predict", "--out", tmp_path, photograph())
    assert status != 0
    assert_one_paragraph(err, "--workdir DIR", "--config.model.pretrained=FILE.pth")
    status, _, err = run(capsys, "predict", "--config", CONFIG, "--out", tmp_path, photograph())
    assert status != 0
    assert_one_paragraph(err, "--workdir DIR", "--config.model.pretrained=FILE.pth")


def test_predict_weights_without_out_asks_for_it(weights, capsys):
    status, _, err = run(capsys, "predict", "--config", CONFIG, f"--config.model.pretrained={weights[0]}",
                         photograph())
    assert status != 0
    assert_one_paragraph(err, "--out DIR")
