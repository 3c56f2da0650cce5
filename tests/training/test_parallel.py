"""Data parallelism on 4 simulated CPU devices (issue 7).

The checks need JAX started with 4 host devices, which this pytest process may already have
started with one: they run once in a subprocess (`_run_simulated`, this file run as a script
with XLA_FLAGS=--xla_force_host_platform_device_count=4), which writes what it computed (the
parameters before and after one step, the metrics, the compiled programs' text, restored
checkpoints); the tests below judge those results.

References: the single-device step for the data-parallel one (the same global batch must give
the same loss and gradient), and the unpartitioned op for the partitioned RoI pooling.
"""

import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this file also runs as a script
NUM_DEVICES = 4
GLOBAL_BATCH = 8
# SGD with learning rate 1, no clipping, no decay: the first update is exactly minus the gradient
# (the momentum trace starts at zero), so params_before - params_after is the step's gradient.
OPTIMIZER = dict(name="sgd", learning_rate=1.0, momentum=0.9, weight_decay=0.0, clip_norm=0.0,
                 warmup_steps=0, decay_steps=())
TRAIN_KEYS = ("images", "boxes", "labels", "valid", "image_hw", "scale")  # what a Faster R-CNN step reads
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def _flat(tree) -> np.ndarray:
    import jax

    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(jax.device_get(tree))])


def _weights():
    """The fixed cotangent-maker of the op checks: loss = sum(pooled * weights), pooled [4, 3, 2, 2, 8]."""
    return np.random.default_rng(3).standard_normal((NUM_DEVICES, 3, 2, 2, 8)).astype(np.float32)


