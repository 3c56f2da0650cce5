"""RoI classifiers in both arrangements of MXNet Gluon's RoIPooling example (a batch of two
128x128 images, four RoIs, 11 outputs each), checked against an independent computation: the
numpy RoI pooling of tests/references/roi_pool_numpy.py, the trunk applied to its output, a numpy mean and
a numpy dense layer with the module's own parameters; and the ResNet trunks they use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models import (BasicBlock, FastRCNN, GlobalPoolHead, ResNet, ResNet34, ResNet50, RoIClassifier,
                           TinyVGG)
from references.roi_pool_numpy import seed_roi_pool

# The example's RoIs: (batch_index, x1, y1, x2, y2) in image pixels.
EXAMPLE_ROIS = np.array([[0, 10, 10, 100, 100], [0, 20, 20, 120, 120],
                         [1, 15, 15, 110, 110], [1, 25, 25, 128, 128]], np.float32)


def example_images():
    return jax.random.uniform(jax.random.key(0), (2, 128, 128, 3))  # NHWC


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def dense(params, x):
    return x @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"], np.float64)


def test_rcnn_style_pools_the_images_and_classifies_each_crop():
    net = RoIClassifier(num_classes=11, head=GlobalPoolHead(trunk=TinyVGG()), pooled_size=(64, 64))
    images = example_images()
    variables = net.init(jax.random.key(1), images, EXAMPLE_ROIS)
    logits = net.apply(variables, images, EXAMPLE_ROIS)
    assert logits.shape == (4, 11)
    crops, _ = seed_roi_pool(np.asarray(images), EXAMPLE_ROIS, (64, 64), 1.0)  # [4, 64, 64, 3]
    params = variables["params"]
    features = TinyVGG().apply({"params": params["head"]["trunk"]}, jnp.asarray(crops))
    expected = dense(params["classifier"], np.asarray(features, np.float64).mean(axis=(1, 2)))
    np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-5)


def test_fast_rcnn_style_on_resnet34_stride_32_features():
    net = RoIClassifier(num_classes=11, head=GlobalPoolHead(), trunk=ResNet34(), pooled_size=(4, 4))
    images = example_images()
    variables = net.init(jax.random.key(2), images, EXAMPLE_ROIS)
    logits = net.apply(variables, images, EXAMPLE_ROIS)
    assert logits.shape == (4, 11)
    trunk_variables = {"params": variables["params"]["trunk"], "batch_stats": variables["batch_stats"]["trunk"]}
    features = np.asarray(ResNet34().apply(trunk_variables, images))
    assert features.shape == (2, 4, 4, 512)  # 128 / 32
    pooled, argmax = seed_roi_pool(features, EXAMPLE_ROIS, (4, 4), 1 / 32)
    assert (argmax >= 0).all()  # every bin of every RoI pools something
    expected = dense(variables["params"]["classifier"], pooled.astype(np.float64).mean(axis=(1, 2)))
    np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("trunk, parameters, channels", [
    (ResNet34, 21_284_672, 512),   # torchvision's resnet34 without its fc layer
    (ResNet50, 23_508_032, 2048),  # torchvision's resnet50 without its fc layer
])
def test_whole_resnet_trunks(trunk, parameters, channels):
    model = trunk()
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    assert count(variables["params"]) == parameters
    out = jax.eval_shape(model.apply, variables, jnp.zeros((1, 224, 224, 3)))
    assert model.stride == 32 and model.out_channels == channels
    assert out.shape == (1, 7, 7, channels)


def test_global_pool_head_is_a_fast_rcnn_box_head():
    trunk = ResNet(stage_sizes=(1, 1, 1, 1), block=BasicBlock, width=8)
    model = FastRCNN(backbone=trunk, box_head=GlobalPoolHead(), num_classes=3, pooled_size=(4, 4))
    images = example_images()
    rois = jnp.asarray(EXAMPLE_ROIS[:, 1:]).reshape(2, 2, 4)  # [N, R, 4] boxes per image
    variables = model.init(jax.random.key(3), images, rois)
    out = model.apply(variables, images, rois)
    assert out.logits.shape == (2, 2, 4) and out.deltas.shape == (2, 2, 4, 4)
