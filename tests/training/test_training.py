"""The training step, the optimizer and detection, on the tiny config with small synthetic images.

Every training test uses the "smoke" variant of the `tiny_shapes` config and the
same batch shapes, so the step compiles once for the whole file (and for test_checkpoints).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdet.inference import detections_to_lists, predict
from jaxdet.ops.nms import Detections
from jaxdet.settings import DetectorSettings
from jaxdet.training import OptimizerSettings, create_train_state, learning_rate_schedule, make_optimizer
from jaxdet.training import step as step_lib
from jaxdet.training.step import detection_losses, eval_step, step_key, train_step
from helpers import load_config, synthetic_batch

LOSSES = ("rpn_cls_loss", "rpn_box_loss", "roi_cls_loss", "roi_box_loss")


@pytest.fixture(scope="module")
def config():
    return load_config()


def test_every_loss_term_reaches_the_backbone(config):
    state = create_train_state(config, jax.random.PRNGKey(0))
    batch = synthetic_batch(0)

    @jax.jit
    def gradient_of_term(params, weights):
        """The gradient of sum_t weights[t] * loss_t, and the metrics."""
        def weighted(p):
            _, metrics = detection_losses(state.model, {"params": p}, batch, jax.random.PRNGKey(1),
                                          settings=state.settings)
            return jnp.dot(weights, jnp.stack([metrics[name] for name in LOSSES])), metrics
        return jax.grad(weighted, has_aux=True)(params)

    def nonzero(tree):
        return any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(tree))

    # The gradient flows through the native custom calls (not the jnp fallback of impl="auto").
    from xla_ops._native import BACKWARD_TARGET, FORWARD_TARGET

    hlo = gradient_of_term.lower(state.params, jnp.eye(len(LOSSES))[0]).as_text()
    assert FORWARD_TARGET in hlo and BACKWARD_TARGET in hlo
    for term, name in enumerate(LOSSES):
        grads, metrics = gradient_of_term(state.params, jnp.eye(len(LOSSES))[term])
        assert np.isfinite(float(metrics[name])) and float(metrics[name]) > 0, metrics
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
        assert nonzero(grads["backbone"]["conv1_1"]), f"{name} does not reach conv1_1"
        # The head's losses reach the backbone only through RoI pooling: the proposals carry no
        # gradient into the RPN, and the RPN's losses none into the head.
        if name.startswith("roi"):
            assert not nonzero(grads["rpn"]), name
        else:
            assert not nonzero(grads["box_head"]) and not nonzero(grads["predictor"]), name
    assert float(metrics["rpn_positives"]) > 0 and float(metrics["roi_positives"]) > 0


def test_train_step_runs_once_compiled(config, monkeypatch):
    traces = []
    original = step_lib.detection_losses
    monkeypatch.setattr(step_lib, "detection_losses", lambda *a, **k: traces.append(1) or original(*a, **k))
    state = create_train_state(config, jax.random.PRNGKey(0))
    state, first = train_step(state, synthetic_batch(1), step_key(state))
    compiled = len(traces)
    state, second = train_step(state, synthetic_batch(2), step_key(state))
    assert len(traces) == compiled <= 1  # 0 if an earlier test compiled the same program
    assert int(state.step) == 2
    for metrics in (first, second):
        assert all(np.isfinite(float(v)) for v in metrics.values())
        assert set(LOSSES) <= set(metrics) and {"rpn_accuracy", "roi_accuracy", "rpn_positives", "roi_positives",
                                               "learning_rate", "loss", "grad_norm"} <= set(metrics)
    np.testing.assert_allclose(float(second["learning_rate"]), float(state.learning_rate_fn(1)))
    np.testing.assert_allclose(float(first["loss"]), sum(float(first[name]) for name in LOSSES), rtol=1e-5)


def test_learning_rate_schedule_by_hand():
    schedule = learning_rate_schedule(base=0.01, warmup_steps=10, warmup_factor=0.1, boundaries=(20, 30),
                                      decay_factor=0.1)
    for step, expected in [(0, 0.001), (5, 0.01 * (0.1 + 0.9 * 0.5)), (10, 0.01), (19, 0.01), (20, 0.001),
                           (29, 0.001), (30, 0.0001), (10**6, 0.0001)]:
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="decay_steps must be increasing"):
        learning_rate_schedule(base=0.1, boundaries=(5, 3))


def test_sgd_decays_trainable_kernels_only():
    params = {"backbone": {"conv1_1": {"kernel": jnp.full((2,), 2.0), "bias": jnp.full((2,), 3.0)},
                           "conv3_1": {"kernel": jnp.full((2,), 2.0), "bias": jnp.full((2,), 3.0)}}}
    frozen = lambda path: path[1] == "conv1_1"  # noqa: E731
    settings = OptimizerSettings.from_section(dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.5,
                                                   decay_steps=()))
    tx, _ = make_optimizer(settings, frozen)
    assert make_optimizer(settings, frozen)[0] is tx  # memoised: a new state does not recompile the step
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1.0), params)
    opt_state = tx.init(params)
    new = params
    for _ in range(2):
        updates, opt_state = tx.update(grads, opt_state, new)
        new = optax.apply_updates(new, updates)
    # Heavy-ball by hand: v1 = g + wd w0; w1 = w0 - lr v1; v2 = g + wd w1 + m v1; w2 = w1 - lr v2.
    w1 = 2.0 - 0.1 * (1 + 0.5 * 2.0)
    w2 = w1 - 0.1 * (1 + 0.5 * w1 + 0.9 * (1 + 0.5 * 2.0))
    b2 = 3.0 - 0.1 * 1 - 0.1 * (1 + 0.9 * 1)
    np.testing.assert_allclose(new["backbone"]["conv3_1"]["kernel"], w2, rtol=1e-6)
    np.testing.assert_allclose(new["backbone"]["conv3_1"]["bias"], b2, rtol=1e-6)
    np.testing.assert_array_equal(new["backbone"]["conv1_1"]["kernel"], 2.0)
    np.testing.assert_array_equal(new["backbone"]["conv1_1"]["bias"], 3.0)


def box_iou_numpy(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


@pytest.mark.parametrize("roi_op", ["pool", "align"])
def test_overfits_a_few_images_and_predict_finds_their_boxes(config, roi_op):
    config = config.copy_and_resolve_references()
    config.model.roi_op = roi_op
    state = create_train_state(config, jax.random.PRNGKey(0))
    assert state.model.roi_op == roi_op
    batches = [synthetic_batch(10), synthetic_batch(11)]
    losses = []
    for i in range(240):
        state, metrics = train_step(state, batches[i % 2], step_key(state))
        losses.append(float(metrics["loss"]))
    start, end = np.mean(losses[:2]), np.mean(losses[-10:])
    assert end < start / 10, (start, end)

    settings = DetectorSettings.from_config(config)
    for batch in batches:
        found = predict(state.model, state.variables, batch["images"], batch["image_hw"], settings=settings)
        assert found.boxes.shape == (2, settings.test.max_detections, 4) and found.valid.dtype == bool
        for i in range(2):
            gt = batch["boxes"][i][batch["valid"][i]]
            gt_labels = batch["labels"][i][batch["valid"][i]]
            confident = np.asarray(found.valid[i] & (found.scores[i] > 0.5))
            boxes, labels = np.asarray(found.boxes[i])[confident], np.asarray(found.labels[i])[confident]
            assert len(boxes) == len(gt), (boxes, gt)  # one confident detection per object, nothing else
            iou = box_iou_numpy(gt, boxes)
            for g in range(len(gt)):
                best = int(np.argmax(iou[g]))
                assert iou[g, best] > 0.7 and labels[best] == gt_labels[g], (iou, labels, gt_labels)


def test_eval_step_reports_the_losses_without_updating(config):
    state = create_train_state(config, jax.random.PRNGKey(0))
    metrics = eval_step(state, synthetic_batch(3), jax.random.PRNGKey(0))
    assert set(LOSSES) <= set(metrics) and all(np.isfinite(float(metrics[name])) for name in LOSSES)
    assert int(state.step) == 0


def test_bfloat16_step_keeps_float32_parameters(config):
    config = config.copy_and_resolve_references()
    config.model.compute_dtype = "bfloat16"
    state = create_train_state(config, jax.random.PRNGKey(0))
    batch = synthetic_batch(4)
    features = jax.eval_shape(lambda v, x: state.model.apply(v, x, method=state.model.extract),
                              state.variables, batch["images"])
    # flax's layers compute in bfloat16 (the CPU kit of xla_ops.amx is an opt-in: model.cpu_bf16_kernels).
    assert features.dtype == jnp.bfloat16
    state, metrics = train_step(state, batch, step_key(state))
    assert all(np.isfinite(float(metrics[name])) and metrics[name].dtype == jnp.float32 for name in LOSSES)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))


def test_fast_rcnn_step_trains_on_given_proposals(config):
    config = config.copy_and_resolve_references()
    config.model.kind = "fast_rcnn"
    state = create_train_state(config, jax.random.PRNGKey(0))
    assert "rpn" not in state.params
    batch = synthetic_batch(5)
    # Proposals: jittered ground truth and random boxes, some padding.
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 40, (2, 16, 2)).astype(np.float32)
    batch["proposals"] = np.concatenate([xy, xy + rng.uniform(8, 24, (2, 16, 2))], axis=-1).astype(np.float32)
    batch["proposals"][:, :2] = batch["boxes"][:, :2] + rng.normal(0, 1, (2, 2, 4))
    batch["proposal_valid"] = np.arange(16)[None, :].repeat(2, 0) < np.array([[16], [12]])
    state, metrics = train_step(state, batch, step_key(state))
    assert "rpn_cls_loss" not in metrics
    assert all(np.isfinite(float(metrics[name])) for name in ("roi_cls_loss", "roi_box_loss"))
    assert float(metrics["roi_positives"]) >= 1
    found = predict(state.model, state.variables, batch["images"], batch["image_hw"], proposals=batch["proposals"],
                    proposal_valid=batch["proposal_valid"], settings=DetectorSettings.from_config(config))
    assert found.scores.shape == (2, 100)


def test_detections_to_lists_maps_back_to_original_pixels():
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, 0] = (10, 20, 30, 40)
    boxes[0, 1] = (50, 0, 70, 90)  # runs past the original width once scaled back
    boxes[1, 0] = (1, 2, 3, 4)
    detections = Detections(boxes=jnp.asarray(boxes), scores=jnp.array([[0.9, 0.8, 0.0], [0.7, 0.0, 0.0]]),
                            labels=jnp.array([[2, 0, 0], [1, 0, 0]], jnp.int32),
                            valid=jnp.array([[True, True, False], [True, False, False]]))
    orig_hw = np.array([[45, 30], [100, 100]])
    out = detections_to_lists(detections, scale=np.array([2.0, 0.5]), orig_hw=orig_hw)
    np.testing.assert_allclose(out[0]["boxes"], [[5, 10, 15, 20], [25, 0, 30, 45]])
    np.testing.assert_allclose(out[0]["scores"], [0.9, 0.8])
    np.testing.assert_array_equal(out[0]["labels"], [2, 0])
    np.testing.assert_allclose(out[1]["boxes"], [[2, 4, 6, 8]])
    assert out[1]["labels"].dtype == np.int32
    # Per axis: image 1 was resized from 100x100 to 50x25 (height x width).
    exact = detections_to_lists(detections, image_hw=np.array([[90, 60], [50, 25]]), orig_hw=orig_hw)
    np.testing.assert_allclose(exact[0]["boxes"], [[5, 10, 15, 20], [25, 0, 30, 45]])
    np.testing.assert_allclose(exact[1]["boxes"], [[4, 4, 12, 8]])
    with pytest.raises(ValueError, match="batch sizes differ"):
        detections_to_lists(detections, scale=np.ones(3), orig_hw=np.ones((3, 2)))
    with pytest.raises(ValueError, match="exactly one of image_hw and scale"):
        detections_to_lists(detections, orig_hw=orig_hw)