def _run_simulated(out_dir: str) -> None:
    """The 4-device computations; everything the tests judge goes to `out_dir`."""
    import jax
    import jax.numpy as jnp

    import xla_ops
    from jaxdet.overrides import load_config
    from jaxdet.training import (checkpoint_manager, create_train_state, restore_checkpoint, save_checkpoint,
                                 step_key, train_step)
    from jaxdet.data.build import load_dataset, train_pipeline
    from jaxdet.devices import batch_layout, make_mesh, replicate, shard_batch, split_batch
    from jaxdet.training.parallel import make_parallel_train_step

    assert jax.device_count() == NUM_DEVICES, jax.devices()
    results = {}
    texts = {}

    config = load_config("tiny_shapes:smoke")
    config.optimizer.update(OPTIMIZER)
    config.train.batch_size = GLOBAL_BATCH
    state = create_train_state(config, jax.random.key(0))
    batch = train_pipeline(config, load_dataset(config, "train")).build_batch(0)
    batch = {k: batch[k] for k in TRAIN_KEYS}
    key = step_key(state)
    arrays = {"params_before": _flat(state.params)}

    mesh = make_mesh()
    results["layout"] = str(batch_layout(GLOBAL_BATCH, mesh))
    results["mesh_of_3"] = make_mesh(num_devices=3).devices.size

    for name, bad in (("batch_layout", lambda: batch_layout(6, mesh)),
                      ("shard_batch", lambda: shard_batch({"images": np.zeros((6, 2))}, mesh)),
                      ("make_mesh", lambda: make_mesh(num_devices=NUM_DEVICES + 1))):
        try:
            bad()
            results[f"{name}_error"] = None
        except ValueError as e:
            results[f"{name}_error"] = str(e)

    # What cannot be split runs unpartitioned, with a warning: [K, 5] rois (global batch
    # indices) and a batch of 6 over 4 devices. Both must still pool what the op pools.
    features6 = jax.random.normal(jax.random.key(4), (6, 5, 5, 3))
    boxes6 = jnp.tile(jnp.array([[[0.0, 0.0, 40.0, 60.0], [16.0, 8.0, 70.0, 70.0]]]), (6, 1, 1))
    rows6 = jnp.concatenate([jnp.repeat(jnp.arange(6.0), 2)[:, None], boxes6.reshape(-1, 4)], 1)
    for name, rois in (("uneven", boxes6), ("k5", rows6)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                out = jax.jit(lambda f, r: xla_ops.roi_pool(f, r, (2, 2)))(features6, rois)
        results[f"unpartitioned_{name}_warnings"] = [str(w.message) for w in caught]
        arrays[f"unpartitioned_{name}"] = np.asarray(out).reshape(12, 2, 2, 3)
    arrays["unpartitioned_reference"] = np.asarray(xla_ops.roi_pool(features6, rows6, (2, 2), impl="reference"))

    # The detector's own code, as `jaxdet.training` runs it on a mesh.
    step = make_parallel_train_step(mesh)
    sharded_batch = shard_batch(batch, mesh)
    results["batch_devices"] = len(sharded_batch["images"].sharding.device_set)
    results["batch_shard_rows"] = sharded_batch["images"].addressable_shards[0].data.shape[0]
    compiled = step.lower(replicate(state, mesh), sharded_batch, key).compile()
    texts["step_hlo"] = compiled.as_text()
    # A copy: the step donates its state, and `replicate` may alias `state` on device 0.
    state4, metrics4 = compiled(replicate(jax.tree.map(jnp.copy, state), mesh), sharded_batch,
                                replicate(key, mesh))
    state1, metrics1 = train_step(state, batch, key)  # the reference: one device, the same batch
    arrays["params_after_4"] = _flat(state4.params)
    arrays["params_after_1"] = _flat(state1.params)
    results["metrics_4"] = {k: float(v) for k, v in metrics4.items()}
    results["metrics_1"] = {k: float(v) for k, v in metrics1.items()}
    results["params_devices_4"] = len(jax.tree.leaves(state4.params)[0].sharding.device_set)
    results["feature_map_hwc"] = [int(n) for n in jax.eval_shape(
        lambda p, x: state1.model.apply({"params": p, **state1.model_state}, x, method=state1.model.extract),
        state1.params, batch["images"]).shape[1:]]

    # The op alone, forward and backward, plain and partitioned, on a batch split over the mesh.
    features = jax.random.normal(jax.random.key(1), (NUM_DEVICES, 6, 6, 8))
    rois = jax.random.uniform(jax.random.key(2), (NUM_DEVICES, 3, 4), maxval=90.0)
    rois = jnp.concatenate([jnp.minimum(rois[..., :2], rois[..., 2:]), jnp.maximum(rois[..., :2], rois[..., 2:])], -1)
    weights = _weights()
    # Detection on the mesh: `predict` traced under it, images split over the devices, against
    # the same call on one device.
    from jaxdet.inference import predict
    from jaxdet.settings import DetectorSettings

    detect = functools.partial(predict, state1.model, settings=DetectorSettings.from_config(config))
    placed_images = jax.device_put(batch["images"], split_batch(mesh))
    placed_hw = jax.device_put(batch["image_hw"], split_batch(mesh))
    variables = replicate(state1.variables, mesh)
    with jax.set_mesh(mesh):
        texts["predict_hlo"] = jax.jit(detect).lower(variables, placed_images, placed_hw).compile().as_text()
        on_mesh = detect(variables, placed_images, placed_hw)
    on_one = detect(state1.variables, batch["images"], batch["image_hw"])
    for field in ("boxes", "scores", "labels", "valid"):
        arrays[f"predict_mesh_{field}"] = np.asarray(getattr(on_mesh, field))
        arrays[f"predict_one_{field}"] = np.asarray(getattr(on_one, field))

    # `jaxdet.inference.dataset.detect` on the state replicated over 4 devices splits each
    # batch over them; on the single-device state it runs on that device.
    from jaxdet.inference import dataset as evaluation

    test_set = load_dataset(config, "test")
    for name, source in (("4", state4), ("1", state1)):
        found, _ = evaluation.detect(config, source, test_set, show_progress=False, batch_size=4)
        arrays[f"detect_{name}_counts"] = np.array([len(d["scores"]) for d in found])
        arrays[f"detect_{name}_scores"] = np.concatenate([d["scores"] for d in found])
        arrays[f"detect_{name}_boxes"] = np.concatenate([d["boxes"] for d in found])
    results["detect_mesh_devices"] = evaluation._local_detection_mesh(state4, 4).devices.size

    # The op alone, forward and backward, on a batch split over the mesh: with the mesh in context
    # ("partitioned"), and the control without it, which the partitioner handles by gathering.
    for name, context in (("plain", contextlib.nullcontext), ("partitioned", lambda: jax.sharding.use_abstract_mesh(mesh.abstract_mesh))):
        def loss(f, context=context):
            with context():
                out = xla_ops.roi_pool(f, rois, output_size=(2, 2), spatial_scale=1 / 16)
            return jnp.sum(out * weights), out

        fn = jax.jit(jax.value_and_grad(loss, has_aux=True), in_shardings=split_batch(mesh))
        placed = jax.device_put(features, split_batch(mesh))
        texts[f"op_{name}_hlo"] = fn.lower(placed).compile().as_text()
        (_, out), grad = fn(placed)
        arrays[f"op_{name}_out"], arrays[f"op_{name}_grad"] = np.asarray(out), np.asarray(grad)

    # Inside a user's own shard_map, with its type check on: the op's results vary per device
    # (a psum adds the shards' values) and its gradient is typed like the features.
    def user_loss(f, r, w):
        return jax.lax.psum(jnp.sum(xla_ops.roi_pool(f, r, output_size=(2, 2)) * w), "data")

    spec = jax.sharding.PartitionSpec("data")
    user = jax.shard_map(user_loss, mesh=mesh, in_specs=(spec, spec, spec), out_specs=jax.sharding.PartitionSpec())
    value, grad = jax.jit(jax.value_and_grad(user))(features, rois, weights)
    results["user_shard_map_loss"] = float(value)
    arrays["user_shard_map_grad"] = np.asarray(grad)

    # Checkpoints move between device counts: 4 -> 1 and 1 -> 4.
    for source, target, name in ((state4, state1, "4_to_1"), (state1, state4, "1_to_4")):
        manager = checkpoint_manager(os.path.join(out_dir, f"checkpoints_{name}"), async_save=False)
        save_checkpoint(manager, source, data_state={"next_step": 1}, force=True)
        restored, data_state = restore_checkpoint(manager, target)
        manager.close()
        arrays[f"restored_{name}"] = _flat(restored)
        arrays[f"source_{name}"] = _flat(source)
        leaf = jax.tree.leaves(restored.params)[0]
        results[f"restored_{name}"] = {"devices": len(leaf.sharding.device_set),
                                       "replicated": bool(leaf.sharding.is_fully_replicated),
                                       "step": int(restored.step), "data_state": data_state}

    np.savez(os.path.join(out_dir, "arrays.npz"), **arrays)
    for name, text in texts.items():
        with open(os.path.join(out_dir, f"{name}.txt"), "w") as f:
            f.write(text)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("parallel"))
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), out], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the 4-device run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    texts = {}
    for name in ("step_hlo", "predict_hlo", "op_plain_hlo", "op_partitioned_hlo"):
        with open(os.path.join(out, f"{name}.txt")) as f:
            texts[name] = f.read()
    return results, dict(np.load(os.path.join(out, "arrays.npz"))), texts


