"""The proposal layer against the numpy reference (references/detection_numpy.py), one image and a batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references.detection_numpy as ref
from jaxdet.models import RPNOutputs
from jaxdet.ops import anchor_grid
from jaxdet.proposals import Proposals, propose, rpn_proposals

# A small image: 12 x 16 cells at stride 16 (192 x 256 pixels), anchors of 32, 64 and 128 px.
FEATURE_HW, IMAGE_HW = (12, 16), (192, 256)
SMALL_ANCHORS = np.asarray(anchor_grid(FEATURE_HW, scales=(2, 4, 8)))

propose_jit = jax.jit(propose, static_argnames=("pre_nms", "post_nms", "min_size"))


@pytest.mark.parametrize("pre_nms, post_nms, image_scale", [(600, 150, 1.0), (5000, 2000, 2.0)])
def test_proposals_match_numpy_pipeline(pre_nms, post_nms, image_scale):
    rng = np.random.default_rng(pre_nms)
    num_anchors = len(SMALL_ANCHORS)
    deltas = rng.normal(0, 0.3, (num_anchors, 4)).astype(np.float32)
    objectness = rng.uniform(size=num_anchors).astype(np.float32)
    got = propose_jit(anchors=SMALL_ANCHORS, objectness=objectness, deltas=deltas,
                      image_hw=np.array(IMAGE_HW), pre_nms=pre_nms, post_nms=post_nms,
                      image_scale=np.float32(image_scale))
    assert isinstance(got, Proposals) and got.boxes.shape == (post_nms, 4)
    rois, scores = ref.proposals(SMALL_ANCHORS, deltas, objectness, IMAGE_HW, pre_nms, post_nms,
                                 min_size=16 * image_scale)
    n = len(rois)
    valid = np.asarray(got.valid)
    assert valid.sum() == n and valid[:n].all()
    np.testing.assert_allclose(np.asarray(got.boxes)[:n], rois, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(got.scores)[:n], scores)
    np.testing.assert_array_equal(np.asarray(got.boxes)[n:], 0.0)


def test_rpn_proposals_is_propose_per_image_on_the_object_probability_without_gradient():
    rng = np.random.default_rng(2)
    num_anchors = len(SMALL_ANCHORS)
    rpn = RPNOutputs(logits=jnp.asarray(rng.normal(0, 2, (2, num_anchors, 2)), jnp.float32),
                     deltas=jnp.asarray(rng.normal(0, 0.3, (2, num_anchors, 4)), jnp.float32))
    image_hw = np.array([IMAGE_HW, (160, 200)], np.int32)
    image_scale = np.array([1.0, 0.5], np.float32)
    settings = dict(pre_nms=500, post_nms=100, nms_iou=0.7, min_size=16.0)
    run = jax.jit(lambda r, **arrays: rpn_proposals(r, anchors=SMALL_ANCHORS, **arrays, **settings))
    got = run(rpn, image_hw=image_hw, image_scale=image_scale)
    assert got.boxes.shape == (2, 100, 4) and got.valid.shape == (2, 100)
    objectness = jax.nn.softmax(rpn.logits)[..., 1]
    one_image = jax.jit(propose, static_argnames=tuple(settings))
    for i in range(2):
        one = one_image(anchors=SMALL_ANCHORS, objectness=objectness[i], deltas=rpn.deltas[i],
                          image_hw=image_hw[i], image_scale=image_scale[i], **settings)
        for name in Proposals._fields:
            np.testing.assert_array_equal(getattr(got, name)[i], getattr(one, name))
    grads = jax.grad(lambda r: jnp.sum(run(r, image_hw=image_hw, image_scale=image_scale).scores))(rpn)
    assert all(np.all(np.asarray(g) == 0) for g in grads)


def test_bad_static_arguments_raise():
    with pytest.raises(ValueError, match="post_nms"):
        propose(anchors=SMALL_ANCHORS, objectness=np.zeros(len(SMALL_ANCHORS)),
                deltas=np.zeros_like(SMALL_ANCHORS), image_hw=np.array(IMAGE_HW), pre_nms=10,
                post_nms=0)
