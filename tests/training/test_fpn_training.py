"""Training the ResNet-FPN Faster R-CNN: fine-tuning torchvision's v1 or v2 weights (a .pth written without torch) on
other classes keeps every imported layer, makes new class layers and trains only torchvision's trainable
layers; the RPN objectness loss is the binary cross entropy; the tiny config trains on the shapes set
through the command line (the loss falls, the evaluation runs)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import run, synthetic_batch, write_torchvision_fpn

from jaxdet.configs import fasterrcnn_resnet50_fpn_coco
from jaxdet.data import with_class_names
from jaxdet.losses import rpn_loss
from jaxdet.models.fpn_detector import model_from_config
from jaxdet.training.state import create_train_state
from jaxdet.training.step import step_key, train_step

SHAPES = ("circle", "square", "triangle")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fine_tuning_keeps_imported_layers_new_class_layers_trainable_layers(tmp_path, version):
    config = fasterrcnn_resnet50_fpn_coco.get_config("tiny", version=version)
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


# Run in a fresh process with 2 simulated CPU devices (this one may have started JAX with one).
_DATA_PARALLEL = '''
import json, sys
import jax, numpy as np
from jaxdet.configs import load_config
from jaxdet.data import with_class_names
from jaxdet.devices import make_mesh, replicate, shard_batch
from jaxdet.training import create_train_state, step_key, train_step
from jaxdet.training.parallel import make_parallel_train_step

config = with_class_names(load_config("fasterrcnn_resnet50_fpn_coco:tiny"), ("circle", "square", "triangle"))
n, hw, slots = 4, (128, 192), config.data.max_boxes
boxes = np.zeros((n, slots, 4), np.float32)
boxes[:, 0], boxes[:, 1] = [20, 20, 80, 90], [100, 30, 170, 110]
valid = np.arange(slots)[None].repeat(n, 0) < 2
batch = dict(images=np.random.default_rng(0).normal(size=(n, *hw, 3)).astype(np.float32), boxes=boxes,
             labels=np.ones((n, slots), np.int32), valid=valid, image_hw=np.array([hw] * n, np.int32),
             scale=np.ones(n, np.float32))
single = create_train_state(config, jax.random.PRNGKey(0))
key = step_key(single)
split = replicate(create_train_state(config, jax.random.PRNGKey(0)), make_mesh(2))
single, single_metrics = train_step(single, batch, key)
split, split_metrics = make_parallel_train_step(make_mesh(2))(split, shard_batch(batch, make_mesh(2)), key)
difference = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                 for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(split.params)))
json.dump({"loss": [float(single_metrics["loss"]), float(split_metrics["loss"])], "params": difference,
           "devices": jax.device_count()}, sys.stdout)
'''


def test_the_fpn_step_split_over_two_devices_equals_the_single_device_step():
    # The same global batch of 4 on 1 device and split 2 x 2: the same loss and update (float32 sums
    # in another order: to a few ulps).
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _DATA_PARALLEL], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["devices"] == 2
    np.testing.assert_allclose(found["loss"][1], found["loss"][0], rtol=1e-5)
    assert found["params"] < 1e-5, found