def collective_shapes(hlo: str) -> list:
    """[(op, [shape tuples of its result])] for every cross-device collective in an HLO text."""
    found = []
    pattern = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
    for line in hlo.splitlines():
        match = pattern.search(line)
        if match:
            shapes = [tuple(int(n) for n in dims.split(",") if n)
                      for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", match.group(1))]
            found.append((match.group(2), shapes))
    return found


def custom_call_shapes(hlo: str, target: str) -> list:
    """Per call of `target`: (result shapes, operand shapes) from the HLO text."""
    calls = []
    for line in hlo.splitlines():
        if f'custom_call_target="{target}"' not in line:
            continue
        result = re.search(r"=\s*(.*?)\scustom-call\(", line).group(1)
        operands = re.search(r"operand_layout_constraints=\{(.*?)\}\s*,\s*api_version", line).group(1)
        shape = lambda text: [tuple(int(n) for n in d.split(",") if n) for d in re.findall(r"\[([\d,]*)\]", text)]
        calls.append((shape(result), shape(operands)))
    return calls


def test_one_step_on_4_devices_equals_one_step_on_1_device(simulated):
    results, arrays, _ = simulated
    m1, m4 = results["metrics_1"], results["metrics_4"]
    assert m1.keys() == m4.keys()
    for name in m1:
        np.testing.assert_allclose(m4[name], m1[name], rtol=2e-5, atol=1e-6, err_msg=name)
    assert m1["learning_rate"] == 1.0
    grad_1 = arrays["params_before"] - arrays["params_after_1"]
    grad_4 = arrays["params_before"] - arrays["params_after_4"]
    # The recovered update is the step's gradient: its norm is the step's own grad_norm.
    np.testing.assert_allclose(np.linalg.norm(grad_1), m1["grad_norm"], rtol=1e-4)
    assert np.count_nonzero(grad_1) > grad_1.size // 2
    np.testing.assert_allclose(grad_4, grad_1, rtol=1e-4, atol=2e-6 * np.abs(grad_1).max())
    # Four devices saw two images each; the parameters stayed replicated on all of them.
    assert results["batch_devices"] == NUM_DEVICES and results["batch_shard_rows"] == GLOBAL_BATCH // NUM_DEVICES
    assert results["params_devices_4"] == NUM_DEVICES


def test_sharded_step_never_moves_feature_maps_between_devices(simulated):
    results, _, texts = simulated
    from xla_ops._native import BACKWARD_TARGET, FORWARD_TARGET

    hlo = texts["step_hlo"]
    h, w, c = results["feature_map_hwc"]
    image_hw = 64  # the smoke config's images
    # Trailing dims of the feature map, of pooled features (and their cotangents) and of images.
    forbidden = {(h, w, c), (7, 7, c), (image_hw, image_hw, 3)}
    collectives = collective_shapes(hlo)
    moved = [(op, s) for op, shapes in collectives for s in shapes if len(s) >= 3 and tuple(s[-3:]) in forbidden]
    assert not moved, f"feature maps, pooled features or images cross devices: {moved}"
    # The gradient is summed over devices (data parallelism), and nothing is all-gathered: the
    # per-image stages (anchor targets, proposals and their NMS, RoI sampling) run per device too.
    assert any(op == "all-reduce" for op, _ in collectives)
    assert [op for op, _ in collectives if op != "all-reduce"] == []
    # The only top-k's are per device: on 2 images' anchors, never the global batch of 8.
    topk_batches = {int(m) for m in re.findall(r"\[(\d+),\d+\][^=]*\bcustom-call\([^)]*\), custom_call_target=\"TopK\"", hlo)}
    assert topk_batches and topk_batches <= {GLOBAL_BATCH // NUM_DEVICES, 1}, topk_batches
    # Each device pools its own 2 images: the custom calls see per-device shapes.
    per_device = GLOBAL_BATCH // NUM_DEVICES
    forward, backward = custom_call_shapes(hlo, FORWARD_TARGET), custom_call_shapes(hlo, BACKWARD_TARGET)
    assert len(forward) == len(backward) == 1
    assert forward[0][1][0] == (per_device, h, w, c)  # features operand
    assert backward[0][0][0] == (per_device, h, w, c)  # gradient of the features


def test_predict_on_the_mesh_detects_per_device_what_one_device_detects(simulated):
    _, arrays, texts = simulated
    # Each device detects on its own images: the program holds no collective at all.
    assert collective_shapes(texts["predict_hlo"]) == []
    valid = arrays["predict_one_valid"]
    assert valid.any()
    np.testing.assert_array_equal(arrays["predict_mesh_valid"], valid)
    np.testing.assert_array_equal(arrays["predict_mesh_labels"][valid], arrays["predict_one_labels"][valid])
    np.testing.assert_allclose(arrays["predict_mesh_scores"][valid], arrays["predict_one_scores"][valid], rtol=1e-5)
    np.testing.assert_allclose(arrays["predict_mesh_boxes"][valid], arrays["predict_one_boxes"][valid], atol=1e-3)


def test_evaluation_detects_on_every_device_what_one_device_detects(simulated):
    results, arrays, _ = simulated
    assert results["detect_mesh_devices"] == NUM_DEVICES
    np.testing.assert_array_equal(arrays["detect_4_counts"], arrays["detect_1_counts"])
    assert arrays["detect_1_counts"].sum() > 0
    np.testing.assert_allclose(arrays["detect_4_scores"], arrays["detect_1_scores"], rtol=1e-5)
    np.testing.assert_allclose(arrays["detect_4_boxes"], arrays["detect_1_boxes"], atol=1e-3)


def test_roi_pool_partitioned_along_batch_matches_the_op_without_gathering(simulated):
    results, arrays, texts = simulated
    # The control: with no mesh in context the partitioner handles the custom call by gathering
    # the whole batch of features onto every device.
    plain = [s for op, shapes in collective_shapes(texts["op_plain_hlo"]) if op == "all-gather" for s in shapes]
    assert (NUM_DEVICES, 6, 6, 8) in plain
    # With the mesh in context the op splits itself: only the scalar loss is summed over devices.
    assert all(s == () for _, shapes in collective_shapes(texts["op_partitioned_hlo"]) for s in shapes)
    np.testing.assert_array_equal(arrays["op_partitioned_out"], arrays["op_plain_out"])
    np.testing.assert_array_equal(arrays["op_partitioned_grad"], arrays["op_plain_grad"])
    assert np.count_nonzero(arrays["op_plain_out"]) > 0 and np.count_nonzero(arrays["op_plain_grad"]) > 0
    # In a user's shard_map (type check on), psum adds the 4 shards and the gradient is the op's.
    expected = float(np.sum(arrays["op_plain_out"] * _weights()))
    np.testing.assert_allclose(results["user_shard_map_loss"], expected, rtol=1e-5)
    np.testing.assert_array_equal(arrays["user_shard_map_grad"], arrays["op_plain_grad"])


def test_what_cannot_be_split_runs_unpartitioned_with_a_warning(simulated):
    results, arrays, _ = simulated
    for name, reason in (("uneven", "N=6 does not split evenly over the 4 devices"),
                         ("k5", "[K, 5] rois hold global batch indices")):
        warned = results[f"unpartitioned_{name}_warnings"]
        assert len(warned) == 1 and reason in warned[0] and "runs unpartitioned" in warned[0], warned
        np.testing.assert_array_equal(arrays[f"unpartitioned_{name}"], arrays["unpartitioned_reference"])
    assert np.count_nonzero(arrays["unpartitioned_reference"]) > 0


def test_checkpoint_saved_on_4_devices_restores_on_1_and_back(simulated):
    results, arrays, _ = simulated
    for name, devices in (("4_to_1", 1), ("1_to_4", NUM_DEVICES)):
        np.testing.assert_array_equal(arrays[f"restored_{name}"], arrays[f"source_{name}"])
        info = results[f"restored_{name}"]
        assert info["devices"] == devices and info["replicated"]
        assert info["step"] == 1 and info["data_state"] == {"next_step": 1}


def test_mesh_and_batch_layout(simulated):
    results, _, _ = simulated
    assert results["layout"] == "global batch 8 = 4 devices x 2 images"
    assert results["mesh_of_3"] == 3
    assert "multiple of the 4 devices" in results["batch_layout_error"]
    assert "'images'" in results["shard_batch_error"] and "4 devices" in results["shard_batch_error"]
    assert "num_devices must be in [1, 4]" in results["make_mesh_error"]


if __name__ == "__main__":
    _run_simulated(sys.argv[1])
