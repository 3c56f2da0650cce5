"""The ResNet-FPN head's multi-scale RoIAlign through the native op (one `xla_ops.roi_align` call per level,
other levels' RoIs given NaN coordinates) against the jnp gather of `multiscale_roi_align`: values and
gradients, and the whole model's head with either."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.configs import fasterrcnn_resnet50_fpn_coco
from jaxdet.models.fpn_detector import (map_levels, model_from_config, multiscale_roi_align,
                                        multiscale_roi_align_native)

xla_ops = pytest.importorskip("xla_ops")
if not xla_ops.align.is_built("cpu"):
    pytest.skip(f"the native RoIAlign is not built: {xla_ops.align.why_not_built('cpu')}", allow_module_level=True)

STRIDES = (4, 8, 16, 32)


def cases(seed, num_images=2, num_rois=60, canvas=(128, 160), channels=6):
    rng = np.random.default_rng(seed)
    features = [rng.standard_normal((num_images, canvas[0] // s, canvas[1] // s, channels)).astype(np.float32)
                for s in STRIDES]
    xy = rng.uniform(-20, 170, (num_images, num_rois, 2))
    wh = np.exp(rng.uniform(np.log(0.5), np.log(800), (num_images, num_rois, 2)))
    rois = np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)
    rois[:, :3] = [[-30, -20, 470, 520], [10, 5, 700, 460], [100, 50, 560, 900]]  # level 5 (sqrt(area) >= 448)
    return features, rois


def test_native_equals_gather_on_every_level():
    features, rois = cases(0)
    levels = np.asarray(map_levels(jnp.asarray(rois)))
    assert set(levels.reshape(-1)) == {0, 1, 2, 3}  # every level used
    got = np.asarray(jax.jit(lambda f, r: multiscale_roi_align_native(f, r, strides=STRIDES))(features, rois))
    for i in range(rois.shape[0]):
        want = np.asarray(multiscale_roi_align([f[i] for f in features], jnp.asarray(rois[i]), strides=STRIDES))
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)


def test_native_gradient_equals_gather():
    features, rois = cases(1, num_rois=30)
    cotangent = np.random.default_rng(2).standard_normal((2, 30, 7, 7, 6)).astype(np.float32)

    def native(feats):
        return jnp.sum(multiscale_roi_align_native(feats, jnp.asarray(rois), strides=STRIDES) * cotangent)

    def gather(feats):
        pooled = jnp.stack([multiscale_roi_align([f[i] for f in feats], jnp.asarray(rois[i]), strides=STRIDES)
                            for i in range(2)])
        return jnp.sum(pooled * cotangent)

    got = jax.grad(native)([jnp.asarray(f) for f in features])
    want = jax.grad(gather)([jnp.asarray(f) for f in features])
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)


def test_model_head_the_same_with_either_roi_impl():
    config = fasterrcnn_resnet50_fpn_coco.get_config("tiny")
    native = model_from_config(config.model)
    config.model.roi_impl = "gather"
    gather = model_from_config(config.model)
    assert (native.roi_impl, gather.roi_impl) == ("xla_ops", "gather")
    images = jnp.asarray(np.random.default_rng(3).standard_normal((2, 128, 160, 3)), jnp.float32)
    _, rois = cases(4, num_rois=20)
    variables = native.init(jax.random.PRNGKey(0), images[:1], jnp.asarray(rois[:1]))
    a = native.apply(variables, images, jnp.asarray(rois))[1]
    b = gather.apply(variables, images, jnp.asarray(rois))[1]
    np.testing.assert_allclose(np.asarray(a.logits), np.asarray(b.logits), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.deltas), np.asarray(b.deltas), rtol=1e-4, atol=1e-5)
