"""Training the ResNet-FPN Faster R-CNN: fine-tuning torchvision's weights (a .pth written without torch) on
other classes keeps every imported layer, makes new class layers and trains only torchvision's trainable
layers; the RPN objectness loss is the binary cross entropy; the tiny config trains on the shapes set
through the command line (the loss falls, the evaluation runs)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from helpers import run, synthetic_batch, write_torchvision_fpn

from jaxdet.configs import fasterrcnn_resnet50_fpn_coco
from jaxdet.data import with_class_names
from jaxdet.losses import rpn_loss
from jaxdet.models.fpn_detector import model_from_config
from jaxdet.training.state import create_train_state
from jaxdet.training.step import step_key, train_step

SHAPES = ("circle", "square", "triangle")


def test_fine_tuning_keeps_imported_layers_new_class_layers_trainable_layers(tmp_path):
    config = fasterrcnn_resnet50_fpn_coco.get_config("tiny")
    coco_model = model_from_config(config.model)  # 90 classes: the file's predictor
    assert coco_model.num_classes == 90
    imported = jax.device_get(coco_model.init(jax.random.PRNGKey(7), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 1, 4))))
    pth = write_torchvision_fpn(tmp_path / "coco.pth", imported, coco_model)

    config.model.pretrained = str(pth)
    config.model.trainable_layers = 3  # torchvision's default: layer2-layer4
    config = with_class_names(config, SHAPES)
    state = create_train_state(config, jax.random.key(0))
    assert state.model.num_classes == 3
    file_flat = traverse_util.flatten_dict(imported)
    have = traverse_util.flatten_dict(jax.device_get(state.variables))
    assert set(have) == set(file_flat)
    for path, value in have.items():
        if "box_predictor" in path:
            continue
        np.testing.assert_array_equal(value, file_flat[path], err_msg="/".join(path))
    predictor = state.params["box_predictor"]
    assert predictor["cls_score"]["kernel"].shape == (32, 4) and predictor["bbox_pred"]["kernel"].shape == (32, 16)

    batch = {k: jnp.asarray(v) for k, v in synthetic_batch(0, size=64).items()}
    before = jax.device_get(state.params)
    state, metrics = train_step(state, batch, step_key(state))
    assert all(np.isfinite(float(v)) for v in jax.device_get(metrics).values())
    after = traverse_util.flatten_dict(jax.device_get(state.params))
    changed = {path[:2]: not np.array_equal(value, traverse_util.flatten_dict(before)[path])
               for path, value in after.items() if path[0] == "body"}
    frozen = {name for (_, name), moved in changed.items() if not moved}
    trained = {name for (_, name), moved in changed.items() if moved}
    assert {"conv1", "layer1"} <= frozen and not frozen & {"layer2", "layer3", "layer4"}, (frozen, trained)
    assert {"layer2", "layer3", "layer4"} <= trained
    moved = lambda top: any(not np.array_equal(v, traverse_util.flatten_dict(before)[p])  # noqa: E731
                            for p, v in after.items() if p[0] == top)
    assert moved("fpn") and moved("rpn_head") and moved("head") and moved("box_predictor")


def test_rpn_objectness_as_two_class_softmax_is_binary_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 50)).astype(np.float32)
    labels = rng.integers(-1, 2, (2, 50)).astype(np.int32)
    deltas = np.zeros((2, 50, 4), np.float32)
    two = jnp.stack([jnp.zeros_like(logits), logits], axis=-1)
    cls, _ = rpn_loss(logits=two, deltas=deltas, labels=labels, target_deltas=deltas, sigma=3.0,
                      normalize_by="samples")
    x, y = logits[labels >= 0].astype(np.float64), labels[labels >= 0]
    bce = np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))  # torch's BCE-with-logits form
    np.testing.assert_allclose(float(cls), bce, rtol=1e-5)


def test_tiny_fpn_trains_on_shapes_from_the_command_line(tmp_path, capsys):
    workdir = tmp_path / "run"
    status, out, err = run(capsys, "train", "--config", "fasterrcnn_resnet50_fpn_coco:tiny", "--workdir", workdir,
                           "--config.train.num_steps=30", "--config.train.checkpoint_every=30", "--no-progress",
                           "--device", "cpu")
    assert status == 0, err
    losses = [json.loads(line)["loss"] for line in open(workdir / "train_log.jsonl")]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    metrics = json.load(open(workdir / "metrics.json"))
    assert 0.0 <= metrics["voc07_map"] <= 1.0 and metrics["steps"] == 30
