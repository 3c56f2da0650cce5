"""The Flax modules: shapes, parameter counts, initialisation, wiring, frozen stages, dtypes."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models.backbones import max_pool_2x2
from jaxdet.models import (VGG16, BoxPredictor, FastRCNN, FasterRCNN, FCHead, ResNet50C4, ResNet50C5Head, RPNHead,
                           TinyResNetC4, TinyResNetC5Head, TinyVGG)
from jaxdet.inference import predict
from jaxdet.configs import base
from jaxdet.settings import DetectorSettings
from jaxdet.ops.anchors import anchor_grid
from xla_ops import roi_pool_reference

KEY = jax.random.PRNGKey(0)


def count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def abstract_init(module, *args):
    return jax.eval_shape(module.init, KEY, *args)


def conv_params(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def test_vgg16_conv_part_has_14_7m_parameters_and_stride_16():
    variables = abstract_init(VGG16(), jnp.zeros((1, 64, 64, 3)))
    widths = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert count(variables) == sum(conv_params(3, a, b) for a, b in zip(widths, widths[1:])) == 14_714_688
    assert list(variables["params"]) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                                         "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
    out = jax.eval_shape(VGG16().apply, variables, jnp.zeros((2, 600, 1000, 3)))
    assert out.shape == (2, 37, 62, 512)  # four 2x2 pools, each flooring: 600 -> 300 -> 150 -> 75 -> 37
    assert VGG16().stride == 16


def test_resnet50_c4_and_c5_head_match_torchvision_counts():
    variables = abstract_init(ResNet50C4(), jnp.zeros((1, 64, 64, 3)))
    # torchvision resnet50: 25,557,032 in all, layer4 14,964,736, fc 2,049,000; the rest is C4.
    assert count(variables["params"]) == 25_557_032 - 14_964_736 - 2_049_000
    assert set(variables) == {"params", "batch_stats"}
    out = jax.eval_shape(ResNet50C4().apply, variables, jnp.zeros((1, 600, 1000, 3)))
    assert out.shape == (1, 38, 63, 1024)
    head = ResNet50C5Head(strides=2)
    head_vars = abstract_init(head, jnp.zeros((2, 3, 14, 14, 1024)))
    assert count(head_vars["params"]) == 14_964_736
    assert jax.eval_shape(head.apply, head_vars, jnp.zeros((2, 3, 14, 14, 1024))).shape == (2, 3, 2048)


def vgg16_faster_rcnn(num_classes=20):
    return FasterRCNN(backbone=VGG16(frozen_stages=2), box_head=FCHead(), num_classes=num_classes)


def test_faster_rcnn_vgg16_shapes_and_parameter_count():
    model = vgg16_faster_rcnn()
    images, rois = jnp.zeros((2, 600, 1000, 3)), jnp.zeros((2, 300, 4))
    variables = abstract_init(model, images, rois)
    rpn, head = jax.eval_shape(model.apply, variables, images, rois)
    a = 37 * 62 * 9
    assert rpn.logits.shape == (2, a, 2) and rpn.deltas.shape == (2, a, 4)
    assert head.logits.shape == (2, 300, 21) and head.deltas.shape == (2, 300, 21, 4)
    assert all(x.dtype == jnp.float32 for x in (*rpn, *head))
    expected = {
        "backbone": 14_714_688,
        "rpn": conv_params(3, 512, 512) + conv_params(1, 512, 18) + conv_params(1, 512, 36),
        "box_head": 25088 * 4096 + 4096 + 4096 * 4096 + 4096,
        "predictor": 4096 * 21 + 21 + 4096 * 84 + 84,
    }
    assert {k: count(v) for k, v in variables["params"].items()} == expected
    assert model.anchors((37, 62)).shape == (a, 4)


@pytest.fixture(scope="module")
def tiny():
    model = FasterRCNN(backbone=TinyVGG(), box_head=FCHead(hidden=(32, 32)), num_classes=3,
                       anchor_scales=(2, 4), anchor_ratios=(0.5, 1.0, 2.0), rpn_channels=16)
    images = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 96, 3))
    rois = jnp.array([[[0.0, 0.0, 40.0, 30.0], [10.0, 20.0, 60.0, 63.0]],
                      [[5.0, 5.0, 90.0, 60.0], [30.5, 12.25, 47.0, 33.0]]])
    return model, jax.jit(model.init)(KEY, images, rois), images, rois


def test_initialisation_follows_the_paper(tiny):
    model, variables, _, _ = tiny
    p = variables["params"]
    for name in ("conv", "cls_logits", "bbox_deltas"):
        assert np.all(p["rpn"][name]["bias"] == 0)
    np.testing.assert_allclose(np.std(p["rpn"]["conv"]["kernel"]), 0.01, rtol=0.05)
    np.testing.assert_allclose(np.std(p["predictor"]["cls_score"]["kernel"]), 0.01, rtol=0.15)
    np.testing.assert_allclose(np.std(p["predictor"]["bbox_pred"]["kernel"]), 0.001, rtol=0.1)
    assert np.all(p["predictor"]["cls_score"]["bias"] == 0) and np.all(p["predictor"]["bbox_pred"]["bias"] == 0)


def test_rpn_outputs_follow_the_anchor_order(tiny):
    model, variables, images, _ = tiny
    a = model.num_anchors
    params = jax.tree.map(lambda x: x, variables["params"])
    # Constant outputs per channel: channel (anchor j, score c) must land at anchor j of every cell.
    params["rpn"]["cls_logits"] = {"kernel": jnp.zeros_like(params["rpn"]["cls_logits"]["kernel"]),
                                   "bias": jnp.arange(2 * a, dtype=jnp.float32)}
    features = jax.jit(functools.partial(model.apply, method=model.extract))({"params": params}, images)
    rpn = jax.jit(functools.partial(model.apply, method=model.rpn_outputs))({"params": params}, features)
    h, w = features.shape[1:3]
    assert (h, w) == (8, 12) and model.stride == 8
    expected = np.tile(np.arange(2 * a, dtype=np.float32).reshape(a, 2), (h * w, 1))
    np.testing.assert_array_equal(rpn.logits[1], expected)
    np.testing.assert_array_equal(model.anchors((h, w)), anchor_grid((h, w), stride=8, scales=(2, 4)))


def test_classify_pools_at_the_backbone_stride(tiny):
    model, variables, images, rois = tiny
    features = jax.jit(functools.partial(model.apply, method=model.extract))(variables, images)
    head = jax.jit(functools.partial(model.apply, method=model.classify))(variables, features, rois)

    @jax.jit
    def reference_head(p, features):
        # The same head, with RoI pooling done here by the jnp reference at scale 1/8.
        flat = jnp.concatenate([jnp.repeat(jnp.arange(2.0), 2)[:, None], rois.reshape(-1, 4)], axis=1)
        pooled, _ = roi_pool_reference(features, flat, output_size=(7, 7), spatial_scale=1 / 8)
        vec = FCHead(hidden=(32, 32)).apply({"params": p["box_head"]}, pooled)
        return BoxPredictor(3).apply({"params": p["predictor"]}, vec)

    ref = reference_head(variables["params"], features)
    np.testing.assert_allclose(head.logits.reshape(4, 4), ref.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.deltas.reshape(4, 4, 4), ref.deltas, rtol=1e-5, atol=1e-6)


def test_fast_rcnn_shares_the_head_without_an_rpn(tiny):
    faster, variables, images, rois = tiny
    fast = FastRCNN(backbone=faster.backbone, box_head=faster.box_head, num_classes=3)
    fast_vars = abstract_init(fast, images, rois)
    assert set(fast_vars["params"]) == {"backbone", "box_head", "predictor"}
    # Faster R-CNN's parameters minus the RPN are a valid Fast R-CNN.
    shared = {"params": {k: v for k, v in variables["params"].items() if k != "rpn"}}
    head = jax.jit(fast.apply)(shared, images, rois)
    _, ref = jax.jit(faster.apply)(variables, images, rois)
    np.testing.assert_array_equal(head.logits, ref.logits)


def test_detection_decodes_with_the_models_box_coding(tiny):
    faster, variables, images, rois = tiny
    params = {k: v for k, v in variables["params"].items() if k != "rpn"}
    # Every RoI predicts the deltas (1, 0, 0, 0) for every class: a shift right by stds[0] widths.
    bbox_pred = params["predictor"]["bbox_pred"]
    params["predictor"] = {**params["predictor"], "bbox_pred": {
        "kernel": jnp.zeros_like(bbox_pred["kernel"]), "bias": jnp.tile(jnp.array([1.0, 0, 0, 0]), 4)}}
    image_hw = jnp.array([[64, 96], [64, 96]], jnp.int32)
    flat = np.asarray(rois).reshape(-1, 4)
    for stds in ((0.1, 0.1, 0.2, 0.2), (0.5, 1.0, 1.0, 1.0)):
        fast = FastRCNN(backbone=faster.backbone, box_head=faster.box_head, num_classes=3, box_stds=stds)
        config = base.get_config()
        config.test.update(score_threshold=0.0, max_detections=6)
        found = predict(fast, {"params": params}, images, image_hw, proposals=rois,
                        settings=DetectorSettings.from_config(config))
        shift = stds[0] * (flat[:, 2] - flat[:, 0])
        expected = np.clip(flat + np.stack([shift, 0 * shift, shift, 0 * shift], 1), 0, [96, 64, 96, 64])
        boxes = np.asarray(found.boxes)[np.asarray(found.valid)]
        assert len(boxes) > 0
        assert np.all(np.min(np.max(np.abs(boxes[:, None] - expected[None]), axis=-1), axis=1) < 1e-4)


@pytest.mark.parametrize("backbone, frozen, trained", [
    (functools.partial(TinyVGG, frozen_stages=2), ("conv1_1", "conv2_1"), ("conv3_1", "conv4_2")),
    (functools.partial(TinyResNetC4, frozen_stages=2), ("conv1", "bn1", "res2"), ("res3", "res4")),
])
def test_frozen_stages_get_no_gradient(backbone, frozen, trained):
    module = backbone()
    images = jax.random.normal(KEY, (1, 32, 32, 3))
    variables = jax.jit(module.init)(KEY, images)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(module.apply({**variables, "params": p}, images) ** 2)))(
        variables["params"])
    for name in frozen:
        assert module.is_frozen(name) and count(grads[name]) > 0
        assert all(np.all(g == 0) for g in jax.tree.leaves(grads[name])), name
    for name in trained:
        assert not module.is_frozen(name)
        assert any(np.any(g != 0) for g in jax.tree.leaves(grads[name])), name


def test_resnet_faster_rcnn_shapes():
    model = FasterRCNN(backbone=TinyResNetC4(), box_head=TinyResNetC5Head(strides=1), num_classes=2,
                       rpn_channels=16)
    images, rois = jnp.ones((1, 64, 64, 3)), jnp.array([[[0.0, 0.0, 31.0, 31.0]]])
    variables = abstract_init(model, images, rois)
    assert set(variables) == {"params", "batch_stats"}
    rpn, head = jax.eval_shape(model.apply, variables, images, rois)
    assert rpn.logits.shape == (1, 4 * 4 * 9, 2)
    assert head.logits.shape == (1, 1, 3) and head.deltas.shape == (1, 1, 3, 4)


def test_bfloat16_compute_keeps_float32_parameters_and_outputs():
    model = FasterRCNN(backbone=TinyVGG(dtype=jnp.bfloat16), box_head=FCHead(hidden=(16,), dtype=jnp.bfloat16),
                       num_classes=2, rpn_channels=8, dtype=jnp.bfloat16)
    images, rois = jnp.ones((1, 32, 32, 3)), jnp.array([[[0.0, 0.0, 20.0, 20.0]]])
    variables = abstract_init(model, images, rois)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    # flax's layers compute in bfloat16 (the CPU kit of xla_ops.amx is an opt-in: model.cpu_bf16_kernels).
    assert jax.eval_shape(functools.partial(model.apply, method=model.extract), variables, images).dtype == jnp.bfloat16
    rpn, head = jax.eval_shape(model.apply, variables, images, rois)
    assert all(x.dtype == jnp.float32 for x in (*rpn, *head))


def test_bad_frozen_stages_is_a_clear_error():
    with pytest.raises(ValueError, match="frozen_stages must be in"):
        abstract_init(TinyVGG(frozen_stages=7), jnp.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize("shape", [(2, 8, 10, 3), (1, 7, 9, 4), (3, 5, 5, 1)])
def test_max_pool_2x2_has_flax_max_pools_values_and_gradient(shape):
    """Even and odd sizes; small integers make most windows' maxima tied, where the gradient must
    go to the first maximal input of the window as reduce_window's select-and-scatter does."""
    import flax.linen as nn
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(-2, 3, shape).astype(np.float32))
    cot = jnp.asarray(rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])).astype(np.float32))
    expected, expected_vjp = jax.vjp(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID"), x)
    pooled, pool_vjp = jax.vjp(jax.jit(max_pool_2x2), x)
    np.testing.assert_array_equal(pooled, expected)
    np.testing.assert_array_equal(pool_vjp(cot)[0], expected_vjp(cot)[0])
    assert (np.asarray(pool_vjp(cot)[0]) != 0).sum() == cot.size - int((np.asarray(cot) == 0).sum())


def test_rpn_head_alone():
    head = RPNHead(num_anchors=3, channels=4)
    features = jnp.zeros((2, 5, 6, 8))
    out = jax.eval_shape(head.apply, abstract_init(head, features), features)
    assert out.logits.shape == (2, 90, 2) and out.deltas.shape == (2, 90, 4)
