"""Anchors against the 800x800 worked example (its printed templates, 22500 / 8940 counts) and numpy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references.detection_numpy as ref
from jaxdet.ops import anchor_grid, anchor_templates

# The worked example's printed anchor_template (y1, x1, y2, x2), scales 8, 16, 32 x ratios 0.5, 1, 2.
TEMPLATE_YXYX = np.array([
    [-45.254834, -90.50966799, 45.254834, 90.50966799],
    [-64., -64., 64., 64.],
    [-90.50966799, -45.254834, 90.50966799, 45.254834],
    [-90.50966799, -181.01933598, 90.50966799, 181.01933598],
    [-128., -128., 128., 128.],
    [-181.01933598, -90.50966799, 181.01933598, 90.50966799],
    [-181.01933598, -362.03867197, 181.01933598, 362.03867197],
    [-256., -256., 256., 256.],
    [-362.03867197, -181.01933598, 362.03867197, 181.01933598],
])


def test_templates_are_the_seeds():
    np.testing.assert_allclose(anchor_templates(), TEMPLATE_YXYX[:, [1, 0, 3, 2]], rtol=1e-6)


def test_800x800_grid_matches_seed_loops_and_counts():
    anchors = np.asarray(anchor_grid((50, 50)))
    assert anchors.shape == (22500, 4) and anchors.dtype == np.float32
    np.testing.assert_allclose(anchors, ref.anchors((50, 50)), rtol=0, atol=1e-4)
    inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0)
              & (anchors[:, 2] <= 800) & (anchors[:, 3] <= 800))
    assert inside.sum() == 8940


def test_non_square_grid_order_and_custom_templates():
    height, width, stride = 3, 5, 8
    scales, ratios = (2, 4), (0.5, 1, 2, 3)
    anchors = np.asarray(anchor_grid((height, width), stride=stride, scales=scales, ratios=ratios))
    expected = ref.anchors((height, width), sub_sample=stride, anchor_scale=scales, ratio=ratios)
    np.testing.assert_allclose(anchors, expected, rtol=0, atol=1e-4)
    # Row-major cells, templates innermost: anchor (i * W + j) * A + a is centred on cell (i, j).
    num_templates = len(scales) * len(ratios)
    grid = anchors.reshape(height, width, num_templates, 4)
    centres = (grid[..., :2] + grid[..., 2:]) / 2  # [H, W, A, 2] (x, y)
    np.testing.assert_allclose(centres[2, 3, :, 0], 3 * stride + stride / 2)
    np.testing.assert_allclose(centres[2, 3, :, 1], 2 * stride + stride / 2)


def test_grid_from_a_static_shape_under_jit():
    features = jnp.zeros((1, 4, 6, 3))
    anchors = jax.jit(lambda f: anchor_grid(f.shape[1:3]))(features)
    np.testing.assert_array_equal(anchors, anchor_grid((4, 6)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(feature_hw=(0, 5)), "feature_hw"),
    (dict(feature_hw=(2.5, 3)), "feature_hw"),
    (dict(feature_hw=(2, 3, 4)), "feature_hw"),
    (dict(feature_hw=(2, 3), scales=()), "scales"),
    (dict(feature_hw=(2, 3), ratios=(1, -2)), "ratios"),
    (dict(feature_hw=(2, 3), stride=0), "stride"),
])
def test_bad_static_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        anchor_grid(**kwargs)
